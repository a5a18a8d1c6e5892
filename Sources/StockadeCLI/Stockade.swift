import ArgumentParser
import Dispatch
import Glibc
import Logging
import StockadeAudit
import StockadeClient
import StockadeStore
import StockadeSupervisor
import Synchronization

struct Stockade: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stockade",
        abstract: "Run untrusted workers in Linux namespaces with seccomp, cgroup limits and an audit trail.",
        discussion: "Exit status of `run`: the worker's code; 128+signal; 137 oom; 124 timeout; 159 seccomp; 130 cancelled (SIGTERM or SIGINT); 125 setup failure, bad profile or usage; 126/127 command not executable/not found. Other commands: 0 success, 1 failure, 2 usage. --state-dir DIR (else $STOCKADE_STATE_DIR, $XDG_STATE_HOME/stockade, ~/.local/state/stockade) may come before the subcommand or after it. --log-format text|json (before the subcommand): the format of log lines on stderr; $STOCKADE_LOG sets their level (default warning).",
        version: "0.1.0",
        subcommands: [Run.self, Batch.self, ProfileCommand.self, AuditCommand.self, ReviewCommand.self, Verify.self, Gc.self, ImageCommand.self, Serve.self, TokenCommand.self, ReceiptCommand.self]
    )
}

/// `--state-dir`, `--log-format` and `--host` are global (docs/CONTRACT.md): given before the subcommand they
/// are taken out; `--state-dir` then stands for every command, as `$STOCKADE_STATE_DIR` does, and
/// `--host` is handed to the command as its own `--host` (refused before a command that cannot take
/// it), so the command checks the address and names `--host` as it does when given after it.
enum GlobalOptions {
    struct Invalid: Error {
        let message: String
    }

    static func apply(_ arguments: [String]) throws(Invalid) -> (arguments: [String], logFormat: LogFormat) {
        var rest = arguments
        var format = LogFormat.text
        var host: String?
        let names = ["--state-dir", "--log-format", "--host"]
        while let first = rest.first {
            let name: String, value: String
            if names.contains(first) {
                guard rest.count >= 2 else { throw Invalid(message: "\(first): needs a value") }
                (name, value) = (first, rest[1])
                rest.removeFirst(2)
            } else if let eq = first.firstIndex(of: "="), names.contains(String(first[..<eq])) {
                (name, value) = (String(first[..<eq]), String(first[first.index(after: eq)...]))
                rest.removeFirst()
            } else {
                break
            }
            if name == "--state-dir" {
                setenv("STOCKADE_STATE_DIR", value, 1)
            } else if name == "--host" {
                host = value
            } else {
                guard let f = LogFormat(rawValue: value) else { throw Invalid(message: "--log-format: must be text or json, found \(value)") }
                format = f
            }
        }
        if let host {
            guard let words = HostOptions.command(rest) else { throw Invalid(message: HostOptions.refusal(rest)) }
            // One word, so a value that starts with "-" is still read as the value (and refused
            // with the address's own message); an empty one as two words, since `--host=` would
            // read as a missing value, and the command refuses "" as an empty address.
            rest.insert(contentsOf: host.isEmpty ? ["--host", host] : ["--host=" + host], at: words)
        }
        return (rest, format)
    }
}

/// Hints for the usage errors a newcomer makes: a mistyped command, a command without `--`.
enum UsageHints {
    /// "did you mean" for a word that is not a subcommand where one is expected (nil when it is one).
    static func unknownSubcommand(_ arguments: [String]) -> String? {
        var command: any ParsableCommand.Type = Stockade.self
        var path = ["stockade"]
        for word in arguments {
            let subcommands = command.configuration.subcommands
            guard !subcommands.isEmpty, !word.hasPrefix("-") else { return nil }
            let names = subcommands.compactMap { $0.configuration.commandName } + ["help"]
            guard let next = subcommands.first(where: { $0.configuration.commandName == word }) else {
                if word == "help" { return nil }
                let nearest = names.min { distance(word, $0) < distance(word, $1) } ?? names[0]
                let guess = distance(word, nearest) <= max(2, nearest.count / 2) ? "did you mean '\(nearest)'? " : ""
                return "\(path.joined(separator: " ")): unknown command '\(word)': \(guess)(commands: \(names.joined(separator: ", ")))"
            }
            command = next
            path.append(word)
        }
        return nil
    }

