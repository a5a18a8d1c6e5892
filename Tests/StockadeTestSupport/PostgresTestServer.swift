import Glibc
import PostgresNIO
import Synchronization
import Testing
@testable import StockadeAudit
@testable import StockadeAuditPostgres

/// A real PostgreSQL server for the tests: `$STOCKADE_TEST_POSTGRES_URL` when set (a URL whose user
/// may create databases; its database is only used to create and drop the test databases), or else
/// one scratch server per test process, made by Debian's `initdb` and `pg_ctl` in a temporary
/// directory as the unprivileged user `postgres`, listening only on a Unix socket in that directory.
///
/// Nothing is left behind: the server is stopped (`pg_ctl stop -m immediate`) and its directory
/// removed at exit, and a watchdog started with it does the same if this process dies without exiting
/// (a crash, SIGKILL).
public enum PostgresTestServer {
    public static let urlVariable = "STOCKADE_TEST_POSTGRES_URL"

    /// Why PostgreSQL tests cannot run here; nil when they can.
    public static let unavailableReason: String? = {
        if let url = getenv(urlVariable), url.pointee != 0 { return nil }
        guard binDirectory != nil else {
            return "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): apt-get install postgresql, or set \(urlVariable)"
        }
        guard getpwnam("postgres") != nil else { return "there is no user postgres to run the scratch server as (set \(urlVariable))" }
        guard access("/usr/sbin/runuser", X_OK) == 0 else { return "runuser is missing (util-linux); set \(urlVariable)" }
        guard geteuid() == 0 else { return "the scratch PostgreSQL server is started as user postgres, which needs root; set \(urlVariable)" }
        return nil
    }()

