import Dispatch
import Glibc
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
import StockadeAudit
import Synchronization

/// One PostgreSQL connection used synchronously: each statement is sent with PostgresNIO and its
/// `EventLoopFuture` is waited for on the calling thread.
///
/// Why blocking is safe here: the connection's channel lives on the backend's own one-thread
/// `MultiThreadedEventLoopGroup`, which runs nothing but this backend's connections. The callers
/// (supervisor threads, the CLI, Swift concurrency's pool, Hummingbird's loops) are never that thread,
/// so a caller waiting never blocks the loop it waits for. The wait is bounded
/// (`answerTimeoutSeconds`): a statement that gets no answer gives up the connection. `AuditBackend` is synchronous by design (the
/// ledger's rules run inside one transaction closure), so bridging here keeps the seam unchanged.
/// A session is used by one thread at a time: the pool hands it out exclusively.
final class PostgresSession: @unchecked Sendable {
    let connection: PostgresConnection
    let store: String
    private let logger: Logger
    /// False once a statement failed in a way that leaves the connection unusable (closed, broken,
    /// or a commit whose outcome is unknown): the pool closes it instead of reusing it.
    private(set) var isHealthy = true

    private init(connection: PostgresConnection, store: String, logger: Logger) {
        self.connection = connection
        self.store = store
        self.logger = logger
    }

    static func connect(_ url: PostgresStoreURL, password: String?, id: Int, on eventLoop: any EventLoop,
                        logger: Logger) throws(AuditError) -> PostgresSession {
        let store = url.description
        let user = url.user ?? currentUserName()
        var configuration: PostgresConnection.Configuration
        switch url.endpoint {
        case .unixSocket(let path):
            configuration = .init(unixSocketPath: path, username: user, password: password, database: url.database)
        case .tcp(let host, let port):
            configuration = .init(host: host, port: port, username: user, password: password, database: url.database,
                                  tls: try tls(for: url))
        }
        configuration.options.connectTimeout = .seconds(Int64(url.connectTimeoutSeconds))
        // Shows in pg_stat_activity which process holds each connection.
        configuration.options.additionalStartupParameters = [("application_name", applicationName)]
        do {
            let connection = try PostgresConnection.connect(on: eventLoop, configuration: configuration, id: id, logger: logger).wait()
            return PostgresSession(connection: connection, store: store, logger: logger)
        } catch {
            let mapped = PostgresErrors.map(error, doing: "connect to the audit store", store: store)
            throw AuditError(mapped.code == .postgres ? .unreachable : mapped.code, path: store, mapped.message)
        }
    }

    private static func tls(for url: PostgresStoreURL) throws(AuditError) -> PostgresConnection.Configuration.TLS {
        var tls = TLSConfiguration.makeClientConfiguration()
        switch url.tlsMode {
        case .disable: return .disable
        case .prefer, .require: tls.certificateVerification = .none
        case .verifyCA: tls.certificateVerification = .noHostnameVerification
        case .verifyFull: tls.certificateVerification = .fullVerification
        }
        if let roots = url.trustRootsPath { tls.trustRoots = .file(roots) }
        do {
            let context = try NIOSSLContext(configuration: tls)
            return url.tlsMode == .prefer ? .prefer(context) : .require(context)
        } catch {
            throw AuditError(.openFailed, path: url.description,
                             "cannot set up TLS for sslmode=\(url.tlsMode.rawValue)\(url.trustRootsPath.map { " with sslrootcert \($0)" } ?? ""): \(error)")
        }
    }

    /// `stockade-audit pid N`: the `application_name` of this process's connections.
    static var applicationName: String { "stockade-audit pid \(getpid())" }

    private static func currentUserName() -> String {
        if let entry = getpwuid(geteuid()), let name = entry.pointee.pw_name { return String(cString: name) }
        return "root"
    }

    /// Runs one statement without parameters; see `query(_:_:_:)`.
    @discardableResult
    func query(_ sql: String, _ doing: @autoclosure () -> String) throws(AuditError) -> [PostgresRow] {
        try query(sql, PostgresBindings(), doing())
    }

