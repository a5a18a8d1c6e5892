import Glibc
import StockadePolicy
import StockadeTestSupport
import Testing
@testable import StockadeAudit
@testable import StockadeAuditPostgres
@testable import StockadeAuditSQLite

/// One empty store for one conformance test, opened as many times as the test needs, with the raw
/// access a tamperer (or an older Stockade) has to its rows.
protocol ConformanceDatabase: Sendable {
    /// A ledger on this store, as the supervisor `supervisorPid`/`supervisorStart` on host `hostId` opens it.
    func ledger(hostId: String, supervisorPid: Int32, supervisorStart: UInt64) throws -> any AuditStore
    /// Rewrites the stored detail of event `seq` behind the ledger's back.
    func tamper(seq: Int64, detail: String)
    /// Clears the host of run `runId`, as on a row written before runs recorded their host.
    func clearHost(runId: String)
    /// Deletes the store.
    func remove()
}

/// How to make a fresh store of one backend. A PostgreSQL backend adds a second factory (a scratch
/// database on a local server) and every test below runs against it unchanged.
struct BackendFactory: Sendable, CustomTestStringConvertible {
    let name: String
    let make: @Sendable () throws -> any ConformanceDatabase

    var testDescription: String { name }

    static let sqlite = BackendFactory(name: "sqlite") { SQLiteConformanceDatabase() }
    /// A new database on the tests' PostgreSQL server (`PostgresTestServer`).
    static let postgres = BackendFactory(name: "postgres") { try PostgresConformanceDatabase() }
}

struct SQLiteConformanceDatabase: ConformanceDatabase {
    let database = TempDatabase()

    func ledger(hostId: String, supervisorPid: Int32, supervisorStart: UInt64) throws -> any AuditStore {
        try SQLiteAuditStore(path: database.path, supervisorPid: supervisorPid, supervisorStart: supervisorStart, hostId: hostId)
    }

    func tamper(seq: Int64, detail: String) {
        RawSQL.execute(database.path, "UPDATE events SET detail = '\(detail)' WHERE seq = \(seq)")
    }

    func clearHost(runId: String) {
        RawSQL.execute(database.path, "UPDATE runs SET hostId = NULL WHERE runId = '\(runId)'")
    }

    func remove() {
        for suffix in ["", "-wal", "-shm"] { unlink(database.path + suffix) }
        rmdir(database.directory)
    }
}

struct PostgresConformanceDatabase: ConformanceDatabase {
    let url: PostgresStoreURL

    init() throws { url = try PostgresTestServer.createDatabase() }

    func ledger(hostId: String, supervisorPid: Int32, supervisorStart: UInt64) throws -> any AuditStore {
        try PostgresAuditStore(url: url, environment: [:], supervisorPid: supervisorPid, supervisorStart: supervisorStart, hostId: hostId)
    }

    func tamper(seq: Int64, detail: String) {
        #expect(throws: Never.self) { try PostgresTestServer.execute(url, "UPDATE events SET detail = '\(detail)' WHERE seq = \(seq)") }
    }

    func clearHost(runId: String) {
        #expect(throws: Never.self) { try PostgresTestServer.execute(url, "UPDATE runs SET hostId = NULL WHERE runId = '\(runId)'") }
    }

    func remove() { PostgresTestServer.dropDatabase(url) }
}

/// The behaviour every `AuditBackend` must give `AuditLedger`, run once per backend.
@Suite("audit ledger: backend conformance")
struct BackendConformanceTests {
    /// PostgreSQL joins when a server can be had (`PostgresTestServer`); when not, `postgresSkipped`
    /// below is reported skipped with the reason, so the gap is never silent.
    static let backends: [BackendFactory] = [.sqlite] + (PostgresTestServer.unavailableReason == nil ? [.postgres] : [])
    static let host = "host-a"

    @Test("the conformance tests also run on PostgreSQL",
          .disabled(if: PostgresTestServer.unavailableReason != nil, Comment(rawValue: PostgresTestServer.unavailableReason ?? "")))
    func postgresIncluded() throws {
        #expect(Self.backends.map(\.name) == ["sqlite", "postgres"])
        _ = try PostgresTestServer.adminURL()
    }

