import ArgumentParser
import Glibc
import Logging
import StockadeSupervisor
import Synchronization

struct Stockade: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stockade",
        abstract: "Run untrusted workers in Linux namespaces with seccomp, cgroup limits and an audit trail.",
        discussion: "Exit status of `run`: the worker's code; 128+signal; 137 oom; 124 timeout; 159 seccomp; 125 setup failure, bad profile or usage; 126/127 command not executable/not found. Other commands: 0 success, 1 failure, 2 usage. --state-dir DIR (else $STOCKADE_STATE_DIR, $XDG_STATE_HOME/stockade, ~/.local/state/stockade) may come before the subcommand or after it.",
        version: "0.1.0",
        subcommands: [Run.self, Batch.self, ProfileCommand.self, AuditCommand.self, ReviewCommand.self, Verify.self, Gc.self, ImageCommand.self]
    )
}

/// `--state-dir` is global (DESIGN.md): given before the subcommand it is
/// taken out and stands for every command, as `$STOCKADE_STATE_DIR` does.
enum GlobalOptions {
    static func apply(_ arguments: [String]) -> [String] {
        var rest = arguments
        while let first = rest.first, first.hasPrefix("--state-dir") {
            if first == "--state-dir", rest.count >= 2 {
                setenv("STOCKADE_STATE_DIR", rest[1], 1)
                rest.removeFirst(2)
            } else if first.hasPrefix("--state-dir=") {
                setenv("STOCKADE_STATE_DIR", String(first.dropFirst("--state-dir=".count)), 1)
                rest.removeFirst()
            } else {
                break
            }
        }
        return rest
    }
}

/// Options every command that touches the state directory takes.
struct StateOptions: ParsableArguments {
    @Option(name: .long, help: "State directory (else $STOCKADE_STATE_DIR, $XDG_STATE_HOME/stockade, ~/.local/state/stockade).")
    var stateDir: String?

    func resolved() -> String {
        StateDirectory.resolve(explicit: stateDir, environment: ProcessEnvironment.current())
    }
}

enum ProcessEnvironment {
    static func current() -> [String: String] {
        var env: [String: String] = [:]
        var p = environ
        while let entry = p.pointee {
            let text = String(cString: entry)
            if let eq = text.firstIndex(of: "=") { env[String(text[..<eq])] = String(text[text.index(after: eq)...]) }
            p += 1
        }
        return env
    }
}

@main
enum Main {
    static func main() async {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            let level = ProcessEnvironment.current()["STOCKADE_LOG"].flatMap { Logger.Level(rawValue: $0) }
            handler.logLevel = level ?? .warning
            return handler
        }
        let arguments = GlobalOptions.apply(Array(CommandLine.arguments.dropFirst()))
        do {
            var command = try Stockade.parseAsRoot(arguments)
            if var async = command as? AsyncParsableCommand {
                try await async.run()
            } else {
                try command.run()
            }
        } catch let exit as ExitCode {
            Glibc.exit(exit.rawValue)
        } catch {
            let code = Stockade.exitCode(for: error)
            let message = Stockade.fullMessage(for: error)
            if !message.isEmpty {
                if code == .success { Console.out(message) } else { Console.error(message) }
            }
            if code == .validationFailure {
                // Usage errors: 125 for `run` (nothing ran), 2 for every other command.
                Glibc.exit(arguments.first == "run" ? 125 : 2)
            }
            Glibc.exit(code.rawValue)
        }
    }
}

/// Writes to the process's stderr/stdout without touching C's shared FILE streams.
/// Whole lines only: concurrent batch runs must not interleave their report lines.
enum Console {
    private static let lock = Mutex(())

    static func error(_ text: String) {
        let bytes = Array((text.hasSuffix("\n") ? text : text + "\n").utf8)
        lock.withLock { _ in TerminalOutput.write(bytes, to: 2) }
    }

    static func out(_ text: String) {
        let bytes = Array((text.hasSuffix("\n") ? text : text + "\n").utf8)
        lock.withLock { _ in TerminalOutput.write(bytes, to: 1) }
    }

    /// Writes `text` to stdout as is, even on a terminal: only for text whose
    /// every untrusted field the caller has already escaped (`TerminalOutput.sanitize`).
    static func outUnescaped(_ text: String) {
        let bytes = Array((text.hasSuffix("\n") ? text : text + "\n").utf8)
        lock.withLock { _ in TerminalOutput.write(bytes, to: 1, sanitizing: false) }
    }
}