    /// The newest installed server's bin directory.
    public static let binDirectory: String? = {
        guard let dir = opendir("/usr/lib/postgresql") else { return nil }
        defer { closedir(dir) }
        var versions: [Int] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            if let version = Int(name), access("/usr/lib/postgresql/\(name)/bin/initdb", X_OK) == 0 { versions.append(version) }
        }
        return versions.max().map { "/usr/lib/postgresql/\($0)/bin" }
    }()

    private static let state = Mutex<Result<PostgresStoreURL, TestServerError>?>(nil)
    private static let counter = Atomic<Int>(0)

    public struct TestServerError: Error, CustomStringConvertible {
        public let description: String
        public init(description: String) { self.description = description }
    }

    /// The server's administrative URL, starting the scratch server on first use.
    public static func adminURL() throws -> PostgresStoreURL {
        try state.withLock { (state) throws -> PostgresStoreURL in
            if state == nil {
                do { state = .success(try start()) } catch let error as TestServerError { state = .failure(error) }
            }
            return try state!.get()
        }
    }

    /// A new empty database on the server; its URL.
    public static func createDatabase() throws -> PostgresStoreURL {
        let admin = try adminURL()
        let name = "stockade_test_\(getpid())_\(counter.wrappingAdd(1, ordering: .relaxed).newValue)"
        try execute(admin, "CREATE DATABASE \(name)")
        return PostgresStoreURL(scheme: admin.scheme, endpoint: admin.endpoint, user: admin.user, database: name, tlsMode: admin.tlsMode,
                                trustRootsPath: admin.trustRootsPath, password: admin.password, passwordFile: admin.passwordFile,
                                connectTimeoutSeconds: admin.connectTimeoutSeconds)
    }

    /// Drops the database, closing whatever connections a test left open on it.
    public static func dropDatabase(_ url: PostgresStoreURL) {
        guard let admin = try? adminURL() else { return }
        do { try execute(admin, "DROP DATABASE IF EXISTS \(url.database) WITH (FORCE)") } catch {
            Issue.record("cannot drop the test database \(url.database): \(error)")
        }
    }

    /// Runs `sql` on its own connection (the tamperer's, or the administrator's, view).
    @discardableResult
    public static func execute(_ url: PostgresStoreURL, _ sql: String) throws -> [[String?]] {
        let pool = PostgresSessionPool(url: url, password: try url.resolvingPassword(environment: environment()), capacity: 1,
                                       waitSeconds: 10)
        defer { pool.shutdown() }
        return try pool.withSessionTyped { (session) throws(AuditError) -> [[String?]] in
            try session.query(sql, "run \(sql)").map { row in row.map(text) }
        }
    }

    /// `url` as text a child test process can connect with: the description, with the password put
    /// back when the URL has one (the description shows `***`). Only for handing to a child.
    public static func connectableText(_ url: PostgresStoreURL) -> String {
        var text = url.description
        if let password = url.password, let range = text.range(of: ":***@") {
            let escaped = password.utf8.map { byte -> String in
                let c = Character(Unicode.Scalar(byte))
                return c.isLetter && c.isASCII || c.isNumber && c.isASCII ? String(c) : "%" + String(byte, radix: 16).uppercased().paddedHex
            }.joined()
            text.replaceSubrange(range, with: ":" + escaped + "@")
        }
        return text
    }

    /// A cell as text, whichever format the server sent it in (PostgresNIO asks for binary).
    private static func text(_ cell: PostgresCell) -> String? {
        guard cell.bytes != nil else { return nil }
        switch cell.dataType {
        case .int8: return (try? cell.decode(Int64.self)).map { String($0) }
        case .int4: return (try? cell.decode(Int32.self)).map { String($0) }
        case .int2: return (try? cell.decode(Int16.self)).map { String($0) }
        case .bool: return (try? cell.decode(Bool.self)).map { $0 ? "t" : "f" }
        default: return (try? cell.decode(String.self)) ?? "(\(cell.dataType) value)"
        }
    }

    /// Polls `condition` until it holds; a condition still false after a minute is a failure, not a hang.
    public static func waitUntil(_ what: String, sourceLocation: SourceLocation = #_sourceLocation, _ condition: () throws -> Bool) throws {
        for _ in 0..<3000 {
            if try condition() { return }
            usleep(20_000)
        }
        throw TestServerError(description: "still waiting after a minute for \(what)")
    }

    public static func environment() -> [String: String] {
        var out: [String: String] = [:]
        var entry = environ
        while let pointer = entry.pointee {
            let text = String(cString: pointer)
            if let equals = text.firstIndex(of: "=") { out[String(text[..<equals])] = String(text[text.index(after: equals)...]) }
            entry += 1
        }
        return out
    }

    // MARK: the scratch server

    private nonisolated(unsafe) static var directory: String?
    private nonisolated(unsafe) static var watchdog: pid_t = 0
    private nonisolated(unsafe) static var tls: (port: Int, certificate: String)?

    /// The scratch server also listens on 127.0.0.1 with TLS (a self-signed certificate for IP
    /// 127.0.0.1, made by openssl): its port and the certificate, which is its own CA. Nil when the
    /// tests use `$STOCKADE_TEST_POSTGRES_URL`.
    public static func tlsEndpoint() throws -> (port: Int, certificate: String)? {
        _ = try adminURL()
        return state.withLock { _ in tls }
    }

    private static func start() throws(TestServerError) -> PostgresStoreURL {
        if let text = getenv(urlVariable), text.pointee != 0 {
            do {
                guard case .postgres(let url) = try StoreURL.parse(String(cString: text)) else {
                    throw TestServerError(description: "\(urlVariable) is not a postgres:// URL")
                }
                return url
            } catch let error as AuditError {
                throw TestServerError(description: "\(urlVariable): \(error)")
            } catch let error as TestServerError {
                throw error
            } catch {
                throw TestServerError(description: "\(error)")
            }
        }
        if let reason = unavailableReason { throw TestServerError(description: reason) }
        let bin = binDirectory!
        guard let user = getpwnam("postgres") else { throw TestServerError(description: "no user postgres") }
        let dir = makeScratchDirectory("pg")
        guard chown(dir, user.pointee.pw_uid, user.pointee.pw_gid) == 0, chmod(dir, 0o700) == 0 else {
            throw TestServerError(description: "cannot give \(dir) to user postgres: errno \(errno)")
        }
        directory = dir
        let data = dir + "/data"
        let pgCtl = bin + "/pg_ctl"
        // Before the server exists, so that no moment is left where a crash would orphan it.
        watchdog = try spawn(["/bin/sh", "-c", """
            while kill -0 \(getpid()) 2>/dev/null; do sleep 1; done
            [ -f '\(data)/postmaster.pid' ] && /usr/sbin/runuser -u postgres -- '\(pgCtl)' -D '\(data)' stop -m immediate
            rm -rf '\(dir)'
            """], log: "/dev/null", newSession: true)
        atexit { PostgresTestServer.stop() }

        try run(["/usr/sbin/runuser", "-u", "postgres", "--", bin + "/initdb", "-D", data, "-U", "stockade", "--auth=trust",
                 "-E", "UTF8", "--locale=C", "--no-sync"], log: dir + "/initdb.log", what: "initdb")
        // TLS on loopback TCP as well as the Unix socket: a certificate for IP 127.0.0.1, its key the server's (0600).
        let certificate = dir + "/server.crt", key = dir + "/server.key"
        try run(["/usr/sbin/runuser", "-u", "postgres", "--", "/usr/bin/openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=stockade-test-postgres",
                 "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", certificate], log: dir + "/openssl.log", what: "openssl req")
        let port = Int(freeLoopbackPort())
        try run(["/usr/sbin/runuser", "-u", "postgres", "--", pgCtl, "-D", data, "-l", dir + "/server.log", "-w", "-t", "120",
                 "-o", "-k \(dir) -c listen_addresses=127.0.0.1 -p \(port) -c ssl=on -c ssl_cert_file=\(certificate) -c ssl_key_file=\(key)",
                 "start"], log: dir + "/pg_ctl.log", what: "pg_ctl start")
        tls = (port, certificate)
        return PostgresStoreURL(scheme: "postgresql", endpoint: .unixSocket(path: dir + "/.s.PGSQL.\(port)"), user: "stockade",
                                database: "postgres", tlsMode: .disable, trustRootsPath: nil, password: nil, passwordFile: nil,
                                connectTimeoutSeconds: 10)
    }

    /// Runs the openssl CLI (as the test's own user); true when it exited 0.
    public static func openssl(_ arguments: [String]) throws -> Bool {
        let pid = try spawn(["/usr/bin/openssl"] + arguments, log: "/dev/null", newSession: false)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return status == 0
    }

    /// At exit: the server stopped at once, its directory removed, the watchdog ended.
    private static func stop() {
        guard let dir = directory, let bin = binDirectory else { return }
        directory = nil
        if let pid = try? spawn(["/usr/sbin/runuser", "-u", "postgres", "--", bin + "/pg_ctl", "-D", dir + "/data", "stop", "-m", "immediate", "-w"],
                                log: "/dev/null", newSession: false) {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        }
        if watchdog > 0 {
            kill(-watchdog, SIGKILL)
            var status: Int32 = 0
            while waitpid(watchdog, &status, 0) < 0 && errno == EINTR {}
        }
        removeTree(dir)
    }

    private static func run(_ argv: [String], log: String, what: String) throws(TestServerError) {
        let pid = try spawn(argv, log: log, newSession: false)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        guard status == 0 else {
            let output = (try? String(contentsOfFileAt: log)) ?? ""
            throw TestServerError(description: "\(what) failed (wait status \(status)): \(output.suffix(2000))")
        }
    }

    private static func spawn(_ argv: [String], log: String, newSession: Bool) throws(TestServerError) -> pid_t {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // POSIX_SPAWN_SETSID (0x80 in <spawn.h>), a macro behind _GNU_SOURCE that the Glibc module does not export.
        if newSession { posix_spawnattr_setflags(&attributes, 0x80) }
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, &attributes, cArgs, environ)
        guard rc == 0 else { throw TestServerError(description: "cannot start \(argv[0]): errno \(rc)") }
        return pid
    }
}

private extension String {
    var paddedHex: String { count == 1 ? "0" + self : self }

    init(contentsOfFileAt path: String) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw PostgresTestServer.TestServerError(description: "cannot read \(path)") }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n <= 0 { break }
            bytes += buffer[..<n]
        }
        self = String(decoding: bytes, as: UTF8.self)
    }
}
