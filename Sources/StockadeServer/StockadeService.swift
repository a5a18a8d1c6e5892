import Foundation
import Glibc
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
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

    public init(listen: Listen, stateDirectory: String, maxRunning: Int, maxQueued: Int, graceSeconds: Int64, verify: VerifyOptions? = nil) {
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
        let environment = ProcessInfo.processInfo.environment
        let supervisor: Supervisor
        let tokens: TokenStore
        do {
            supervisor = try Supervisor(stateDirectory: options.stateDirectory, catalog: .standard(), environment: environment, logger: logger)
            tokens = try TokenStore(stateDirectory: options.stateDirectory)
        } catch {
            throw ServiceFailure(description: "\(error)")
        }
        let service = RunService(supervisor: supervisor, admission: .init(maxRunning: options.maxRunning, maxQueued: options.maxQueued))
        let registry = RunRegistry(service: service, keyStore: tokens, logger: logger)
        let shutdown = ShutdownFlag()
        let verification = options.verify.map { VerificationStatus(refuse: $0.refuse, profiles: $0.profiles) }
        let api = API(supervisor: supervisor, registry: registry, tokens: tokens, shutdown: shutdown, logger: logger,
                      verification: verification)

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
        let app = Application(
            router: api.router(),
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
                logger.notice("service.listening", metadata: ["listen": "\(listen)"])
            },
            logger: logger)
        let drain = Drain(registry: registry, shutdown: shutdown, graceSeconds: options.graceSeconds, logger: logger)
        // Shut down in reverse order: the drain first (runs finish or are cancelled), then the listener.
        var services: [any Service] = [app, drain]
        if let verify = options.verify, let verification {
            // Last in, first out at shutdown: no new verification starts once the service is stopping.
            services.append(ContinuousVerification(supervisor: supervisor, service: service, options: verify, status: verification, logger: logger))
        }
        var configuration = ServiceGroupConfiguration(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        // A shutdown that hangs past the grace period and a margin is cancelled rather than waited for.
        configuration.maximumGracefulShutdownDuration = .seconds(options.graceSeconds + 60)
        let group = ServiceGroup(configuration: configuration)
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
        while !(await registry.outstanding.isEmpty) && ContinuousClock.now < deadline {
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