    /// For `stockade run echo hi`: the words ArgumentParser did not expect were the command.
    static func commandWithoutTerminator(_ arguments: [String]) -> String? {
        guard arguments.first == "run", !arguments.contains("--") else { return nil }
        let flags: Set = ["--json", "-i", "--interactive", "-h", "--help"]
        var words: [String] = []
        var index = 1
        while index < arguments.count {
            let word = arguments[index]
            if !words.isEmpty {
                // From the first word that is no option on, everything is the command's.
                words.append(word)
                index += 1
            } else if word.hasPrefix("-") {
                // An option's value is the next word unless it came with `=`.
                index += flags.contains(word) || word.contains("=") ? 1 : 2
            } else {
                words.append(word)
                index += 1
            }
        }
        guard !words.isEmpty else { return nil }
        return "stockade run: put the command after --, as in: stockade run [OPTIONS] -- \(words.joined(separator: " "))"
    }

    /// Levenshtein distance: small enough names that the quadratic table costs nothing.
    static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        var row = Array(0...b.count)
        for i in 1...max(a.count, 1) where !a.isEmpty {
            var previous = row[0]
            row[0] = i
            for j in 1...max(b.count, 1) where !b.isEmpty {
                let current = row[j]
                row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] == b[j - 1] ? 0 : 1))
                previous = current
            }
        }
        return row[b.count]
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

/// `--store`: which store a command that reads or writes the trail (and the tokens) opens.
struct StoreOptions: ParsableArguments {
    @Option(help: "The store: sqlite:///PATH (default: <state>/audit.sqlite), postgres://USER@HOST:PORT/DB or postgresql:///DB?host=/SOCKET/DIR (else $STOCKADE_STORE).")
    var store: String?
}

/// The store a command opens: `flag` (`--store`), else `$STOCKADE_STORE`, else the state directory's
/// SQLite file. A bad URL is a usage error naming where it came from.
func resolveStore(_ state: StateOptions, _ flag: String?) throws -> StoreURL {
    try resolveStore(stateDirectory: state.resolved(), flag)
}

