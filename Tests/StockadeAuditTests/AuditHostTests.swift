import Glibc
import StockadePolicy
import Testing
@testable import StockadeAudit
@testable import StockadeAuditSQLite

@Suite("host identity")
struct HostIdentityTests {
    /// A file holding `text`, in a fresh directory.
    private func file(_ text: String) -> String {
        let path = TempDatabase().directory + "/machine-id"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        precondition(fd >= 0)
        _ = Array(text.utf8).withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        return path
    }

    @Test("the override wins; then the machine id's first line; then the hostname")
    func order() throws {
        let machineId = file("3d1219c7c4c5404aaa1f6d2a48adfda4\n")
        #expect(try HostIdentity.resolve(override: "node-7", machineIdPath: machineId, hostname: { "vm" }) == "node-7")
        #expect(try HostIdentity.resolve(override: "", machineIdPath: machineId, hostname: { "vm" }) == "3d1219c7c4c5404aaa1f6d2a48adfda4")
        #expect(try HostIdentity.resolve(override: nil, machineIdPath: machineId, hostname: { "vm" }) == "3d1219c7c4c5404aaa1f6d2a48adfda4")
        #expect(try HostIdentity.resolve(override: nil, machineIdPath: file(""), hostname: { "vm" }) == "vm", "an empty machine-id, as in many containers")
        #expect(try HostIdentity.resolve(override: nil, machineIdPath: "/nonexistent/machine-id", hostname: { "vm" }) == "vm")
    }

    @Test("an override that is not a usable id is refused, not replaced", arguments: ["two words", "tab\there", "new\nline", String(repeating: "x", count: 256)])
    func badOverride(_ value: String) throws {
        #expect {
            _ = try HostIdentity.resolve(override: value, machineIdPath: "/etc/machine-id", hostname: { "vm" })
        } throws: { ($0 as? AuditError)?.code == .hostIdentity && ($0 as? AuditError)?.message.contains("STOCKADE_HOST_ID") == true }
    }

    @Test("with no machine id and no usable hostname the error says to set STOCKADE_HOST_ID")
    func nothingToGoOn() throws {
        #expect {
            _ = try HostIdentity.resolve(override: nil, machineIdPath: "/nonexistent/machine-id", hostname: { nil })
        } throws: { ($0 as? AuditError)?.code == .hostIdentity && ($0 as? AuditError)?.message.contains("set STOCKADE_HOST_ID") == true }
    }

    @Test("this host has an id")
    func current() throws {
        #expect(HostIdentity.isValid(try HostIdentity.current()))
    }
}

@Suite("SQLite audit store: the runs' host column")
struct AuditHostColumnTests {
    /// A database as Stockade left it before runs recorded their host: migrations 0001 and 0002 and one running run.
    private func databaseBeforeHosts() -> TempDatabase {
        let db = TempDatabase()
        RawSQL.execute(db.path, AuditSchema.migrations[0].sql + ";" + AuditSchema.migrations[1].sql + """
            ;CREATE TABLE schema_migrations (name TEXT PRIMARY KEY NOT NULL, appliedAt TEXT NOT NULL);
            INSERT INTO schema_migrations VALUES ('0001-initial', '2025-01-01T00:00:00.000Z'), ('0002-diff-conflict', '2025-01-01T00:00:00.000Z');
            INSERT INTO runs VALUES ('old', 'p', 'd', '[]', 'running', NULL, NULL, '2025-01-01T00:00:00.000Z', NULL, 4000005, 55);
            """)
        return db
    }

    @Test("an older database gains the column once; its runs have no host, new runs have this one")
    func migration() throws {
        let db = databaseBeforeHosts()
        for _ in 0..<2 { _ = try SQLiteAuditStore(path: db.path, supervisorPid: getpid(), supervisorStart: 1, hostId: "here") }
        let names = RawSQL.rows(db.path, "SELECT name FROM schema_migrations ORDER BY name").map { $0[0] }
        #expect(names == ["0001-initial", "0002-diff-conflict", "0003-run-host"])
        let store = try SQLiteAuditStore(path: db.path, supervisorPid: getpid(), supervisorStart: 1, hostId: "here")
        try store.beginRun(runId: "new", profile: "p", profileDigest: "d", command: [], detail: .null)
        #expect(try store.allRuns().map(\.hostId) == [nil, "here"])
        #expect(RawSQL.rows(db.path, "SELECT runId, hostId FROM runs ORDER BY createdAt") == [["old", "NULL"], ["new", "here"]])
        // The run from before the migration counts as this host's.
        #expect(try store.markAbandoned { pid, start in !(pid == 4_000_005 && start == 55) } == ["old"])
    }

    @Test("opened read-only, an older database is listed without hosts and left unmigrated")
    func readOnlyOlderDatabase() throws {
        let db = databaseBeforeHosts()
        let store = try SQLiteAuditStore(readingAt: db.path)
        let runs = try store.allRuns()
        #expect(runs.map(\.runId) == ["old"] && runs.map(\.hostId) == [nil])
        #expect(RawSQL.scalar(db.path, "SELECT count(*) FROM schema_migrations") == "2")
        #expect(RawSQL.scalar(db.path, "SELECT count(*) FROM pragma_table_info('runs') WHERE name = 'hostId'") == "0")
    }

    @Test("without an explicit host the store takes this host's identity")
    func defaultHost() throws {
        let db = TempDatabase()
        let store = try db.store()
        #expect(store.hostId == (try HostIdentity.current()))
        try store.beginRun(runId: "r", profile: "p", profileDigest: "d", command: [], detail: .null)
        #expect(try store.allRuns().first?.hostId == store.hostId)
    }
}
