import Glibc
import Synchronization
import StockadePolicy
import Testing
@testable import StockadeAudit
@testable import StockadeAuditSQLite

@Suite("SQLite audit store: schema and connection")
struct AuditSchemaTests {
    @Test("a new file gets every table and one schema_migrations row per migration; reopening adds nothing")
    func migrationsAreIdempotent() throws {
        let db = TempDatabase()
        for _ in 0..<3 { _ = try db.store() }
        let names = RawSQL.rows(db.path, "SELECT name FROM schema_migrations ORDER BY name").map { $0[0] }
        #expect(names == AuditSchema.migrations.map(\.name))
        let tables = Set(RawSQL.rows(db.path, "SELECT name FROM sqlite_master WHERE type = 'table'").map { $0[0] })
        #expect(tables.isSuperset(of: ["runs", "events", "bundles", "diffs", "chain_head", "schema_migrations"]))
        #expect(RawSQL.scalar(db.path, "SELECT count(*) FROM chain_head") == "1")
    }

    @Test("the connection uses WAL, foreign keys, full sync and a 10 s busy timeout; the file is private")
    func connectionSettings() throws {
        let db = TempDatabase()
        let store = try db.store()
        #expect(try store.pragma("journal_mode") == "wal")
        #expect(try store.pragma("foreign_keys") == "1")
        #expect(try store.pragma("synchronous") == "1", "NORMAL: durable commits fsync the WAL themselves, after the commit")
        #expect(try store.pragma("busy_timeout") == "10000")
        var info = stat()
        #expect(stat(db.path, &info) == 0)
        #expect(info.st_mode & 0o077 == 0)
    }

    @Test("a durable write fsyncs the WAL after its commit and a plain one does not; durable writers that commit while an fsync is under way share the next one")
    func groupCommit() throws {
        let db = TempDatabase()
        let store = try db.store()
        let backend = store.backend
        let writers = 8
        let ids = ["solo", "again"] + (0..<writers).map { "g\($0)" }
        let before = backend.syncCount
        for id in ids { try store.beginRun(runId: id, profile: "p", profileDigest: "d", command: [], detail: .null) }
        _ = try store.record(runId: nil, kind: "plain", detail: .null)
        #expect(backend.syncCount == before, "a plain commit took an fsync")
        @Sendable func finish(_ id: String) throws(AuditError) {
            try store.finishRun(runId: id, outcome: "exited", exitStatus: 0, detail: .null, after: [])
        }
        try finish("solo")
        #expect(backend.syncCount == before + 1, "a durable commit returned without an fsync")
        try finish("again")
        #expect(backend.syncCount == before + 2, "a durable commit was taken as covered by an fsync that began before it")
        #expect(backend.syncFileIsWAL, "the group commit fsyncs another file than the database's WAL")
        // The other durable writes are committed FULL by SQLite, which fsyncs before the commit is seen.
        _ = try store.recordDiff(runId: "solo", content: [1], verdict: "passed", reason: nil)
        #expect(backend.syncCount == before + 2, "a diff's record went through the group commit")

        // Eight durable writers commit while the test holds the fsync lock: the first to take it after
        // syncs for all eight.
        let failures = FailureLog()
        let threads = (0..<writers).map { t in
            TestThread { do { try finish("g\(t)") } catch { failures.add("\(error)") } }
        }
        let committed = backend.commitCount
        backend.withSyncHeld {
            threads.forEach { $0.start() }
            var waited = 0
            while backend.commitCount < committed + UInt64(writers) && waited < 10_000 { usleep(1000); waited += 1 }
            #expect(backend.commitCount == committed + UInt64(writers), "the writers did not all commit within 10 s")
            #expect(threads.allSatisfy { !$0.isDone }, "a durable write returned while no fsync could run")
        }
        threads.forEach { $0.join() }
        #expect(failures.all == [])
        #expect(backend.syncCount == before + 3, "\(backend.syncCount - before - 2) fsyncs for \(writers) writers queued behind one")
        #expect(RawSQL.scalar(db.path, "SELECT count(*) FROM runs WHERE state = 'finished'") == "\(writers + 2)")
        try expectIntact(store.verifyChain(), events: Int64(2 * (writers + 2) + 2))
    }