func resolveStore(stateDirectory: String, _ flag: String?) throws -> StoreURL {
    do {
        return try StoreOpener.resolve(flag: flag, environment: ProcessEnvironment.current(), stateDirectory: stateDirectory)
    } catch {
        throw ValidationError(error.description)
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

/// The command line of `stockade`, and of `stockade-server cli`. A binary that has not registered
/// StoreOpener's PostgreSQL support (the one-shot `stockade`, which starts faster without the
/// PostgreSQL client: Benchmarks/BENCHMARKS.md) hands a command whose store is a PostgreSQL URL to
/// `stockade-server cli`, which has it, before reading or opening anything.
public enum CLIMain {
    /// `stockade`'s entry, on the process's main thread. `run --host` is a synchronous client: it runs
    /// here to its end, and the concurrency runtime never starts (an async main would have parked this
    /// thread and run everything on a dispatch worker, with two more threads of dispatch's beside it,
    /// at every start of the command a task engine calls per task). Every other command continues in
    /// `main`'s body on the runtime's pool. Never returns: the process exits with the command's status.
    public static func start(_ commandLine: [String]) -> Never {
        let line = CommandLineRead(commandLine)
        if let fast = line.fast {
            do {
                if let client = try fast.client() {
                    try fast.run(through: client)
                    Glibc.exit(0)
                }
            } catch {
                finish(error, arguments: line.arguments)
            }
        }
        Task.detached {
            await execute(line)
            Glibc.exit(0)
        }
        dispatchMain()
    }

    /// The command line, run on the concurrency runtime's pool (`stockade-server cli`); returns when
    /// the command succeeded, exits the process otherwise.
    public static func main(_ commandLine: [String]) async {
        await execute(CommandLineRead(commandLine))
    }

    private static func execute(_ line: CommandLineRead) async {
        let arguments = line.arguments
        do {
            if let fast = line.fast {
                if let client = try fast.client() { return try fast.run(through: client) }
                return try await fast.runHere()
            }
            var command = try Stockade.parseAsRoot(arguments)
            if var async = command as? AsyncParsableCommand {
                try await async.run()
            } else {
                try command.run()
            }
        } catch {
            finish(error, arguments: arguments)
        }
    }

    /// A command's error as its message and exit status.
    private static func finish(_ error: any Error, arguments: [String]) -> Never {
        if let exit = error as? ExitCode { Glibc.exit(exit.rawValue) }
        let code = Stockade.exitCode(for: error)
        var message = Stockade.fullMessage(for: error)
        if code == .validationFailure, let hint = UsageHints.commandWithoutTerminator(arguments) { message = hint }
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

/// What `CLIMain` reads of a command line before the command runs: the global options applied (the
/// log format bootstrapped), the commands another binary runs handed to it (exec), and `run`'s line
/// read without ArgumentParser when it is a plain one (FastRun). Exits on a usage error of the process.
private struct CommandLineRead: Sendable {
    /// The command line after the global options.
    let arguments: [String]
    let fast: RunFlags?

    init(_ commandLine: [String]) {
        let arguments: [String]
        let logFormat: LogFormat
        do throws(GlobalOptions.Invalid) {
            let global = try GlobalOptions.apply(commandLine)
            arguments = global.arguments
            logFormat = global.logFormat
            let level = getenv("STOCKADE_LOG").flatMap { Logger.Level(rawValue: String(cString: $0)) }
            LogFormat.bootstrap(global.logFormat, level: level ?? .warning)
        } catch {
            // A bad --log-format, a global option without its value, --host before a command that
            // cannot take it: usage errors of the process, exit 2 (a bad --host value is the command's).
            Console.error("stockade: \(error.message)")
            Glibc.exit(2)
        }
        let environment = ProcessEnvironment.current()
        if !StoreOpener.hasPostgresSupport, PostgresRoute.named(arguments, environment: environment) {
            ServeLauncher.exec(["cli"] + commandLine, purpose: "stockade: a PostgreSQL store's commands run in stockade-server",
                               failureStatus: arguments.first == "run" ? 125 : 1)
        }
        if !ServiceTLS.isAvailable, TLSRoute.named(arguments, environment: environment) {
            ServeLauncher.exec(["cli"] + commandLine, purpose: "stockade: commands for an https:// service run in stockade-server",
                               failureStatus: arguments.first == "run" ? 125 : 1)
        }
        // `serve` is the stockade-server binary's: exec it before this parser sees its flags.
        if arguments.first == "serve" {
            if arguments.dropFirst().first == "cli" {
                // stockade-server's own word for the command line: not a way in through serve.
                Console.error("stockade serve: unexpected argument 'cli'")
                Glibc.exit(2)
            }
            if logFormat == .json {
                Console.error("stockade: --log-format json: serve does not support JSON log lines yet; its log lines are text")
                Glibc.exit(2)
            }
            ServeLauncher.exec(Array(arguments.dropFirst()))
        }
        // A plain `stockade run` line is read without ArgumentParser's reflection (FastRun).
        let fast = FastRun.parse(arguments)
        if fast == nil, let hint = UsageHints.unknownSubcommand(arguments) {
            Console.error(hint)
            Glibc.exit(2)
        }
        self.arguments = arguments
        self.fast = fast
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

/// Whether a command (its words after the global options, a global `--host` already moved into
/// them) goes to an `https://` service: a command that can go through a service, whose `--host URL`
/// or `--host=URL` before any `--`, else `$STOCKADE_HOST`, is an `https://` URL. Such a command runs in
/// `stockade-server cli`, which links the TLS client; every other client connects from here.
enum TLSRoute {
    static func named(_ arguments: [String], environment: [String: String]) -> Bool {
        guard HostOptions.command(arguments) != nil else { return false }
        let flag = CommandWords.option("--host", in: arguments).value
        return (flag ?? environment[ServiceClient.hostVariable] ?? "").hasPrefix("https://")
    }
}

/// An option among a command's words before any `--` (which start the worker's command).
enum CommandWords {
    /// Whether `name` is there (`--name VALUE`, `--name=VALUE`, or `--name` last), and its value,
    /// the last one given.
    static func option(_ name: String, in arguments: [String]) -> (present: Bool, value: String?) {
        var present = false
        var value: String?
        var i = 0
        while i < arguments.count, arguments[i] != "--" {
            let word = arguments[i]
            if word == name {
                present = true
                // `--` after it is no value: the worker's command starts there.
                if i + 1 < arguments.count, arguments[i + 1] != "--" {
                    value = arguments[i + 1]
                    i += 1
                }
            } else if word.hasPrefix(name + "=") {
                present = true
                value = String(word.dropFirst(name.count + 1))
            }
            i += 1
        }
        return (present, value)
    }
}

/// Whether a command (its words after the global options) opens a PostgreSQL store: a command that
/// opens a store (`stores`), not sent to a service with `--host` (a client opens none), whose
/// `--store URL` or `--store=URL` before any `--`, else `$STOCKADE_STORE`, is a PostgreSQL URL.
/// A false positive (a word after an option that takes a value) only hands the command to
/// `stockade-server cli`, which runs every command the same way; `serve` is stockade-server's own.
enum PostgresRoute {
    static let stores: Set = ["run", "batch", "verify", "audit", "review", "token"]

    static func named(_ arguments: [String], environment: [String: String]) -> Bool {
        guard let command = arguments.first, stores.contains(command),
              !CommandWords.option("--host", in: arguments).present else { return false }
        let text = CommandWords.option("--store", in: arguments).value ?? environment[StoreOpener.environmentVariable] ?? ""
        return text.hasPrefix("postgres://") || text.hasPrefix("postgresql://")
    }
}