    /// Runs one statement and returns all its rows. `doing` completes "cannot …" in the error.
    @discardableResult
    func query(_ sql: String, _ binds: PostgresBindings, _ doing: @autoclosure () -> String) throws(AuditError) -> [PostgresRow] {
        // PostgresNIO never completes a query written to a channel that has already closed (the
        // server dropped the connection while it sat idle in the pool): check first, and never wait
        // without a bound.
        guard !connection.isClosed else {
            isHealthy = false
            throw AuditError(.unreachable, path: store,
                             "cannot \(doing()): the connection to the audit store was closed by the server or the network; nothing was written in this call: check that the server is up and reachable")
        }
        do {
            return try Self.wait(for: connection.query(PostgresQuery(unsafeSQL: sql, binds: binds), logger: logger),
                                 seconds: Self.answerTimeoutSeconds).rows
        } catch let timeout as AnswerTimeout {
            isHealthy = false  // the pool closes it
            throw AuditError(.unreachable, path: store,
                             "cannot \(doing()): the audit store did not answer within \(timeout.seconds) s; the connection was closed and whether this statement took effect is unknown")
        } catch {
            let mapped = PostgresErrors.map(error, doing: doing(), store: store)
            if !PostgresErrors.isServerError(error) { isHealthy = false }
            throw mapped
        }
    }

    /// How long a statement may go unanswered before the connection is given up: longer than the
    /// writers' lock timeout, so a writer waiting for the lock is told `busy` by the server first.
    static let answerTimeoutSeconds = 60

    struct AnswerTimeout: Error {
        let seconds: Int
    }

    /// `future.wait()` with a bound: the caller's thread sleeps on a semaphore the event loop signals.
    private static func wait<T: Sendable>(for future: EventLoopFuture<T>, seconds: Int) throws -> T {
        let done = DispatchSemaphore(value: 0)
        let outcome = Mutex<Result<T, any Error>?>(nil)
        future.whenComplete { result in
            outcome.withLock { $0 = result }
            done.signal()
        }
        guard done.wait(timeout: .now() + .seconds(seconds)) == .success, let result = outcome.withLock({ $0 }) else {
            throw AnswerTimeout(seconds: seconds)
        }
        return try result.get()
    }

    /// Marks the connection unusable (a commit whose outcome is unknown, a rollback that failed).
    func discard() { isHealthy = false }

    func close() {
        _ = try? Self.wait(for: connection.close(), seconds: 10)
    }
}

/// A bounded set of sessions on one store: at most `capacity` open at once, idle ones reused. A
/// caller waits up to `waitSeconds` for a free slot, then fails with `.busy`: the bound keeps many
/// supervisors from exhausting the server's `max_connections`, and the wait turns a burst into a queue.
final class PostgresSessionPool: @unchecked Sendable {
    let url: PostgresStoreURL
    let capacity: Int
    let waitSeconds: Int
    private let password: String?
    private let group: MultiThreadedEventLoopGroup
    private let logger: Logger
    /// PostgresNIO logs connection events; the audit store reports through its errors instead.
    static let silentLogger = Logger(label: "stockade.audit.postgres", factory: { _ in SwiftLogNoOpLogHandler() })
    private var lock = pthread_mutex_t()
    private var freed = pthread_cond_t()
    // Guarded by `lock`.
    private var idle: [PostgresSession] = []
    private var open = 0
    private var nextId = 1
    private var closed = false