    @Test("a failed group fsync fails its write, saying its commit is kept but may not be on disk, and every later write; reads go on")
    func failedSync() throws {
        let db = TempDatabase()
        let store = try db.store()
        try store.beginRun(runId: "r", profile: "p", profileDigest: "d", command: [], detail: .null)
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[1]) }
        store.backend.replaceSyncFile(fds[0])  // fdatasync of a pipe fails (EINVAL)
        do {
            try store.finishRun(runId: "r", outcome: "exited", exitStatus: 0, detail: .null, after: [])
            Issue.record("a group-committed write succeeded after a failed fsync")
        } catch {
            #expect(error.code == .storage && "\(error)".contains("-wal") && "\(error)".contains("the commit is in the audit database"), "\(error)")
        }
        #expect(RawSQL.scalar(db.path, "SELECT state FROM runs WHERE runId = 'r'") == "finished")
        // Nothing more is written: a caller that retries what failed cannot record it twice.
        #expect(throws: AuditError.self) { try store.recordMany([(runId: "r", kind: "again", detail: .null)]) }
        #expect(throws: AuditError.self) { try store.beginRun(runId: "r2", profile: "p", profileDigest: "d", command: [], detail: .null) }
        do {
            _ = try store.record(runId: nil, kind: "plain", detail: .null)
            Issue.record("a write succeeded after a failed fsync")
        } catch {
            #expect(error.code == .storage && "\(error)".contains("takes no more writes"), "\(error)")
        }
        #expect(store.backend.syncCount == 1, "the failure is not retried: a later fsync could succeed without the lost pages")
        try expectIntact(store.verifyChain(), events: 2)
    }

    @Test("a short-lived process's store checkpoints its WAL at a low threshold, so the next process's start reads few frames; the default lets it grow")
    func checkpointThreshold() throws {
        func walBytes(checkpointPages: Int32, commits: Int) throws -> Int {
            let db = TempDatabase()
            // The store stays open while the WAL is measured: closing the last connection checkpoints and removes it.
            let store = try SQLiteAuditStore(path: db.path, supervisorPid: getpid(), supervisorStart: ProcessIdentity.currentStartTime,
                                             checkpointPages: checkpointPages)
            #expect(try store.pragma("wal_autocheckpoint") == "\(checkpointPages)")
            for i in 0..<commits {
                _ = try store.record(runId: nil, kind: "test.event", detail: .object(["n": .number(Double(i)), "pad": .string(String(repeating: "x", count: 3000))]))
            }
            var info = stat()
            #expect(stat(db.path + "-wal", &info) == 0)
            return Int(info.st_size)
        }
        let frame = 4096 + 24
        let short = try walBytes(checkpointPages: 8, commits: 120)
        let long = try walBytes(checkpointPages: SQLiteAuditBackend.defaultCheckpointPages, commits: 120)
        // Each commit adds a few frames: the low threshold resets the WAL every few commits.
        #expect(short <= 32 + 24 * frame, "WAL of \(short) bytes with an 8-page threshold")
        #expect(long > 120 * frame, "WAL of \(long) bytes with the default threshold: the test no longer tells them apart")
        let db = TempDatabase()
        #expect(throws: AuditError.self) { try SQLiteAuditBackend(path: db.path, checkpointPages: 0) }
        do {
            _ = try SQLiteAuditBackend(path: db.path, checkpointPages: 0)
        } catch {
            #expect("\(error)".contains("checkpointPages"), "\(error)")
        }
    }

    @Test("a database migrated by a newer Stockade is refused with a migration error")
    func unknownMigrationIsRefused() throws {
        let db = TempDatabase()
        _ = try db.store()
        RawSQL.execute(db.path, "INSERT INTO schema_migrations VALUES ('9999-from-the-future', '2030-01-01T00:00:00.000Z')")
        #expect {
            _ = try db.store()
        } throws: { error in
            guard let error = error as? AuditError else { return false }
            return error.code == .migration && error.message.contains("9999-from-the-future")
        }
    }

    static let notDatabases: [String: [UInt8]] = [
        "text": Array(String(repeating: "this is not a database\n", count: 200).utf8),
        "binary noise": (0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 7919 &+ 13) },
        "an SQLite header with garbage after it": Array("SQLite format 3\0".utf8) + [UInt8](repeating: 0xFF, count: 4080),
    ]

    @Test("a file that is not a database gives an error naming the path and what to do", arguments: notDatabases.keys.sorted())
    func notADatabase(name: String) throws {
        let db = TempDatabase()
        db.write(try #require(Self.notDatabases[name]))
        #expect {
            _ = try db.store()
        } throws: { error in
            guard let error = error as? AuditError else { return false }
            return error.code == .notADatabase && error.path == db.path && error.message.contains("move it aside")
        }
    }

    @Test("a symlink at the database path is refused")
    func symlinkRefused() throws {
        let db = TempDatabase()
        let target = db.directory + "/elsewhere.sqlite"
        #expect(symlink(target, db.path) == 0)
        #expect(throws: AuditError.self) { _ = try db.store() }
        #expect(access(target, F_OK) != 0)
    }
}

