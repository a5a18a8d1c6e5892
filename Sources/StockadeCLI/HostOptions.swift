import ArgumentParser
import Glibc
import StockadeClient

/// `--host URL` (else `$STOCKADE_HOST`) with `$STOCKADE_TOKEN`: the command goes through a running
/// `stockade serve` instead of running in this process, with the same output and exit codes.
struct HostOptions: ParsableArguments {
    @Option(help: "Send the command to a running `stockade serve`: unix:///PATH, http://127.0.0.1:PORT, http://[::1]:PORT or https://HOST[:PORT] (else $STOCKADE_HOST); the bearer token is $STOCKADE_TOKEN.")
    var host: String?

    /// The service to call, or nil to run in this process. Usage errors (a bad URL, no token) are
    /// `ValidationError`s, so they exit as every usage error of the command does.
    func client() throws -> ServiceClient? {
        try Self.client(host: host)
    }

    /// The service for `host` (else `$STOCKADE_HOST`), or nil.
    static func client(host: String?) throws -> ServiceClient? {
        do {
            return try ServiceClient.configured(host: host, environment: ProcessEnvironment.current())
        } catch {
            throw ValidationError(error.message)
        }
    }

    /// The commands that can go through the service (the others ignore `$STOCKADE_HOST`).
    static let commands: [[String]] = [["run"], ["batch"], ["review", "list"], ["review", "show"], ["review", "accept"],
                                       ["review", "reject"], ["audit", "events"]]

    /// For a global `--host` before the subcommand: how many words of `arguments` name a command
    /// that can take it (where its own `--host` goes), or nil when they name none.
    static func command(_ arguments: [String]) -> Int? {
        let words = arguments.prefix { !$0.hasPrefix("-") }
        return commands.first(where: { words.starts(with: $0) })?.count
    }

    /// Why a global `--host` cannot stand before `arguments`.
    static func refusal(_ arguments: [String]) -> String {
        let words = arguments.prefix { !$0.hasPrefix("-") }
        let named = words.isEmpty ? "no command" : "stockade \(words.prefix(2).joined(separator: " "))"
        return "--host: \(named) cannot go through the service; --host is taken by run, batch, review list|show|accept|reject and audit events (the other commands run on the service's host)"
    }
}

/// How a command that went through the service ends when the call fails: one line
/// `stockade: MESSAGE`, and the exit status the local command would have for the same cause.
enum ServiceFailure {
    /// The one-line message for a failed call.
    static func message(_ error: any Error) -> String {
        switch error {
        case let error as ClientError: error.message
        case let refusal as ServiceRefusal: TerminalOutput.field(refusal.message)
        default: "\(error)"
        }
    }

    /// `usage`: the status of a usage error (125 for `run`, 2 otherwise); `failure`: of any other failure.
    static func exit(_ error: any Error, usage: Int32, failure: Int32) -> ExitCode {
        switch error {
        case let error as ClientError:
            Console.error("stockade: \(error.message)")
            return ExitCode(error.code == .usage ? usage : failure)
        case let refusal as ServiceRefusal:
            Console.error("stockade: \(TerminalOutput.field(refusal.message))")
            // A 400 names a bad value (a field or parameter): the caller's usage.
            return ExitCode(refusal.status == 400 ? usage : failure)
        default:
            Console.error("stockade: \(error)")
            return ExitCode(failure)
        }
    }
}

/// Percent-encoding for a query value (RFC 3986 unreserved characters pass).
enum QueryValue {
    static func encode(_ text: String) -> String {
        var out = ""
        for b in text.utf8 {
            if (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x2D || b == 0x2E || b == 0x5F || b == 0x7E {
                out.append(Character(Unicode.Scalar(b)))
            } else {
                let digits = Array("0123456789ABCDEF")
                out += "%\(digits[Int(b >> 4)])\(digits[Int(b & 0xF)])"
            }
        }
        return out
    }
}
