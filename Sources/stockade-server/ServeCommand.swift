import ArgumentParser
import Foundation
import Glibc
import Logging
import StockadeAudit
import StockadeCLI
import StockadeClientTLS
import StockadeServer
import StockadeStore
import StockadeStorePostgres
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
    @Option(help: "Client connections held at once (16 to 1000000; default: half the descriptors the process may open, RLIMIT_NOFILE); one past it is closed as soon as it is accepted.")
    var maxConnections: Int?
    @Option(help: "Runs queued and running at once per token name (0: no limit, the default); past that 429 quota-exceeded.")
    var maxPerPrincipal: Int = 0
    @Option(help: "Streams (event streams and followed logs) one token holds open at once (1 to 1024); past that 429 too-many-streams.")
    var maxStreamsPerToken: Int = StreamSlots.defaultPerPrincipal
    @Option(help: "Calls one token name may make a second, in bursts of as many (1 to 100000; 0: no limit, the default); past that 429 rate-limited with Retry-After, the calls counted in api.throttled rows.")
    var maxCallsPerToken: Int = 0
    @Option(help: "State directory (else $STOCKADE_STATE_DIR, $XDG_STATE_HOME/stockade, ~/.local/state/stockade).")
    var stateDir: String?
    @Option(help: "The audit store, tokens and idempotency keys: sqlite:///PATH (default: <state>/audit.sqlite), postgres://USER@HOST:PORT/DB or postgresql:///DB?host=/SOCKET/DIR (else $STOCKADE_STORE). The password comes from the URL, passwordFile=, $STOCKADE_STORE_PASSWORD_FILE or $PGPASSWORD and is never logged.")
    var store: String?
    @Option(help: "Connections to a PostgreSQL store held at most (1 to 64).")
    var storeConnections: Int = StoreOpener.defaultConnections
    @Option(help: "Join the run queue of the --store (PostgreSQL) as this node (1-63 of A-Z a-z 0-9 . _ -): runs submitted to any node are queued in the store, and each node claims them up to its --capacity.")
    var node: String?
    @Option(help: "With --node: labels this node carries, KEY=VALUE,… (a run's nodeLabels must be among them).")
    var labels: String?
    @Option(help: "With --node: queued runs this node runs at once (1 to --max-running; default --max-running).")
    var capacity: Int?
    @Option(help: "With --node: how long after this node's last heartbeat another node may take its runs: seconds or 15s, 1m (1s to 1h; heartbeats every third of it).")
    var lease: String?
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
        if let maxConnections, !(16...1_000_000).contains(maxConnections) {
            throw ValidationError("--max-connections: expected 16 to 1000000, found \(maxConnections)")
        }
        guard StreamSlots.range.contains(maxStreamsPerToken) else {
            throw ValidationError("--max-streams-per-token: expected \(StreamSlots.range.lowerBound) to \(StreamSlots.range.upperBound), found \(maxStreamsPerToken)")
        }
        guard TokenRateLimiter.range.contains(maxCallsPerToken) else {
            throw ValidationError("--max-calls-per-token: expected 0 (no limit) to \(TokenRateLimiter.range.upperBound), found \(maxCallsPerToken)")
        }
        guard (0...10_000).contains(maxPerPrincipal) else { throw ValidationError("--max-per-principal: expected 0 (no limit) to 10000, found \(maxPerPrincipal)") }
        guard StoreOpener.connectionRange.contains(storeConnections) else {
            throw ValidationError("--store-connections: expected \(StoreOpener.connectionRange.lowerBound) to \(StoreOpener.connectionRange.upperBound), found \(storeConnections)")
        }
        if let store {
            do throws(AuditError) {
                try StoreOpener.refuseCommandLinePassword(try StoreURL.parse(store))
            } catch {
                throw ValidationError(error.path == nil ? error.message : "--store \(error.description)")
            }
        }
        guard (1...256).contains(maxRunning) else { throw ValidationError("--max-running: expected 1 to 256, found \(maxRunning)") }
        if let node {
            if let problem = NodeLabels.nameProblem(node) { throw ValidationError("--node \(node): the name \(problem)") }
            if let labels {
                do throws(AuditError) { _ = try NodeLabels.parse(labels) } catch { throw ValidationError("--labels: \(error.message)") }
            }
            if let capacity, !(1...maxRunning).contains(capacity) {
                throw ValidationError("--capacity: expected 1 to --max-running (\(maxRunning)), found \(capacity)")
            }
            if let lease, !(1...3600).contains(DurationText.seconds(lease) ?? 0) {
                throw ValidationError("--lease: expected 1 to 3600 seconds, as 15, 15s or 1m; found \(lease)")
            }
            // Not yet enforced across nodes: refused rather than enforced on one node only.
            if maxPerPrincipal > 0 {
                throw ValidationError("--max-per-principal with --node: the quota counts one node's runs, and queued runs go to any node, so it would not hold; leave it out")
            }
            if verifyEvery != nil {
                throw ValidationError("--verify-every with --node: the proof gates submissions on the node that takes them, while any node may run them; leave it out (run `stockade verify` on each node)")
            }
        } else {
            for (flag, given) in [("--labels", labels != nil), ("--capacity", capacity != nil), ("--lease", lease != nil)] where given {
                throw ValidationError("\(flag) applies to a node of a shared run queue: it needs --node NAME")
            }
        }
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

    /// `--node` and its companions, checked in `validate`; a node needs a PostgreSQL store.
    func nodeOptions(_ store: StoreURL) throws -> NodeOptions? {
        guard let node else { return nil }
        guard case .postgres(let postgres) = store else {
            FileHandle.standardError.write(Data("stockade serve: --node \(node): a node shares its run queue through a PostgreSQL store, and the store is \(store): pass --store postgres://… (or set $STOCKADE_STORE), the same for every node\n".utf8))
            throw ExitCode(2)
        }
        // A node runs as root what the queue holds: a store reached over the network must be the one
        // the URL names (its certificate checked), never one a machine in between could stand in for.
        if case .tcp(let host, _) = postgres.endpoint, !Self.isLoopback(host), postgres.tlsMode != .verifyCA, postgres.tlsMode != .verifyFull {
            FileHandle.standardError.write(Data("stockade serve: --node \(node): the store \(store) is reached over the network with sslmode=\(postgres.tlsMode.rawValue), which does not check the server's certificate; a node runs as root what the store's queue holds, so use sslmode=verify-full (or verify-ca) with sslrootcert=FILE, or a Unix socket or loopback address\n".utf8))
            throw ExitCode(2)
        }
        return NodeOptions(name: node, labels: (try? NodeLabels.parse(labels ?? "")) ?? [:], capacity: capacity ?? maxRunning,
                           leaseSeconds: Int(lease.flatMap(DurationText.seconds) ?? 15))
    }

    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host == "[::1]" || host.hasPrefix("127.")
    }

    func run() async throws {
        guard geteuid() == 0 else {
            FileHandle.standardError.write(Data("stockade serve: needs root: each worker runs under host ids of its own in a cgroup of its own, which only root may set up; run it as root\n".utf8))
            throw ExitCode(1)
        }
        // The spawn helpers first, before the audit store, any profile or the HTTP stack exists.
        Supervisor.prepareToSpawn(concurrency: min(maxRunning, 4), ahead: true)
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
            tls: tls, timeouts: timeouts, maxPerPrincipal: maxPerPrincipal, store: storeURL, storeConnections: storeConnections,
            node: try nodeOptions(storeURL), maxConnections: maxConnections, maxStreamsPerToken: maxStreamsPerToken,
            maxCallsPerToken: maxCallsPerToken)
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



/// Usage errors exit 2, as every stockade command but `run` does. `stockade-server cli COMMAND…`
/// runs a stockade command with the PostgreSQL client and the TLS client (`stockade` hands over a
/// command whose store is a PostgreSQL URL or whose service is an `https://` one).
@main
enum ServerMain {
    static func main() async {
        ServeLauncher.checkCaller()
        PostgresStores.register()
        ClientTLS.register()
        let arguments = Array(CommandLine.arguments.dropFirst())
        if arguments.first == "cli" {
            await CLIMain.main(Array(arguments.dropFirst()))
            exit(0)
        }
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