    /// A fresh store and a ledger on it as this process on `host`.
    private func open(_ backend: BackendFactory) throws -> (any ConformanceDatabase, any AuditStore) {
        let database = try backend.make()
        return (database, try database.ledger(hostId: Self.host, supervisorPid: getpid(), supervisorStart: ProcessIdentity.currentStartTime))
    }

    private func expectError(_ code: AuditError.Code, containing text: String = "", _ body: () throws -> Void,
                             sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            try body()
            Issue.record("expected an AuditError \(code.rawValue), nothing was thrown", sourceLocation: sourceLocation)
        } catch let error as AuditError {
            #expect(error.code == code && (text.isEmpty || error.message.contains(text)), "\(error)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("expected an AuditError \(code.rawValue), got \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test("appended events read back with seq, runSeq and a hash chain that verifies", arguments: backends)
    func appendAndReadBack(_ backend: BackendFactory) throws {
        let (database, ledger) = try open(backend)
        defer { database.remove() }
        try ledger.beginRun(runId: "r1", profile: "p", profileDigest: "d", command: ["/bin/true"], detail: .object(["k": .str("v")]))
        #expect(try ledger.record(runId: "r1", kind: "worker.started", detail: .object(["pid": .number(7)])) == 2)
        #expect(try ledger.record(runId: nil, kind: "verification", detail: .object(["ok": .bool(true)])) == 3)
        #expect(try ledger.record(runId: "r1", kind: "worker.exited", detail: .null) == 4)

        let events = try ledger.allEvents()
        #expect(events.map(\.seq) == [1, 2, 3, 4])
        #expect(events.map(\.runId) == ["r1", "r1", nil, "r1"])
        #expect(events.map(\.runSeq) == [1, 2, 1, 3])
        #expect(events.map(\.kind) == ["run.created", "worker.started", "verification", "worker.exited"])
        #expect(events[0].detail == #"{"command":["/bin/true"],"k":"v","profile":"p","profileDigest":"d"}"#)
        #expect(events[1].detail == #"{"pid":7}"#)
        var previous = AuditChain.genesisHash
        for event in events {
            #expect(event.prevHash == previous, "seq \(event.seq) links to the one before")
            #expect(event.hash == AuditChain.hash(prevHash: event.prevHash, seq: event.seq, runId: event.runId, runSeq: event.runSeq,
                                                  kind: event.kind, at: event.at, detail: event.detail))
            previous = event.hash
        }
        let verification = try ledger.verifyChain()
        expectIntact(verification, events: 4)
        #expect(verification.head == AuditChainHead(seq: 4, hash: previous))
    }

    @Test("a batch appends in order on the same chain as single appends, and a batch that fails appends nothing", arguments: backends)
    func batchedAppends(_ backend: BackendFactory) throws {
        let (database, ledger) = try open(backend)
        defer { database.remove() }
        for run in ["a", "b"] { try ledger.beginRun(runId: run, profile: "p", profileDigest: "d", command: [], detail: .null) }
        try ledger.record(runId: nil, kind: "verification", detail: .null)
        try ledger.recordMany([(runId: "a", kind: "violation", detail: .object(["i": .number(1)])),
                               (runId: "b", kind: "violation", detail: .object(["i": .number(2)])),
                               (runId: nil, kind: "verification", detail: .null),
                               (runId: "a", kind: "kill", detail: .object(["i": .number(3)]))])
        try ledger.record(runId: "a", kind: "worker.exited", detail: .null)
        try ledger.recordMany([])

        let events = try ledger.allEvents()
        expectGapFree(events)
        #expect(events.map(\.kind) == ["run.created", "run.created", "verification", "violation", "violation", "verification", "kill", "worker.exited"])
        #expect(events.filter { $0.runId == "a" }.map(\.runSeq) == [1, 2, 3, 4])
        #expect(events.filter { $0.runId == nil }.map(\.runSeq) == [1, 2])
        expectIntact(try ledger.verifyChain(), events: 8)

        expectError(.unknownRun) {
            try ledger.recordMany([(runId: "a", kind: "violation", detail: .null), (runId: "nobody", kind: "violation", detail: .null)])
        }
        #expect(try ledger.allEvents() == events, "the failed batch left no event")
        try ledger.record(runId: "a", kind: "kill", detail: .null)
        let after = try ledger.allEvents()
        #expect(after.last?.seq == 9 && after.last?.runSeq == 5 && after.last?.prevHash == events.last?.hash)
        expectIntact(try ledger.verifyChain(), events: 9)
    }

    @Test("verification names the first event whose stored row was changed", arguments: backends)
    func tamperedRowIsDetected(_ backend: BackendFactory) throws {
        let (database, ledger) = try open(backend)
        defer { database.remove() }
        try ledger.beginRun(runId: "r", profile: "p", profileDigest: "d", command: [], detail: .null)
        for i in 0..<4 { try ledger.record(runId: "r", kind: "violation", detail: .object(["i": .number(i)])) }
        expectIntact(try ledger.verifyChain(), events: 5)

        database.tamper(seq: 3, detail: #"{"i":99}"#)
        let result = try ledger.verifyChain()
        #expect(!result.isValid && result.firstBrokenSeq == 3 && result.eventsChecked == 2, "\(result)")
        #expect(result.reason?.contains("does not match its content") == true, "\(result)")
        #expect(result.head == nil)
    }

    @Test("a run is begun running, finished once, and its row says by whom; wrong ids and states are refused", arguments: backends)
    func runLifecycle(_ backend: BackendFactory) throws {
        let (database, ledger) = try open(backend)
        defer { database.remove() }
        try ledger.beginRun(runId: "r", profile: "p", profileDigest: "d", command: ["sh", "-c", "x"], detail: .null)
        var run = try #require(try ledger.allRuns().first)
        #expect(run.state == "running" && run.outcome == nil && run.exitStatus == nil && run.endedAt == nil)
        #expect(run.command == ["sh", "-c", "x"] && run.hostId == Self.host && run.supervisorPid == getpid())
        #expect(run.supervisorStart == ProcessIdentity.currentStartTime)

        try ledger.finishRun(runId: "r", outcome: "exited", exitStatus: 3, detail: .object(["durationMs": .number(5)]))
        run = try #require(try ledger.allRuns().first)
        #expect(run.state == "finished" && run.outcome == "exited" && run.exitStatus == 3 && run.endedAt != nil)
        let finished = try #require(try ledger.allEvents(kind: "run.finished").first)
        #expect(finished.detail == #"{"durationMs":5,"exitStatus":3,"outcome":"exited"}"#)

        expectError(.invalidState, containing: "is finished, not running") {
            try ledger.finishRun(runId: "r", outcome: "exited", exitStatus: 0, detail: .null)
        }
        expectError(.duplicateRun) { try ledger.beginRun(runId: "r", profile: "p", profileDigest: "d", command: [], detail: .null) }
        expectError(.unknownRun) { try ledger.finishRun(runId: "nobody", outcome: "exited", exitStatus: 0, detail: .null) }
        expectError(.unknownRun) { try ledger.record(runId: "nobody", kind: "kill", detail: .null) }
        #expect(try ledger.allEvents().map(\.kind) == ["run.created", "run.finished"], "refused calls appended nothing")
        expectIntact(try ledger.verifyChain(), events: 2)
    }

    @Test("finishRun appends the events it is given before run.finished, in the same transaction: all of them or none", arguments: backends)
    func finishRunWithEvents(_ backend: BackendFactory) throws {
        let (database, ledger) = try open(backend)
        defer { database.remove() }
        try ledger.beginRun(runId: "r", profile: "p", profileDigest: "d", command: ["true"], detail: .null)
        let outcome: [(runId: String?, kind: String, detail: JSONValue)] = [
            ("r", "violation", .object(["syscall": .string("ptrace")])),
            ("r", "worker.exited", .object(["outcome": .string("exited")])),
        ]
        try ledger.finishRun(runId: "r", outcome: "exited", exitStatus: 0, detail: .null, after: outcome)
        let events = try ledger.allEvents()
        #expect(events.map(\.kind) == ["run.created", "violation", "worker.exited", "run.finished"])
        #expect(events.map(\.runSeq) == [1, 2, 3, 4])
        #expect(events[1].detail == #"{"syscall":"ptrace"}"#)
        #expect(try #require(try ledger.allRuns().first).state == "finished")

        // A run that cannot be finished (it is no longer running) takes none of the events with it.
        expectError(.invalidState, containing: "is finished, not running") {
            try ledger.finishRun(runId: "r", outcome: "exited", exitStatus: 0, detail: .null,
                                 after: [("r", "worker.exited", .null)])
        }
        #expect(try ledger.allEvents().count == 4, "the refused finish appended nothing")
        expectIntact(try ledger.verifyChain(), events: 4)
    }

    @Test("a diff is decided once, then applied once or put in conflict, from which it can be decided again", arguments: backends)
    func diffReview(_ backend: BackendFactory) throws {
        let (database, ledger) = try open(backend)
        defer { database.remove() }
        try ledger.beginRun(runId: "r", profile: "p", profileDigest: "d", command: [], detail: .null)

        let applied = try ledger.recordDiff(runId: "r", content: Array("diff --git a/x b/x\n".utf8), verdict: "passed", reason: nil)
        #expect(try ledger.diff(id: applied)?.state == "pending")
        let accepted = try ledger.decide(diffId: applied, accept: true, actor: "alice", note: "ok")
        #expect(accepted.state == "accepted" && accepted.decidedBy == "alice" && accepted.note == "ok" && accepted.decidedAt != nil)
        expectError(.invalidState, containing: "already accepted") { _ = try ledger.decide(diffId: applied, accept: false, actor: "bob", note: nil) }
        try ledger.markApplied(diffId: applied, detail: .object(["files": .number(1)]))
        #expect(try ledger.diff(id: applied)?.appliedAt != nil)
        expectError(.invalidState, containing: "already applied") { try ledger.markApplied(diffId: applied, detail: .null) }
        expectError(.invalidState) { try ledger.markConflict(diffId: applied, conflict: DiffConflict(file: "x", hunk: nil, reason: "r"), detail: .null) }

        let conflicted = try ledger.recordDiff(runId: "r", content: [1, 2, 3], verdict: "passed", reason: nil)
        expectError(.invalidState, containing: "is pending, not accepted") { try ledger.markApplied(diffId: conflicted, detail: .null) }
        _ = try ledger.decide(diffId: conflicted, accept: true, actor: "alice", note: nil)
        let conflict = DiffConflict(file: "a.txt", hunk: "hunk 1 (@@ -1 +1 @@)", reason: "context does not match")
        try ledger.markConflict(diffId: conflicted, conflict: conflict, detail: .null)
        var record = try #require(try ledger.diff(id: conflicted))
        #expect(record.state == "conflict" && record.conflict == conflict && record.appliedAt == nil)
        record = try ledger.decide(diffId: conflicted, accept: true, actor: "carol", note: "retry")
        #expect(record.state == "accepted" && record.conflict == conflict, "the conflict is kept until the diff applies")
        try ledger.markApplied(diffId: conflicted, detail: .null)
        record = try #require(try ledger.diff(id: conflicted))
        #expect(record.conflict == nil && record.appliedAt != nil)

        let guarded = try ledger.recordDiff(runId: "r", content: [9], verdict: "rejected", reason: "escapes the workspace")
        record = try #require(try ledger.diff(id: guarded))
        #expect(record.state == "rejected" && record.decidedBy == "guard" && record.reason == "escapes the workspace")
        expectError(.invalidState, containing: "already rejected") { _ = try ledger.decide(diffId: guarded, accept: true, actor: "alice", note: nil) }

        expectError(.unknownDiff) { _ = try ledger.decide(diffId: 999, accept: true, actor: "alice", note: nil) }
        expectError(.invalidArgument) { _ = try ledger.recordDiff(runId: "r", content: [], verdict: "maybe", reason: nil) }
        expectError(.unknownRun) { _ = try ledger.recordDiff(runId: "nobody", content: [], verdict: "passed", reason: nil) }
        expectError(.invalidArgument) { _ = try ledger.diffs(state: "lost") }
        #expect(try ledger.diffs(state: nil).map(\.id) == [applied, conflicted, guarded])
        #expect(try ledger.diffs(state: "accepted").map(\.id) == [applied, conflicted])
        #expect(try ledger.diffs(state: "rejected").map(\.id) == [guarded])
        #expect(try ledger.diffs(state: "pending").isEmpty)

        let decided = try ledger.allEvents(kind: "review.decided").compactMap { $0.detailValue?.object?["from"]?.string }
        #expect(decided == ["pending", "pending", "conflict"])
        #expect(try ledger.allEvents().map(\.kind) == [
            "run.created", "diff.recorded", "review.decided", "diff.applied", "diff.recorded", "review.decided", "diff.conflict",
            "review.decided", "diff.applied", "diff.recorded", "diff.rejected",
        ])
        expectIntact(try ledger.verifyChain(), events: 11)
        // One run's diffs, and only its own.
        try ledger.beginRun(runId: "other", profile: "p", profileDigest: "d", command: [], detail: .null)
        let others = try ledger.recordDiff(runId: "other", content: [7], verdict: "passed", reason: nil)
        #expect(try ledger.diffs(runId: "r").map(\.id) == [applied, conflicted, guarded])
        #expect(try ledger.diffs(runId: "other").map { [$0.id, Int64($0.content.count)] } == [[others, 1]])
        #expect(try ledger.diffs(runId: "nobody").isEmpty)
    }

    @Test("events are queried by run, after a seq and by kind, alone and together; runs come oldest first", arguments: backends)
    func queries(_ backend: BackendFactory) throws {
        let (database, ledger) = try open(backend)
        defer { database.remove() }
        try ledger.beginRun(runId: "r1", profile: "p", profileDigest: "d", command: [], detail: .null)  // 1
        try ledger.beginRun(runId: "r2", profile: "p", profileDigest: "d", command: [], detail: .null)  // 2
        try ledger.record(runId: "r1", kind: "violation", detail: .null)                                // 3
        try ledger.record(runId: "r2", kind: "violation", detail: .null)                                // 4
        try ledger.record(runId: nil, kind: "verification", detail: .null)                              // 5
        try ledger.record(runId: "r1", kind: "kill", detail: .null)                                     // 6

        #expect(try ledger.allEvents(runId: "r1").map(\.seq) == [1, 3, 6])
        #expect(try ledger.allEvents(since: 4).map(\.seq) == [5, 6])
        #expect(try ledger.allEvents(kind: "violation").map(\.seq) == [3, 4])
        #expect(try ledger.allEvents(runId: "r1", since: 1, kind: "violation").map(\.seq) == [3])
        #expect(try ledger.allEvents(runId: "r2", since: 4).isEmpty)
        #expect(try ledger.allEvents(runId: "nobody").isEmpty)
        #expect(try ledger.allEvents(kind: "no.such.kind").isEmpty)
        #expect(try ledger.allRuns().map(\.runId) == ["r1", "r2"])
    }

    @Test("two ledgers on one store, each appending from several threads, keep seq gap-free and one chain",
          .timeLimit(.minutes(2)), arguments: backends)
    func twoWriters(_ backend: BackendFactory) throws {
        let database = try backend.make()
        defer { database.remove() }
        let ledgers = try (0..<2).map { _ in
            try database.ledger(hostId: Self.host, supervisorPid: getpid(), supervisorStart: ProcessIdentity.currentStartTime)
        }
        let perThread = 150
        let writers = (0..<2).flatMap { ledger in (0..<2).map { thread in (ledger, "w\(ledger)-\(thread)") } }
        for (ledger, run) in writers { try ledgers[ledger].beginRun(runId: run, profile: "p", profileDigest: "d", command: [], detail: .null) }
        let failures = FailureLog()
        let threads = writers.map { ledger, run in
            let store = ledgers[ledger]
            return TestThread {
                for i in 0..<perThread {
                    do {
                        if i % 10 == 0 {
                            try store.recordMany([(runId: run, kind: "violation", detail: .object(["i": .number(i)])),
                                                  (runId: nil, kind: "verification", detail: .object(["run": .string(run)]))])
                        } else {
                            try store.record(runId: run, kind: "violation", detail: .object(["i": .number(i)]))
                        }
                    } catch {
                        failures.add("\(run) \(i): \(error)")
                    }
                }
            }
        }
        threads.forEach { $0.start() }
        threads.forEach { $0.join() }
        #expect(failures.all.isEmpty, "\(failures.all.prefix(3))")

        let batches = perThread / 10
        let expected = writers.count * (1 + perThread + batches)
        for ledger in ledgers {
            let events = try ledger.allEvents()
            #expect(events.count == expected)
            expectGapFree(events)
            #expect(zip(events, events.dropFirst()).allSatisfy { $1.seq > $0.seq && $1.prevHash == $0.hash }, "one unforked chain")
            for (_, run) in writers {
                #expect(events.filter { $0.runId == run }.map { $0.detailValue?.object?["i"]?.exactInt64 }.compactMap { $0 }
                        == (0..<Int64(perThread)).map { $0 }, "each writer's events in its order: \(run)")
            }
            expectIntact(try ledger.verifyChain(), events: Int64(expected))
        }
    }

    @Test("marking abandoned judges only this host's runs (and runs recorded without a host), never another host's",
          arguments: backends)
    func abandonedRunsOfThisHostOnly(_ backend: BackendFactory) throws {
        let database = try backend.make()
        defer { database.remove() }
        // Both supervisors "died": their pids and start times name no live process, here or anywhere.
        let hostA = try database.ledger(hostId: "host-a", supervisorPid: 4_000_001, supervisorStart: 11)
        let hostB = try database.ledger(hostId: "host-b", supervisorPid: 4_000_002, supervisorStart: 22)
        try hostA.beginRun(runId: "a-run", profile: "p", profileDigest: "d", command: [], detail: .null)
        try hostB.beginRun(runId: "b-dead", profile: "p", profileDigest: "d", command: [], detail: .null)
        try hostB.beginRun(runId: "b-alive", profile: "p", profileDigest: "d", command: [], detail: .null)
        try hostB.beginRun(runId: "b-done", profile: "p", profileDigest: "d", command: [], detail: .null)
        try hostB.finishRun(runId: "b-done", outcome: "exited", exitStatus: 0, detail: .null)
        // A run an older Stockade recorded, without a host, whose supervisor (on this host) is gone.
        let older = try database.ledger(hostId: "host-old", supervisorPid: 4_000_003, supervisorStart: 33)
        try older.beginRun(runId: "legacy", profile: "p", profileDigest: "d", command: [], detail: .null)
        database.clearHost(runId: "legacy")
        #expect(try hostA.allRuns().map(\.hostId) == ["host-a", "host-b", "host-b", "host-b", nil])

        var asked: [String] = []
        let markedByB = try hostB.markAbandoned { pid, start in
            asked.append("\(pid)/\(start)")
            return !(pid == 4_000_002 && start == 22) && !(pid == 4_000_003 && start == 33)
        }
        // b-alive shares b-dead's supervisor: judged alike. Only host-b's runs and the legacy run were judged.
        #expect(Set(markedByB) == ["b-dead", "b-alive", "legacy"])
        #expect(!asked.contains("4000001/11"), "another host's supervisor is never judged: \(asked)")
        var states = Dictionary(uniqueKeysWithValues: try hostA.allRuns().map { ($0.runId, $0.state) })
        #expect(states == ["a-run": "running", "b-dead": "abandoned", "b-alive": "abandoned", "b-done": "finished", "legacy": "abandoned"])
        let abandonedEvent = try #require(try hostA.allEvents(runId: "b-dead", kind: "run.abandoned").first)
        #expect(abandonedEvent.detail == #"{"markedBy":4000002,"supervisorPid":4000002,"supervisorStart":22}"#)

        #expect(try hostB.markAbandoned { _, _ in false }.isEmpty, "host-a's run stays running whatever its pid looks like on host-b")
        #expect(try hostA.markAbandoned { _, _ in true }.isEmpty, "a live supervisor's run is not abandoned")
        #expect(try hostA.markAbandoned { pid, start in !(pid == 4_000_001 && start == 11) } == ["a-run"])
        states = Dictionary(uniqueKeysWithValues: try hostA.allRuns().map { ($0.runId, $0.state) })
        #expect(states["a-run"] == "abandoned")
        expectIntact(try hostA.verifyChain(), events: 10)
    }
}
