import Foundation
import Glibc
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import ServiceLifecycle
import StockadeAudit
import StockadeLinux
import StockadeStore
import StockadeSupervisor
import StockadeTokens

/// `stockade serve`: the supervisor as a long-running service with the `/v1` API.
public struct ServiceOptions: Sendable {
    public var listen: Listen
    public var stateDirectory: String
    public var maxRunning: Int
    public var maxQueued: Int
    public var graceSeconds: Int64
    /// `--verify-every` and its companions; nil: no continuous verification.
    public var verify: VerifyOptions?
    /// `--tls-cert`/`--tls-key`: the TCP listener serves HTTPS only. Required beyond loopback.
    public var tls: ServerTLS?
    public var timeouts: ConnectionTimeouts
    /// `--max-per-principal`: runs queued and running at once per token name; 0: no limit.
    public var maxPerPrincipal: Int
    /// `--store` / `$STOCKADE_STORE`: the audit store, tokens and idempotency keys (nil: the state
    /// directory's SQLite file).
    public var store: StoreURL?
    /// `--store-connections`: connections to a PostgreSQL store this service holds at most.
    public var storeConnections: Int
    /// `--node`: one node of many sharing the store's run queue (needs a PostgreSQL store).
    public var node: NodeOptions?
    /// `--max-connections`: client connections held at once; nil: half the descriptor limit.
    public var maxConnections: Int?
    /// `--max-streams-per-token`: event streams and followed logs one token holds open at once.
    public var maxStreamsPerToken: Int
    /// `--max-calls-per-token`: calls a second (and at once) one token name may make; 0: no bound.
    public var maxCallsPerToken: Int

    public init(listen: Listen, stateDirectory: String, maxRunning: Int, maxQueued: Int, graceSeconds: Int64, verify: VerifyOptions? = nil,
                tls: ServerTLS? = nil, timeouts: ConnectionTimeouts = .standard, maxPerPrincipal: Int = 0, store: StoreURL? = nil,
                storeConnections: Int = StoreOpener.defaultConnections, node: NodeOptions? = nil, maxConnections: Int? = nil,
                maxStreamsPerToken: Int = StreamSlots.defaultPerPrincipal, maxCallsPerToken: Int = 0) {
        self.maxStreamsPerToken = maxStreamsPerToken
        self.maxCallsPerToken = maxCallsPerToken
        self.node = node
        self.maxConnections = maxConnections
        self.store = store
        self.storeConnections = storeConnections
        self.tls = tls
        self.timeouts = timeouts
        self.maxPerPrincipal = maxPerPrincipal
        self.verify = verify
        self.listen = listen
        self.stateDirectory = stateDirectory
        self.maxRunning = maxRunning
        self.maxQueued = maxQueued
        self.graceSeconds = graceSeconds
    }
}

public struct ServiceFailure: Error, CustomStringConvertible {
    public let description: String
}