@Suite("SQLite audit store: runs and events")
struct AuditRunTests {
    @Test("beginRun, record and finishRun leave the run row and a numbered event for each step")
    func runLifecycle() throws {
        let db = TempDatabase()
        let store = try db.store(pid: 4242, start: 777)
        try store.beginRun(runId: "r1", profile: "default", profileDigest: "abc", command: ["/bin/echo", "hi there"],
                           detail: .object(["extra": .str("x")]))
        let seq = try store.record(runId: "r1", kind: "worker.started", detail: .object(["pid": .number(99)]))
        #expect(seq == 2)
        try store.record(runId: nil, kind: "supervisor.started", detail: .null)
        try store.finishRun(runId: "r1", outcome: "exited", exitStatus: 3, detail: .object(["durationMs": .number(12)]))

        let runs = try store.allRuns()
        #expect(runs.count == 1)
        let run = try #require(runs.first)
        #expect(run.runId == "r1" && run.profile == "default" && run.profileDigest == "abc")
        #expect(run.command == ["/bin/echo", "hi there"])
        #expect(run.state == "finished" && run.outcome == "exited" && run.exitStatus == 3)
        #expect(run.supervisorPid == 4242 && run.supervisorStart == 777)
        #expect(run.endedAt != nil)

        let events = try store.allEvents()
        #expect(events.map(\.kind) == ["run.created", "worker.started", "supervisor.started", "run.finished"])
        #expect(events.map(\.runSeq) == [1, 2, 1, 3])
        #expect(events[0].detailValue?.object?["extra"] == .str("x"))
        #expect(events[0].detailValue?.object?["command"] == .array([.str("/bin/echo"), .str("hi there")]))
        #expect(events[3].detailValue?.object?["outcome"] == .str("exited"))
        #expect(events[3].detailValue?.object?["exitStatus"]?.exactInt64 == 3)
        #expect(events[0].prevHash == AuditChain.genesisHash)
        #expect(events[1].prevHash == events[0].hash)
        for event in events {
            // 2026-11-25T13:19:26.123Z
            #expect(event.at.count == 24 && event.at.hasSuffix("Z") && Array(event.at.utf8)[19] == UInt8(ascii: "."))
        }
        try expectIntact(store.verifyChain(), events: 4)
    }

