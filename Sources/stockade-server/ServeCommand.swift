import ArgumentParser
import Foundation
import Glibc
import Logging
import StockadeServer
import StockadeSupervisor
import StockadeTokens

/// The `stockade serve` binary: `stockade serve ARGS` execs it with ARGS.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stockade serve",
        abstract: "Run the supervisor as a service: the HTTP API under /v1 (docs/CONTRACT.md, \"The API\").",
        discussion: "Needs root. SIGTERM or SIGINT: new runs are refused, queued ones cancelled, running ones get --grace to finish and are then cancelled; exit 0.")

    @Option(help: "unix:///PATH (default unix:///run/stockade/stockade.sock) or tcp://127.0.0.1:PORT / tcp://[::1]:PORT; other TCP addresses need TLS, which is not supported yet.")
    var listen: String = "unix://" + Listen.defaultSocket
    @Option(help: "State directory (else $STOCKADE_STATE_DIR, $XDG_STATE_HOME/stockade, ~/.local/state/stockade).")
    var stateDir: String?
    @Option(help: "Runs at once (1 to 256).") var maxRunning: Int = 2
    @Option(help: "Runs waiting beyond those (0 to 10000); past that a submission is answered 429.") var maxQueued: Int = 16
    @Option(help: "How long running runs may go on after SIGTERM before they are cancelled: seconds or 30s, 5m.") var grace: String = "30s"

    func validate() throws {
        do { _ = try Listen.parse(listen) } catch { throw ValidationError(error.description) }
        guard (1...256).contains(maxRunning) else { throw ValidationError("--max-running: expected 1 to 256, found \(maxRunning)") }
        guard (0...10_000).contains(maxQueued) else { throw ValidationError("--max-queued: expected 0 to 10000, found \(maxQueued)") }
        guard DurationText.seconds(grace) != nil else { throw ValidationError("--grace: expected seconds or a duration such as 30s or 5m, found \(grace)") }
    }

    func run() async throws {
        guard geteuid() == 0 else {
            FileHandle.standardError.write(Data("stockade serve: needs root: each worker runs under host ids of its own in a cgroup of its own, which only root may set up; run it as root\n".utf8))
            throw ExitCode(1)
        }
        // The spawn helpers first, before the audit store, any profile or the HTTP stack exists.
        Supervisor.prepareToSpawn(concurrency: min(maxRunning, 4))
        let environment = ProcessInfo.processInfo.environment
        let options = ServiceOptions(
            listen: try Listen.parse(listen),
            stateDirectory: StateDirectory.resolve(explicit: stateDir, environment: environment),
            maxRunning: maxRunning, maxQueued: maxQueued, graceSeconds: DurationText.seconds(grace) ?? 30)
        let level = environment["STOCKADE_LOG"].flatMap { Logger.Level(rawValue: $0) } ?? .notice
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        do {
            try await StockadeService.run(options, logger: Logger(label: "stockade-server"))
        } catch {
            FileHandle.standardError.write(Data("stockade serve: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}



/// Usage errors exit 2, as every stockade command but `run` does.
@main
enum ServerMain {
    static func main() async {
        do {
            var command = try Serve.parseAsRoot()
            if var async = command as? AsyncParsableCommand {
                try await async.run()
            } else {
                try command.run()
            }
        } catch {
            let code = Serve.exitCode(for: error)
            let message = Serve.fullMessage(for: error)
            if !message.isEmpty {
                let out = code == .success ? FileHandle.standardOutput : FileHandle.standardError
                out.write(Data((message.hasSuffix("\n") ? message : message + "\n").utf8))
            }
            exit(code == .validationFailure ? 2 : code.rawValue)
        }
        exit(0)
    }
}