    init(url: PostgresStoreURL, password: String?, capacity: Int, waitSeconds: Int, logger: Logger = PostgresSessionPool.silentLogger) {
        self.url = url
        self.password = password
        self.capacity = capacity
        self.waitSeconds = waitSeconds
        self.logger = logger
        group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        pthread_mutex_init(&lock, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(&freed, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        shutdown()
        pthread_cond_destroy(&freed)
        pthread_mutex_destroy(&lock)
    }

    /// Closes the idle sessions and the event loop; sessions still checked out are closed on return.
    func shutdown() {
        pthread_mutex_lock(&lock)
        let wasClosed = closed
        closed = true
        let sessions = idle
        idle = []
        open -= sessions.count
        pthread_cond_broadcast(&freed)
        pthread_mutex_unlock(&lock)
        if wasClosed { return }
        for session in sessions { session.close() }
        // Not `syncShutdownGracefully`: deinit may run on any thread, even another group's loop.
        group.shutdownGracefully { _ in }
    }

    /// Runs `body` with a session of its own, returned to the pool afterwards (closed when broken).
    func withSession<T>(_ body: (PostgresSession) throws -> T) throws -> T {
        let session = try checkout()
        defer { checkin(session) }
        return try body(session)
    }

    func withSessionTyped<T>(_ body: (PostgresSession) throws(AuditError) -> T) throws(AuditError) -> T {
        let session = try checkout()
        defer { checkin(session) }
        return try body(session)
    }

    /// A session of its own, outside the pool's bound (one a process, for `LISTEN`): the caller
    /// closes it.
    func dedicatedSession() throws(AuditError) -> PostgresSession {
        pthread_mutex_lock(&lock)
        let id = nextId
        nextId += 1
        let isClosed = closed
        pthread_mutex_unlock(&lock)
        if isClosed { throw AuditError(.unreachable, path: url.description, "the audit store's connections were closed") }
        return try PostgresSession.connect(url, password: password, id: id, on: group.next(), logger: logger)
    }

    private func checkout() throws(AuditError) -> PostgresSession {
        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        deadline.tv_sec += waitSeconds
        pthread_mutex_lock(&lock)
        while true {
            if closed {
                pthread_mutex_unlock(&lock)
                throw AuditError(.unreachable, path: url.description, "the audit store's connections were closed")
            }
            if let session = idle.popLast() {
                pthread_mutex_unlock(&lock)
                return session
            }
            if open < capacity { break }
            if pthread_cond_timedwait(&freed, &lock, &deadline) == ETIMEDOUT {
                pthread_mutex_unlock(&lock)
                throw AuditError(.busy, path: url.description,
                                 "all \(capacity) connections to the audit store stayed in use for \(waitSeconds) s; retry, or give the store more connections")
            }
        }
        open += 1
        let id = nextId
        nextId += 1
        pthread_mutex_unlock(&lock)
        do {
            return try PostgresSession.connect(url, password: password, id: id, on: group.next(), logger: logger)
        } catch {
            pthread_mutex_lock(&lock)
            open -= 1
            pthread_cond_signal(&freed)
            pthread_mutex_unlock(&lock)
            throw error
        }
    }

    private func checkin(_ session: PostgresSession) {
        pthread_mutex_lock(&lock)
        let keep = session.isHealthy && !closed
        if keep { idle.append(session) } else { open -= 1 }
        pthread_cond_signal(&freed)
        pthread_mutex_unlock(&lock)
        if !keep { session.close() }
    }
}

/// PostgresNIO's errors as `AuditError`s: the server's message and SQLSTATE, or what broke the
/// connection, under the store's URL without its password. (`PSQLError.description` hides every
/// detail on purpose; the fields read here are the server's own words and never the credentials.)
enum PostgresErrors {
    static func map(_ error: any Error, doing: String, store: String) -> AuditError {
        if let error = error as? AuditError { return error }
        if let error = error as? PSQLError {
            if error.code == .server, let info = error.serverInfo {
                let state = info[.sqlState] ?? "?????"
                var text = "cannot \(doing): \(info[.message] ?? "the server refused the statement")"
                if let detail = info[.detail] { text += " (\(detail))" }
                text += " [SQLSTATE \(state)]"
                return AuditError(code(sqlState: state), path: store, text + hint(sqlState: state))
            }
            let cause = error.underlying.map { ": \($0)" } ?? ""
            switch error.code {
            case .connectionError, .serverClosedConnection, .clientClosedConnection, .uncleanShutdown:
                return AuditError(.unreachable, path: store,
                                  "cannot \(doing): the connection to the audit store failed or was closed (\(error.code))\(cause); no write was confirmed: check that the server is up and reachable")
            case .authMechanismRequiresPassword:
                return AuditError(.openFailed, path: store,
                                  "cannot \(doing): the server asks for a password and none was given: put it in passwordFile=, $STOCKADE_STORE_PASSWORD_FILE or $PGPASSWORD")
            case .sslUnsupported:
                return AuditError(.openFailed, path: store, "cannot \(doing): the server does not offer TLS, which sslmode requires")
            default:
                return AuditError(.postgres, path: store, "cannot \(doing): PostgresNIO error \(error.code)\(cause)")
            }
        }
        if let error = error as? PostgresDecodingError {
            return AuditError(.corruptRow, path: store,
                              "cannot \(doing): column \(error.columnName) has type \(error.postgresType), not what Stockade's schema stores (\(error.code)); was the table altered by hand?")
        }
        return AuditError(.unreachable, path: store, "cannot \(doing): \(error)")
    }

    static func isServerError(_ error: any Error) -> Bool {
        (error as? PSQLError)?.code == .server
    }

    private static func code(sqlState: String) -> AuditError.Code {
        switch sqlState {
        case let s where s.hasPrefix("23"): .constraint
        case "40001", "40P01", "55P03", "57014": .busy
        case let s where s.hasPrefix("53"): .storage
        case "3D000", "57P03": .openFailed
        case let s where s.hasPrefix("28"): .openFailed
        case "57P01", "57P02": .unreachable
        case let s where s.hasPrefix("08"): .unreachable
        default: .postgres
        }
    }

    private static func hint(sqlState: String) -> String {
        switch sqlState {
        case "3D000": "; create the database first (createdb), or name another in the store URL"
        case let s where s.hasPrefix("28"): "; check the user and password (passwordFile=, $STOCKADE_STORE_PASSWORD_FILE, $PGPASSWORD)"
        case "55P03": "; another writer held the store's lock for longer than the lock timeout: retry"
        default: ""
        }
    }
}