    @Test("events filter by run, by seq after `since` and by kind")
    func eventFilters() throws {
        let store = try TempDatabase().store()
        try store.beginRun(runId: "a", profile: "p", profileDigest: "d", command: ["x"], detail: .null)
        try store.beginRun(runId: "b", profile: "p", profileDigest: "d", command: ["y"], detail: .null)
        try store.recordMany([(runId: "a", kind: "k1", detail: .null), (runId: "b", kind: "k2", detail: .null),
                              (runId: "a", kind: "k2", detail: .null), (runId: nil, kind: "k1", detail: .null)])
        #expect(try store.allEvents(runId: "a").map(\.seq) == [1, 3, 5])
        #expect(try store.allEvents(since: 4).map(\.seq) == [5, 6])
        #expect(try store.allEvents(kind: "k2").map(\.seq) == [4, 5])
        #expect(try store.allEvents(runId: "a", since: 1, kind: "k1").map(\.seq) == [3])
    }

    @Test("an events stream body may write to the store without deadlocking")
    func streamBodyMayWrite() throws {
        let store = try TempDatabase().store()
        try store.recordMany((0..<5).map { (runId: nil, kind: "tick", detail: .number($0)) })
        var seen = 0
        try store.events(runId: nil, since: nil, kind: "tick") { _ in
            seen += 1
            try store.record(runId: nil, kind: "echo", detail: .null)
        }
        #expect(seen == 5)
        #expect(try store.allEvents(kind: "echo").count == 5)
    }

    @Test("a run id cannot be begun twice")
    func duplicateRun() throws {
        let store = try TempDatabase().store()
        try store.beginRun(runId: "r", profile: "p", profileDigest: "d", command: [], detail: .null)
        #expect { try store.beginRun(runId: "r", profile: "p", profileDigest: "d", command: [], detail: .null) }
            throws: { ($0 as? AuditError)?.code == .duplicateRun }
        #expect(try store.allEvents().count == 1)
    }

    @Test("an event for an unknown run is refused and appends nothing")
    func unknownRun() throws {
        let store = try TempDatabase().store()
        #expect { try store.record(runId: "ghost", kind: "x", detail: .null) } throws: { ($0 as? AuditError)?.code == .unknownRun }
        #expect { try store.recordBundle(runId: "ghost", role: "result", status: "accepted", reason: nil, files: 0, bytes: 0, manifestSha256: nil) }
            throws: { ($0 as? AuditError)?.code == .unknownRun }
        #expect(try store.allEvents().isEmpty)
        try store.record(runId: nil, kind: "after", detail: .null)
        #expect(try store.allEvents().map(\.seq) == [1])
    }

    @Test("a run is finished once; finishing it again names its state")
    func finishTwice() throws {
        let store = try TempDatabase().store()
        try store.beginRun(runId: "r", profile: "p", profileDigest: "d", command: [], detail: .null)
        try store.finishRun(runId: "r", outcome: "exited", exitStatus: 0, detail: .null)
        #expect { try store.finishRun(runId: "r", outcome: "exited", exitStatus: 0, detail: .null) }
            throws: { ($0 as? AuditError)?.code == .invalidState && ($0 as? AuditError)?.message.contains("finished") == true }
        #expect { try store.finishRun(runId: "nope", outcome: "exited", exitStatus: 0, detail: .null) }
            throws: { ($0 as? AuditError)?.code == .unknownRun }
    }