public enum StockadeService {
    /// Serves until SIGTERM or SIGINT, then drains (see `Drain`) and returns. Call
    /// `Supervisor.prepareToSpawn` first, before anything else is loaded.
    public static func run(_ options: ServiceOptions, logger: Logger) async throws(ServiceFailure) {
        // Fail closed here too, whoever builds the options: never TCP beyond loopback in the clear.
        do throws(Listen.Invalid) {
            try options.listen.requireTLS(options.tls != nil)
        } catch {
            throw ServiceFailure(description: error.description)
        }
        if options.tls != nil, case .unix = options.listen {
            throw ServiceFailure(description: "--tls-cert/--tls-key apply to a tcp:// listener only, not \(options.listen)")
        }
        let descriptors = DescriptorLimit.raise()
        let connections = options.maxConnections ?? ConnectionBudget.standardLimit(descriptors: descriptors)
        if let asked = options.maxConnections, descriptors > 0, UInt64(asked) + UInt64(ConnectionBudget.reserve) > descriptors {
            throw ServiceFailure(description: "--max-connections \(asked) leaves fewer than \(ConnectionBudget.reserve) of the \(descriptors) descriptors this process may open (RLIMIT_NOFILE) for runs and the store: lower it, or raise the hard limit (LimitNOFILE= in the unit, ulimit -Hn)")
        }
        let budget = ConnectionBudget(limit: connections)
        let environment = ProcessInfo.processInfo.environment
        let supervisor: Supervisor
        let tokens: TokenStore
        do {
            supervisor = try Supervisor(stateDirectory: options.stateDirectory, catalog: .standard(), environment: environment, logger: logger,
                                        store: options.store, storeConnections: options.storeConnections,
                                        cgroupsAhead: min(options.maxRunning, 4))
            tokens = try supervisor.openTokens()
        } catch {
            throw ServiceFailure(description: "\(error)")
        }
        let service = RunService(supervisor: supervisor, admission: .init(maxRunning: options.maxRunning, maxQueued: options.maxQueued))
        let metrics = ServiceMetrics()
        if let observed = supervisor.audit as? any AuditWriteObserving {
            observed.observeWrites { metrics.auditWrite($0) }
        } else {
            throw ServiceFailure(description: "the audit store \(type(of: supervisor.audit)) cannot report its write latency for /metrics (stockade_audit_write_seconds)")
        }
        let node = try options.node.map { (node) throws(ServiceFailure) in try NodeQueue.register(node, audit: supervisor.audit, store: supervisor.store) }
        let registry = RunRegistry(service: service, keyStore: tokens, logger: logger, maxPerPrincipal: options.maxPerPrincipal, metrics: metrics,
                                   node: node)
        let shutdown = ShutdownFlag()
        let verification = options.verify.map { VerificationStatus(refuse: $0.refuse, profiles: $0.profiles) }
        let api = API(supervisor: supervisor, registry: registry, tokens: tokens, shutdown: shutdown, logger: logger,
                      verification: verification, metrics: metrics, streamsPerToken: options.maxStreamsPerToken,
                      callsPerToken: options.maxCallsPerToken)

        let address: BindAddress
        switch options.listen {
        case .unix(let path):
            do throws(SocketFile.Failure) {
                try SocketFile.prepare(path)
            } catch {
                throw ServiceFailure(description: "--listen \(options.listen): \(error)")
            }
            address = .unixDomainSocket(path: path)
            // bind(2) makes the socket 0777 minus the umask, and it is 0660 only once bound: keep
            // group and others from writing (connecting) in between, whatever umask we were given.
            umask(umask(0) | 0o022)
        case .tcp(let host, let port):
            address = .hostname(host, port: port)
        }
        let listen = options.listen
        let server: HTTPServerBuilder
        do {
            server = try options.timeouts.serverBuilder(tls: options.tls, budget: budget, logger: logger)
        } catch {
            throw ServiceFailure(description: "--tls-cert/--tls-key: \(error)")
        }
        let scheme = options.tls == nil ? "http" : "https"
        let storeName = supervisor.store.description
        let app = Application(
            router: api.router(),
            server: server,
            configuration: .init(address: address, serverName: "stockade"),
            onServerRunning: { _ in
                if case .unix(let path) = listen {
                    do throws(SocketFile.Failure) {
                        try SocketFile.secure(path)
                    } catch {
                        // Fail closed: a socket with the wrong mode or group is not served.
                        logger.critical("socket.insecure", metadata: ["error": "\(error)"])
                        Glibc.exit(1)
                    }
                }
                logger.notice("service.listening", metadata: ["listen": "\(listen)", "scheme": "\(scheme)", "nofile": "\(descriptors)", "maxConnections": "\(connections)",
                                                              "store": "\(storeName)", "spawn": "\(Supervisor.spawnHelperMode ?? "not started")"])
            },
            logger: logger)
        let drain = Drain(registry: registry, shutdown: shutdown, graceSeconds: options.graceSeconds, logger: logger)
        // Shut down in reverse order: the drain first (runs finish or are cancelled), then the listener.
        // SIGHUP: every profile read again and checked, the result logged (ProfileReload); once now too.
        let reload = ProfileReload(catalog: supervisor.catalog, logger: logger)
        reload.check()
        var services: [any Service] = [app]
        // Before the drain: shut down after it, so the node heartbeats until its runs are done.
        if let node { services.append(NodeWorker(node: node, registry: registry, logger: logger)) }
        services += [drain, reload]
        if let verify = options.verify, let verification {
            // Last in, first out at shutdown: no new verification starts once the service is stopping.
            services.append(ContinuousVerification(supervisor: supervisor, service: service, options: verify, status: verification, logger: logger))
        }
        var configuration = ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        // A shutdown that hangs past the grace period and a margin is cancelled rather than waited for.
        configuration.maximumGracefulShutdownDuration = .seconds(options.graceSeconds + 60)
        let group = ServiceGroup(configuration: configuration)
        // The cgroups made ahead, and those of the last runs, are removed before the service ends.
        defer { supervisor.closeCgroups() }
        // The counts of calls refused without a row and not yet reported, once no call comes in.
        defer {
            api.anonymous.flushAll()
            api.tokenRate?.flushAll()
        }
        do {
            try await group.run()
        } catch {
            if case .unix(let path) = listen { unlink(path) }
            throw ServiceFailure(description: "the service stopped: \(error)")
        }
        if case .unix(let path) = listen { unlink(path) }
        logger.notice("service.stopped")
    }
}

/// On SIGTERM/SIGINT: refuse new runs (503) and cancel the queued ones, let running runs finish
/// for up to the grace period, then cancel them and wait for their reports; then the listener closes.
struct Drain: Service {
    let registry: RunRegistry
    let shutdown: ShutdownFlag
    let graceSeconds: Int64
    let logger: Logger

    func run() async throws {
        try? await gracefulShutdown()
        logger.notice("service.draining", metadata: ["grace": "\(graceSeconds)s"])
        await registry.beginDrain()
        let deadline = ContinuousClock.now + .seconds(graceSeconds)
        while await registry.hasWork && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(100))
        }
        let left = await registry.outstanding
        if !left.isEmpty {
            logger.notice("service.cancelling", metadata: ["runs": "\(left.map(\.runId))"])
            await registry.service.cancelAll()
            for handle in left { _ = await handle.report() }
        }
        shutdown.set()
    }
}
