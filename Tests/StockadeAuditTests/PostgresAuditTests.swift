import Glibc
import PostgresNIO
import StockadePolicy
import StockadeTestSupport
import Testing
@testable import StockadeAudit
@testable import StockadeAuditPostgres

/// What only a shared PostgreSQL store has to show: writers in several processes, several hosts
/// migrating at once, a writer dying mid-transaction, a server that goes away. (The ledger's rules
/// on PostgreSQL are in `BackendConformanceTests`, run on both backends.) Child writers are this
/// test binary run again, enabled by the environment the parent sets.
@Suite("PostgreSQL audit store: many writers, one chain",
       .disabled(if: PostgresTestServer.unavailableReason != nil, Comment(rawValue: PostgresTestServer.unavailableReason ?? "")))
struct PostgresAuditTests {
    static let childURL = "STOCKADE_AUDIT_PG_CHILD_URL"
    static let childRun = "STOCKADE_AUDIT_PG_CHILD_RUN"
    static let eventsPerWriter = 200

    private func open(_ url: PostgresStoreURL, host: String = "host-a", maxConnections: Int = PostgresAuditBackend.defaultMaxConnections)
        throws -> PostgresAuditStore {
        try PostgresAuditStore(url: url, environment: [:], supervisorPid: getpid(), supervisorStart: ProcessIdentity.currentStartTime,
                               hostId: host, maxConnections: maxConnections)
    }