    @Test("recordMany is all or nothing: one refused event leaves none of the batch")
    func recordManyIsAtomic() throws {
        let store = try TempDatabase().store()
        try store.beginRun(runId: "r", profile: "p", profileDigest: "d", command: [], detail: .null)
        #expect(throws: AuditError.self) {
            try store.recordMany([(runId: "r", kind: "one", detail: .null), (runId: "ghost", kind: "two", detail: .null)])
        }
        #expect(try store.allEvents().map(\.kind) == ["run.created"])
        #expect(try store.verifyChain().isValid)
    }

    static let bundleCases: [(role: String, status: String, reason: String?)] = [
        ("request", "accepted", nil), ("result", "accepted", nil), ("result", "rejected", "symlink at out/link"),
        ("request", "rejected", "manifest larger than 65536 bytes"),
    ]

    @Test("a bundle verdict is a row and a bundle.<status> event", arguments: bundleCases)
    func bundles(role: String, status: String, reason: String?) throws {
        let db = TempDatabase()
        let store = try db.store()
        try store.beginRun(runId: "r", profile: "p", profileDigest: "d", command: [], detail: .null)
        try store.recordBundle(runId: "r", role: role, status: status, reason: reason, files: 3, bytes: 1234, manifestSha256: "ff")
        #expect(RawSQL.rows(db.path, "SELECT runId, role, status, reason, files, bytes, manifestSha256 FROM bundles")
            == [["r", role, status, reason ?? "NULL", "3", "1234", "ff"]])
        let event = try #require(try store.allEvents().last)
        #expect(event.kind == "bundle.\(status)")
        #expect(event.detailValue?.object?["reason"] == (reason.map { .str($0) } ?? .null))
        #expect(event.detailValue?.object?["role"] == .str(role))
    }

    @Test("a bundle role or status outside the documented set is refused", arguments: [("reply", "accepted"), ("result", "maybe")])
    func bundleArguments(role: String, status: String) throws {
        let store = try TempDatabase().store()
        try store.beginRun(runId: "r", profile: "p", profileDigest: "d", command: [], detail: .null)
        #expect { try store.recordBundle(runId: "r", role: role, status: status, reason: nil, files: 0, bytes: 0, manifestSha256: nil) }
            throws: { ($0 as? AuditError)?.code == .invalidArgument }
    }
}

@Suite("SQLite audit store: diffs and review")
struct AuditDiffTests {
    func storeWithRun() throws -> (TempDatabase, SQLiteAuditStore) {
        let db = TempDatabase()
        let store = try db.store()
        try store.beginRun(runId: "r", profile: "p", profileDigest: "d", command: [], detail: .null)
        return (db, store)
    }

    @Test("a passed diff is pending, with its content, sha256 and a diff.recorded event")
    func passedDiff() throws {
        let (_, store) = try storeWithRun()
        let content = Array("--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n".utf8) + [0, 0xFF]
        let id = try store.recordDiff(runId: "r", content: content, verdict: "passed", reason: nil)
        let diff = try #require(try store.diff(id: id))
        #expect(diff.content == content && diff.bytes == Int64(content.count) && diff.state == "pending" && diff.decidedBy == nil)
        let abc = try #require(try store.diff(id: try store.recordDiff(runId: "r", content: Array("abc".utf8), verdict: "passed", reason: nil)))
        #expect(abc.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(try store.diffs(state: "pending").map(\.id) == [id, abc.id])
        #expect(try store.diffs(state: "rejected").isEmpty)
        let event = try #require(try store.allEvents(kind: "diff.recorded").first)
        #expect(event.detailValue?.object?["diffId"]?.exactInt64 == id)
        #expect(event.detailValue?.object?["sha256"] == .str(diff.sha256))
    }

    @Test("an empty diff is stored as zero bytes, not NULL")
    func emptyDiff() throws {
        let (_, store) = try storeWithRun()
        let id = try store.recordDiff(runId: "r", content: [], verdict: "passed", reason: nil)
        #expect(try store.diff(id: id)?.content == [])
    }

