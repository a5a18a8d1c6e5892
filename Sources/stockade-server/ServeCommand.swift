import ArgumentParser
import Foundation
import Glibc
import Logging
import StockadeAudit
import StockadeServer
import StockadeStore
import StockadeSupervisor
import StockadeTokens
import StockadeVerify

/// The `stockade serve` binary: `stockade serve ARGS` execs it with ARGS.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stockade serve",
        abstract: "Run the supervisor as a service: the HTTP API under /v1 (docs/CONTRACT.md, \"The API\").",
        discussion: "Needs root. SIGTERM or SIGINT: new runs are refused, queued ones cancelled, running ones get --grace to finish and are then cancelled; exit 0. SIGHUP: every profile is read again and checked, the result logged (profiles.reloaded, profile.invalid).")

    @Option(help: "unix:///PATH (default unix:///run/stockade/stockade.sock) or tcp://ADDRESS:PORT (numeric; beyond 127.0.0.0/8 and [::1] only with --tls-cert and --tls-key).")
    var listen: String = "unix://" + Listen.defaultSocket
    @Option(help: "PEM certificate chain: the tcp:// listener serves HTTPS only (TLS 1.2 or later). Needs --tls-key.")
    var tlsCert: String?
    @Option(help: "PEM private key of --tls-cert (unencrypted, not readable by others).")
    var tlsKey: String?
    @Option(help: "Close a connection with no request under way after this long: seconds or 60s, 5m (1s to 1h).")
    var idleTimeout: String = "60s"
    @Option(help: "Close a connection whose request head is not complete this long after its first byte (1s to 10m).")
    var headerTimeout: String = "10s"
    @Option(help: "Close a connection whose request body is not complete this long after its head (1s to 1h).")
    var bodyTimeout: String = "30s"
    @Option(help: "Runs queued and running at once per token name (0: no limit, the default); past that 429 quota-exceeded.")
    var maxPerPrincipal: Int = 0
    @Option(help: "State directory (else $STOCKADE_STATE_DIR, $XDG_STATE_HOME/stockade, ~/.local/state/stockade).")
    var stateDir: String?
    @Option(help: "The audit store, tokens and idempotency keys: sqlite:///PATH (default: <state>/audit.sqlite), postgres://USER@HOST:PORT/DB or postgresql:///DB?host=/SOCKET/DIR (else $STOCKADE_STORE). The password comes from the URL, passwordFile=, $STOCKADE_STORE_PASSWORD_FILE or $PGPASSWORD and is never logged.")
    var store: String?
    @Option(help: "Connections to a PostgreSQL store held at most (1 to 64).")
    var storeConnections: Int = StoreOpener.defaultConnections
    @Option(help: "Runs at once (1 to 256).") var maxRunning: Int = 2
    @Option(help: "Runs waiting beyond those (0 to 10000); past that a submission is answered 429.") var maxQueued: Int = 16
    @Option(help: "How long running runs may go on after SIGTERM before they are cancelled: seconds or 30s, 5m.") var grace: String = "30s"
    @Option(help: "Prove the controls continuously: verify each --verify-profile at start, this often (seconds or 30s, 6h), and whenever its file changes; record each verification and publish it in /metrics.")
    var verifyEvery: String?
    @Option(help: "A profile kept under proof (repeatable; default: default).") var verifyProfile: [String] = []
    @Option(help: "Only these controls (an id, a prefix ending in *, class:N; repeatable), as verify --only.") var verifyOnly: [String] = []
    @Option(help: "The required controls, as verify --controls FILE; without it every applicable control must hold.") var verifyControls: String?
    @Option(help: "When a profile's required controls do not hold (or are not proven yet): refuse (default) new runs under it with 503, or allow them.")
    var onVerifyFailure: String = "refuse"

    func validate() throws {
        let parsed: Listen
        do { parsed = try Listen.parse(listen) } catch { throw ValidationError(error.description) }
        if tlsCert != nil || tlsKey != nil {
            guard case .tcp = parsed else {
                throw ValidationError("--tls-cert/--tls-key: TLS applies to a tcp:// listener, not \(listen) (a Unix socket is guarded by its mode and group)")
            }
            guard tlsCert != nil, tlsKey != nil else { throw ValidationError("--tls-cert and --tls-key go together: pass both") }
        }
        do { try parsed.requireTLS(tlsCert != nil) } catch { throw ValidationError(error.description) }
        for (flag, text, most) in [("--idle-timeout", idleTimeout, 3600), ("--header-timeout", headerTimeout, 600), ("--body-timeout", bodyTimeout, 3600)] {
            guard let seconds = DurationText.seconds(text), (1...Int64(most)).contains(seconds) else {
                throw ValidationError("\(flag): expected 1 to \(most) seconds, as 10, 30s or 5m; found \(text)")
            }
        }
        guard (0...10_000).contains(maxPerPrincipal) else { throw ValidationError("--max-per-principal: expected 0 (no limit) to 10000, found \(maxPerPrincipal)") }
        guard StoreOpener.connectionRange.contains(storeConnections) else {
            throw ValidationError("--store-connections: expected \(StoreOpener.connectionRange.lowerBound) to \(StoreOpener.connectionRange.upperBound), found \(storeConnections)")
        }
        if let store {
            do throws(AuditError) { _ = try StoreURL.parse(store) } catch { throw ValidationError("--store \(error.description)") }
        }
        guard (1...256).contains(maxRunning) else { throw ValidationError("--max-running: expected 1 to 256, found \(maxRunning)") }
        guard (0...10_000).contains(maxQueued) else { throw ValidationError("--max-queued: expected 0 to 10000, found \(maxQueued)") }
        guard DurationText.seconds(grace) != nil else { throw ValidationError("--grace: expected seconds or a duration such as 30s or 5m, found \(grace)") }
        if let verifyEvery, (DurationText.seconds(verifyEvery) ?? 0) < 1 {
            throw ValidationError("--verify-every: expected seconds or a duration such as 30s or 6h, found \(verifyEvery)")
        }
        guard ["refuse", "allow"].contains(onVerifyFailure) else { throw ValidationError("--on-verify-failure: expected refuse or allow, found \(onVerifyFailure)") }
        for selector in verifyOnly where ControlCatalog.select(selector).isEmpty {
            throw ValidationError("--verify-only: \(selector) names no control (see stockade verify --list)")
        }
        if verifyEvery == nil && (!verifyProfile.isEmpty || !verifyOnly.isEmpty || verifyControls != nil) {
            throw ValidationError("--verify-profile, --verify-only and --verify-controls need --verify-every")
        }
    }

    func run() async throws {
        guard geteuid() == 0 else {
            FileHandle.standardError.write(Data("stockade serve: needs root: each worker runs under host ids of its own in a cgroup of its own, which only root may set up; run it as root\n".utf8))
            throw ExitCode(1)
        }
        // The spawn helpers first, before the audit store, any profile or the HTTP stack exists.
        Supervisor.prepareToSpawn(concurrency: min(maxRunning, 4))
        let environment = ProcessInfo.processInfo.environment
        var verify: VerifyOptions?
        if let verifyEvery {
            var requirements: ControlRequirements?
            if let file = verifyControls {
                do {
                    let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: file)))
                    requirements = try ControlRequirements.parse(bytes)
                } catch {
                    FileHandle.standardError.write(Data("stockade serve: --verify-controls \(file): \(error)\n".utf8))
                    throw ExitCode(2)
                }
            }
            verify = VerifyOptions(everySeconds: DurationText.seconds(verifyEvery) ?? 21600, profiles: verifyProfile.isEmpty ? ["default"] : verifyProfile,
                                   only: verifyOnly, requirements: requirements, refuse: onVerifyFailure == "refuse")
        }
        var tls: ServerTLS?
        if let tlsCert, let tlsKey {
            do {
                tls = try ServerTLS.load(certificate: tlsCert, key: tlsKey)
            } catch {
                FileHandle.standardError.write(Data("stockade serve: \(error)\n".utf8))
                throw ExitCode(2)
            }
        }
        let timeouts = ConnectionTimeouts(idleSeconds: DurationText.seconds(idleTimeout) ?? 60, headerSeconds: DurationText.seconds(headerTimeout) ?? 10,
                                          bodySeconds: DurationText.seconds(bodyTimeout) ?? 30)
        let stateDirectory = StateDirectory.resolve(explicit: stateDir, environment: environment)
        let storeURL: StoreURL
        do {
            storeURL = try StoreOpener.resolve(flag: store, environment: environment, stateDirectory: stateDirectory)
        } catch {
            FileHandle.standardError.write(Data("stockade serve: \(error.description)\n".utf8))
            throw ExitCode(2)
        }
        let options = ServiceOptions(
            listen: try Listen.parse(listen),
            stateDirectory: stateDirectory,
            maxRunning: maxRunning, maxQueued: maxQueued, graceSeconds: DurationText.seconds(grace) ?? 30, verify: verify,
            tls: tls, timeouts: timeouts, maxPerPrincipal: maxPerPrincipal, store: storeURL, storeConnections: storeConnections)
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