    @Test("sslmode=verify-full over TCP: the store is reached over TLS (pg_stat_ssl says so) with the server's certificate checked; a certificate another CA signed is refused, and sslmode=disable is told apart (in the clear)",
          .timeLimit(.minutes(2)))
    func tlsStore() throws {
        let plain = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(plain) }
        guard let (port, certificate) = try PostgresTestServer.tlsEndpoint() else {
            // An external server ($STOCKADE_TEST_POSTGRES_URL) has no TLS endpoint this test knows.
            return
        }
        guard case .postgres(let url) = try StoreURL.parse("postgres://stockade@127.0.0.1:\(port)/\(plain.database)?sslmode=verify-full&sslrootcert=\(certificate)") else {
            Issue.record("not a postgres URL")
            return
        }
        let store = try open(url)
        try store.beginRun(runId: "tls", profile: "p", profileDigest: "d", command: ["/bin/true"], detail: .null)
        try store.record(runId: "tls", kind: "limit.hit", detail: .object(["over": .string("tls")]))
        try expectIntact(store.verifyChain(), events: 2)
        let rows = try PostgresTestServer.execute(url, "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        #expect(rows.first?[0] == "t", "the connection is not encrypted: \(rows)")
        #expect(rows.first?[1]?.hasPrefix("TLSv1.") == true, "\(rows)")

        // Another CA: the server's certificate does not verify, nothing is opened.
        let other = makeScratchDirectory("pg-ca")
        defer { removeTree(other) }
        let made = try PostgresTestServer.openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                                                   "-subj", "/CN=someone-else", "-addext", "subjectAltName=IP:127.0.0.1",
                                                   "-keyout", other + "/ca.key", "-out", other + "/ca.crt"])
        try #require(made, "openssl could not make a second CA")
        guard case .postgres(let wrong) = try StoreURL.parse("postgres://stockade@127.0.0.1:\(port)/\(plain.database)?sslmode=verify-full&sslrootcert=\(other)/ca.crt") else { return }
        do {
            _ = try open(wrong)
            Issue.record("a server whose certificate another CA signed was trusted")
        } catch let error as AuditError {
            #expect(error.code == .unreachable || error.code == .openFailed, "\(error)")
            #expect(error.description.contains("127.0.0.1") && !error.description.contains("BEGIN CERTIFICATE"), "\(error)")
        } catch {
            Issue.record("not an AuditError: \(error)")
        }
        // Positive control for the refusal: the same URL with the right CA opens (done above), and
        // sslmode=disable reaches the same server in the clear, which pg_stat_ssl tells apart.
        guard case .postgres(let clear) = try StoreURL.parse("postgres://stockade@127.0.0.1:\(port)/\(plain.database)?sslmode=disable") else { return }
        let clearRows = try PostgresTestServer.execute(clear, "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        #expect(clearRows.first?[0] == "f", "\(clearRows)")
    }

    @Test("3 processes and 4 threads on one pool of 2 connections append at once: seq and runSeq gap-free, one valid chain",
          .timeLimit(.minutes(3)))
    func processesAndThreads() throws {
        let url = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(url) }
        let store = try open(url, maxConnections: 2)
        let processes = ["proc-0", "proc-1", "proc-2"]
        let threads = ["thread-0", "thread-1", "thread-2", "thread-3"]
        for run in processes + threads { try store.beginRun(runId: run, profile: "p", profileDigest: "d", command: [], detail: .null) }

        let children = try processes.map { run in try spawnChild("childWriter", [Self.childURL: PostgresTestServer.connectableText(url), Self.childRun: run]) }
        let failures = FailureLog()
        let writers = threads.map { run in
            TestThread {
                Self.append(store, run: run, failures: failures)
            }
        }
        writers.forEach { $0.start() }
        writers.forEach { $0.join() }
        for child in children { expectExitedZero(child) }
        #expect(failures.all == [])

        let events = try store.allEvents()
        expectGapFree(events)
        for run in processes + threads {
            let own = events.filter { $0.runId == run && $0.kind == "append" }
            #expect(own.compactMap { $0.detailValue?.object?["i"]?.exactInt64 } == (0..<Int64(Self.eventsPerWriter)).map { $0 },
                    "each writer's events in its order: \(run)")
        }
        #expect(Set(events.filter { $0.runId?.hasPrefix("proc-") == true }.compactMap { $0.detailValue?.object?["pid"]?.exactInt64 }).count == 3,
                "three other processes wrote")
        let batches = Self.eventsPerWriter / 10
        let expected = Int64(7 * (1 + Self.eventsPerWriter + batches))
        try expectIntact(store.verifyChain(), events: expected)
        // The pool is bounded: this process never opened more than 2 connections to the database.
        let open = try PostgresTestServer.execute(url, """
            SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = '\(PostgresSession.applicationName)'
            AND pid <> pg_backend_pid()
            """)
        #expect(Int(open.first?.first.flatMap { $0 } ?? "") ?? 99 <= 2, "connections held by the store: \(open)")
    }

    /// Appends `eventsPerWriter` events for `run`, every tenth in a batch with an event without a run.
    private static func append(_ store: some AuditStore, run: String, failures: FailureLog) {
        for i in 0..<eventsPerWriter {
            do {
                let detail: JSONValue = .object(["i": .number(i), "pid": .number(getpid())])
                if i % 10 == 0 {
                    try store.recordMany([(runId: run, kind: "append", detail: detail), (runId: nil, kind: "verification", detail: .null)])
                } else {
                    try store.record(runId: run, kind: "append", detail: detail)
                }
            } catch {
                failures.add("\(run) \(i): \(error)")
            }
        }
    }

    @Test("child writer: appends to the parent's database (runs only when spawned by the test above)",
          .enabled(if: getenv(childURL) != nil && getenv(childRun) != nil, "runs only as a child process of the multi-process test"))
    func childWriter() throws {
        guard case .postgres(let url) = try StoreURL.parse(String(cString: try #require(getenv(Self.childURL)))) else {
            Issue.record("\(Self.childURL) is not a postgres URL")
            return
        }
        let run = String(cString: try #require(getenv(Self.childRun)))
        let store = try open(url, host: "host-\(run)")
        let failures = FailureLog()
        Self.append(store, run: run, failures: failures)
        #expect(failures.all == [])
    }

    @Test("6 hosts opening a new store at once apply each migration once; a later open changes nothing", .timeLimit(.minutes(2)))
    func concurrentMigrations() throws {
        let url = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(url) }
        let failures = FailureLog()
        let openers = (0..<6).map { i in
            TestThread {
                do { _ = try PostgresAuditBackend(url: url, environment: [:]) } catch { failures.add("opener \(i): \(error)") }
            }
        }
        openers.forEach { $0.start() }
        openers.forEach { $0.join() }
        #expect(failures.all == [])
        let names = { try PostgresTestServer.execute(url, "SELECT name FROM schema_migrations ORDER BY name").map { $0.first ?? nil } }
        #expect(try names() == ["0001-initial", "0002-diff-conflict", "0003-run-host", "pg-0001-run-queue"])
        let store = try open(url)
        try store.beginRun(runId: "r", profile: "p", profileDigest: "d", command: [], detail: .null)
        #expect(try names().count == 4)
        #expect(try PostgresTestServer.execute(url, "SELECT seq FROM chain_head").first?.first == "1")

        try PostgresTestServer.execute(url, "INSERT INTO schema_migrations (name, appliedAt) VALUES ('9999-future', 'x')")
        do {
            _ = try PostgresAuditBackend(url: url, environment: [:])
            Issue.record("a store with an unknown migration was opened")
        } catch {
            #expect(error.code == .migration && error.message.contains("9999-future") && error.message.contains("newer version"), "\(error)")
        }
    }

    @Test("a writer killed mid-transaction, holding the lock with a forged event written, leaves no trace; the waiting append follows the real head",
          .timeLimit(.minutes(2)))
    func writerDiesMidTransaction() throws {
        let url = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(url) }
        let store = try open(url)
        try store.beginRun(runId: "r", profile: "p", profileDigest: "d", command: [], detail: .null)
        try store.record(runId: "r", kind: "before", detail: .null)

        let child = try spawnChild("lockHoldingChild", [Self.childURL: PostgresTestServer.connectableText(url), Self.childRun: "hold"])
        var reaped = false
        defer { if !reaped { kill(child, SIGKILL); waitpid(child, nil, 0) } }
        // Wait for the child to hold the writers' lock with its forged head written: granted to a
        // backend idle in its transaction after advancing the chain head. (The lock alone is not
        // enough: the child's own migration check takes the same lock first, and releases it.)
        let advisory = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        let lockHeld = """
            SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND a.state = 'idle in transaction' AND a.query LIKE 'UPDATE chain_head%'
            """
        try PostgresTestServer.waitUntil("the child to hold the writers' lock") {
            var status: Int32 = 0
            if waitpid(child, &status, WNOHANG) == child {
                reaped = true
                throw PostgresTestServer.TestServerError(description: "the lock-holding child exited early with wait status \(status)")
            }
            return try PostgresTestServer.execute(url, lockHeld).first?.first == "1"
        }
        let failures = FailureLog()
        let waiting = TestThread {
            do { try store.record(runId: "r", kind: "after", detail: .null) } catch { failures.add("\(error)") }
        }
        waiting.start()
        // Kill the holder only once the append waits for its lock: it must then build on the real head.
        try PostgresTestServer.waitUntil("the append to wait for the lock") {
            try #require(!waiting.isDone, "the append finished while another writer held the lock: \(failures.all)")
            return try PostgresTestServer.execute(url, advisory + " AND NOT granted").first?.first == "1"
        }
        kill(child, SIGKILL)
        #expect(waitpid(child, nil, 0) == child)
        reaped = true
        waiting.join()
        #expect(failures.all == [])

        let events = try store.allEvents()
        #expect(events.map(\.kind) == ["run.created", "before", "after"], "the forged event was rolled back with its writer")
        expectGapFree(events)
        try expectIntact(store.verifyChain(), events: 3)
    }

    @Test("lock-holding child: takes the writers' lock, writes a forged event and waits to be killed (spawned by the test above)",
          .enabled(if: getenv(childRun).map { String(cString: $0) == "hold" } ?? false, "runs only as a child process of the test above"))
    func lockHoldingChild() throws {
        guard case .postgres(let url) = try StoreURL.parse(String(cString: try #require(getenv(Self.childURL)))) else { return }
        let backend = try PostgresAuditBackend(url: url, environment: [:])
        _ = try backend.withTransaction(durable: true) { (tx) throws(AuditError) -> Int in
            let head = try tx.chainHead()!
            try tx.insertEvent(AuditEvent(seq: head.seq + 1, runId: nil, runSeq: 1, kind: "forged", at: "x", detail: "{}", prevHash: head.hash,
                                          hash: "forged"))
            try tx.setChainHead(AuditChainHead(seq: head.seq + 1, hash: "forged"))
            // Until killed; a child whose parent died (re-parented) gives up, so nothing is left behind.
            let parent = getppid()
            while getppid() == parent { usleep(50_000) }
            throw AuditError(.invalidState, "the parent test process is gone")
        }
    }

    @Test("an unreachable store fails with store-unreachable, naming the store without its password")
    func unreachable() throws {
        let scratch = ScratchDirectory("pg-none")
        guard case .postgres(let url) = try StoreURL.parse("postgresql://alice:topsecret@/audit?host=\(scratch.path)&connect_timeout=5") else { return }
        do {
            _ = try open(url)
            Issue.record("a store with no server was opened")
        } catch let error as AuditError {
            #expect(error.code == .unreachable, "\(error)")
            #expect(error.description.contains("postgresql://alice:***@/audit?host=\(scratch.path)"), "\(error)")
            #expect(!error.description.contains("topsecret"), "\(error)")
        }

        let admin = try PostgresTestServer.adminURL()
        let missing = PostgresStoreURL(scheme: admin.scheme, endpoint: admin.endpoint, user: admin.user, database: "no_such_database",
                                       tlsMode: admin.tlsMode, trustRootsPath: nil, password: nil, passwordFile: nil, connectTimeoutSeconds: 5)
        do {
            _ = try open(missing)
            Issue.record("a missing database was opened")
        } catch let error as AuditError {
            #expect(error.code == .openFailed && error.message.contains("no_such_database") && error.message.contains("createdb"), "\(error)")
        }
    }

    @Test("a connection the server drops fails that one call with store-unreachable and writes nothing; the next call reconnects",
          .timeLimit(.minutes(1)))
    func droppedConnection() throws {
        let url = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(url) }
        let store = try open(url, maxConnections: 1)
        try store.beginRun(runId: "r", profile: "p", profileDigest: "d", command: [], detail: .null)
        let others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        try PostgresTestServer.execute(url, "SELECT pg_terminate_backend(pid) \(others)")
        try PostgresTestServer.waitUntil("the terminated connection to go") {
            try PostgresTestServer.execute(url, "SELECT count(*) \(others)").first?.first == "0"
        }

        do {
            try store.record(runId: "r", kind: "lost", detail: .null)
            Issue.record("a write on a dropped connection succeeded")
        } catch {
            #expect(error.code == .unreachable && error.path == url.description, "\(error)")
        }
        try store.record(runId: "r", kind: "kept", detail: .null)
        #expect(try store.allEvents().map(\.kind) == ["run.created", "kept"])
        try expectIntact(store.verifyChain(), events: 2)
    }

    // MARK: children

    private func expectExitedZero(_ child: pid_t, sourceLocation: SourceLocation = #_sourceLocation) {
        var status: Int32 = 0
        #expect(waitpid(child, &status, 0) == child, sourceLocation: sourceLocation)
        #expect(status & 0x7F == 0 && (status >> 8) & 0xFF == 0, "child exited with wait status \(status)", sourceLocation: sourceLocation)
    }

    /// Starts this test binary again running only `test`, with the test server's URL (so the child uses
    /// this process's server) and `variables` in its environment.
    private func spawnChild(_ test: String, _ variables: [String: String]) throws -> pid_t {
        var set = variables
        set[PostgresTestServer.urlVariable] = PostgresTestServer.connectableText(try PostgresTestServer.adminURL())
        return try TestChild.spawn("PostgresAuditTests/\(test)", set)
    }
}