    @Test("a diff the path guard rejected is stored rejected by `guard`, with diff.recorded and diff.rejected events")
    func rejectedDiff() throws {
        let (_, store) = try storeWithRun()
        let id = try store.recordDiff(runId: "r", content: Array("x".utf8), verdict: "rejected", reason: "path ../etc/passwd escapes")
        let diff = try #require(try store.diff(id: id))
        #expect(diff.state == "rejected" && diff.decidedBy == "guard" && diff.decidedAt != nil && diff.reason == "path ../etc/passwd escapes")
        #expect(try store.allEvents().map(\.kind) == ["run.created", "diff.recorded", "diff.rejected"])
        #expect(try store.diffs(state: "pending").isEmpty)
        #expect { _ = try store.decide(diffId: id, accept: true, actor: "alice", note: nil) }
            throws: { ($0 as? AuditError)?.code == .invalidState && ($0 as? AuditError)?.message.contains("rejected") == true }
    }

    @Test("a pending diff is decided once, with actor, note and decision; a second decision names the state")
    func decideOnce() throws {
        let (_, store) = try storeWithRun()
        let id = try store.recordDiff(runId: "r", content: [1, 2, 3], verdict: "passed", reason: nil)
        let decided = try store.decide(diffId: id, accept: true, actor: "alice", note: "looks fine")
        #expect(decided.state == "accepted" && decided.decidedBy == "alice" && decided.note == "looks fine" && decided.decidedAt != nil)
        let event = try #require(try store.allEvents(kind: "review.decided").first)
        #expect(event.runId == "r")
        #expect(event.detailValue?.object?["actor"] == .str("alice"))
        #expect(event.detailValue?.object?["note"] == .str("looks fine"))
        #expect(event.detailValue?.object?["decision"] == .str("accepted"))
        for accept in [true, false] {
            #expect { _ = try store.decide(diffId: id, accept: accept, actor: "bob", note: nil) }
                throws: { ($0 as? AuditError)?.code == .invalidState && ($0 as? AuditError)?.message.contains("already accepted") == true }
        }
        #expect(try store.diff(id: id)?.decidedBy == "alice")
        #expect(try store.allEvents(kind: "review.decided").count == 1)
        #expect { _ = try store.decide(diffId: 999, accept: false, actor: "bob", note: nil) } throws: { ($0 as? AuditError)?.code == .unknownDiff }
    }

    @Test("a rejected review leaves the diff rejected and not appliable")
    func rejectByReviewer() throws {
        let (_, store) = try storeWithRun()
        let id = try store.recordDiff(runId: "r", content: [1], verdict: "passed", reason: nil)
        #expect(try store.decide(diffId: id, accept: false, actor: "carol", note: nil).state == "rejected")
        #expect { try store.markApplied(diffId: id, detail: .null) } throws: { ($0 as? AuditError)?.code == .invalidState }
    }

    @Test("an accepted diff is marked applied once, with a diff.applied event; a pending one cannot be")
    func markApplied() throws {
        let (_, store) = try storeWithRun()
        let id = try store.recordDiff(runId: "r", content: [1], verdict: "passed", reason: nil)
        #expect { try store.markApplied(diffId: id, detail: .null) } throws: { ($0 as? AuditError)?.code == .invalidState }
        _ = try store.decide(diffId: id, accept: true, actor: "auto", note: nil)
        try store.markApplied(diffId: id, detail: .object(["files": .number(2)]))
        #expect(try store.diff(id: id)?.appliedAt != nil)
        let event = try #require(try store.allEvents(kind: "diff.applied").first)
        #expect(event.detailValue?.object?["files"]?.exactInt64 == 2)
        #expect(event.detailValue?.object?["diffId"]?.exactInt64 == id)
        #expect { try store.markApplied(diffId: id, detail: .null) } throws: { ($0 as? AuditError)?.message.contains("already applied") == true }
        #expect { try store.markApplied(diffId: 77, detail: .null) } throws: { ($0 as? AuditError)?.code == .unknownDiff }
    }

