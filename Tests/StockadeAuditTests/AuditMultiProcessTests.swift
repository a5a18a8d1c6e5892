import Glibc
import StockadePolicy
import Testing
@testable import StockadeAudit
@testable import StockadeAuditSQLite

/// Separate processes sharing one audit file: the test binary re-executes itself, running only the
/// child test below, which is enabled by the environment variables the parent sets.
@Suite("SQLite audit store: several processes")
struct AuditMultiProcessTests {
    static let childDatabase = "STOCKADE_AUDIT_CHILD_DB"
    static let childRun = "STOCKADE_AUDIT_CHILD_RUN"
    static let eventsPerWriter = 500

    @Test("2 processes and 2 threads appending 500 events each give gap-free seq and runSeq and a valid chain",
          .timeLimit(.minutes(2)))
    func processesAndThreads() throws {
        let db = TempDatabase()
        let store = try db.store()
        let writers = ["proc-0", "proc-1", "thread-0", "thread-1"]
        for run in writers { try store.beginRun(runId: run, profile: "p", profileDigest: "d", command: [], detail: .null) }

        let children = try writers.prefix(2).map { run in try spawnChild(database: db.path, run: run) }
        let failures = FailureLog()
        let threads = writers.suffix(2).map { run in
            TestThread {
                for i in 0..<Self.eventsPerWriter {
                    do { try store.record(runId: run, kind: "append", detail: .object(["i": .number(i)])) }
                    catch { failures.add("\(error)") }
                }
            }
        }
        threads.forEach { $0.start() }
        threads.forEach { $0.join() }
        for child in children {
            var status: Int32 = 0
            #expect(waitpid(child, &status, 0) == child)
            #expect(status & 0x7F == 0 && (status >> 8) & 0xFF == 0, "child writer exited with wait status \(status)")
        }
        #expect(failures.all == [])

        let events = try store.allEvents()
        expectGapFree(events)
        for run in writers {
            #expect(events.filter { $0.runId == run }.count == Self.eventsPerWriter + 1, "events of \(run)")
        }
        #expect(Set(events.filter { $0.runId?.hasPrefix("proc-") == true && $0.kind == "append" }.map(\.runId)).count == 2)
        try expectIntact(store.verifyChain(), events: Int64(4 + 4 * Self.eventsPerWriter))
    }

    @Test("child writer: appends events to the parent's database (runs only when spawned by the test above)",
          .enabled(if: getenv(childDatabase) != nil, "runs only as a child process of the multi-process writer test"))
    func childWriter() throws {
        let path = String(cString: try #require(getenv(Self.childDatabase)))
        let run = String(cString: try #require(getenv(Self.childRun)))
        let store = try SQLiteAuditStore(path: path, supervisorPid: getpid(), supervisorStart: ProcessIdentity.currentStartTime)
        for i in 0..<Self.eventsPerWriter {
            try store.record(runId: run, kind: "append", detail: .object(["i": .number(i), "pid": .number(getpid())]))
        }
    }

    /// Starts this test binary again, running only `childWriter`, with the database and run in its environment.
    private func spawnChild(database: String, run: String) throws -> pid_t {
        try TestChild.spawn("AuditMultiProcessTests/childWriter", [Self.childDatabase: database, Self.childRun: run])
    }
}