    @Test("diffs list in id order and by state")
    func listing() throws {
        let (_, store) = try storeWithRun()
        let a = try store.recordDiff(runId: "r", content: [1], verdict: "passed", reason: nil)
        let b = try store.recordDiff(runId: "r", content: [2], verdict: "rejected", reason: "setuid mode")
        let c = try store.recordDiff(runId: "r", content: [3], verdict: "passed", reason: nil)
        _ = try store.decide(diffId: c, accept: true, actor: "x", note: nil)
        #expect(try store.diffs(state: nil).map(\.id) == [a, b, c])
        #expect(try store.diffs(state: "pending").map(\.id) == [a])
        #expect(try store.diffs(state: "rejected").map(\.id) == [b])
        #expect(try store.diffs(state: "accepted").map(\.id) == [c])
        #expect { _ = try store.diffs(state: "done") } throws: { ($0 as? AuditError)?.code == .invalidArgument }
    }

    @Test("when the diff.recorded event cannot be written, the diff is not visible either (one transaction)")
    func diffInvisibleWithoutEvent() throws {
        let (db, store) = try storeWithRun()
        RawSQL.execute(db.path, """
            CREATE TRIGGER refuse_diff_event BEFORE INSERT ON events WHEN NEW.kind = 'diff.recorded'
            BEGIN SELECT RAISE(ABORT, 'injected audit write failure'); END
            """)
        #expect(throws: AuditError.self) { _ = try store.recordDiff(runId: "r", content: [1], verdict: "passed", reason: nil) }
        #expect(try store.diffs(state: nil).isEmpty)
        RawSQL.execute(db.path, "DROP TRIGGER refuse_diff_event")
        let id = try store.recordDiff(runId: "r", content: [1], verdict: "passed", reason: nil)
        #expect(try store.allEvents(kind: "diff.recorded").map { $0.detailValue?.object?["diffId"]?.exactInt64 } == [id])
        #expect(try store.verifyChain().isValid)
    }

    @Test("every diff a concurrent reader lists already has its diff.recorded event")
    func eventBeforeDiffUnderConcurrency() throws {
        let (db, store) = try storeWithRun()
        let reader = try db.store()
        let writer = TestThread { for i in 0..<200 { _ = try? store.recordDiff(runId: "r", content: [UInt8(i & 0xFF)], verdict: "passed", reason: nil) } }
        writer.start()
        var checks = 0
        while !writer.isDone || checks == 0 {
            let listed = try reader.diffs(state: nil).map(\.id)
            let withEvents = Set(try reader.allEvents(kind: "diff.recorded").compactMap { $0.detailValue?.object?["diffId"]?.exactInt64 })
            #expect(Set(listed).isSubset(of: withEvents))
            checks += 1
        }
        writer.join()
        #expect(try store.diffs(state: nil).count == 200)
    }
}

@Suite("the audit store's write observer")
struct AuditWriteObserverTests {
    /// A closure kept bare in a `Mutex` was re-abstracted by every access and written back two thunks
    /// deeper, so the observer ran deeper in the stack (and slower) with every write. Its depth must
    /// not change between the second write and the three hundredth.
    @Test("the observer runs at the same stack depth after 300 writes as after 2")
    func observerDoesNotGrow() throws {
        let db = TempDatabase()
        let store = try db.store()
        // Where the observer's stack frame is: the address of one of its locals (same thread, same path).
        let depths = Mutex<[UInt]>([])
        store.observeWrites { _ in
            var marker: UInt8 = 0
            let address = withUnsafeMutablePointer(to: &marker) { UInt(bitPattern: $0) }
            depths.withLock { $0.append(address) }
        }
        for _ in 0..<300 { try store.record(runId: nil, kind: "api.request", detail: .object(["route": .string("/v1/health")])) }
        let seen = depths.withLock { $0 }
        try #require(seen.count == 300, "one observation per write: \(seen.count)")
        // The positive control: a real stack address was read.
        #expect(seen[1] > 4096)
        let deeper = Int(bitPattern: seen[1]) - Int(bitPattern: seen[299])
        #expect(abs(deeper) < 256, "the observer ran \(deeper) bytes deeper in the stack after 300 writes than after 2")
    }
}
