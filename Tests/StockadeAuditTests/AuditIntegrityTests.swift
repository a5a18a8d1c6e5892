import Glibc
import StockadePolicy
import Synchronization
import Testing
@testable import StockadeAudit
@testable import StockadeAuditSQLite

@Suite("SQLite audit store: hash chain")
struct AuditChainTests {
    /// A store with 8 events: seq 1 run.created(r), 2..7 alternate r / none, 8 run.finished.
    func populated() throws -> (TempDatabase, SQLiteAuditStore) {
        let db = TempDatabase()
        let store = try db.store()
        try store.beginRun(runId: "r", profile: "p", profileDigest: "d", command: ["c"], detail: .null)
        for i in 0..<6 {
            try store.record(runId: i % 2 == 0 ? "r" : nil, kind: "step", detail: .object(["i": .number(i)]))
        }
        try store.finishRun(runId: "r", outcome: "exited", exitStatus: 0, detail: .null)
        return (db, store)
    }

    @Test("the event hash is SHA-256 of prevHash, seq, runId, runSeq, kind, at and detail joined by newlines", arguments: [
        (Int64(1), "r1" as String?, Int64(1), "run.created", "{\"a\":1}", "e77bd8f72c599e7937a33a0fc4ce6e0e0871e57179db5b153a6ad993a55b318f"),
        (7, nil, 3, "supervisor.started", "null", "bdfd5b0137ad6d12349baca509833e9ec08c8cca4db51952e104fc59344820eb"),
    ])
    func hashFormat(seq: Int64, runId: String?, runSeq: Int64, kind: String, detail: String, expected: String) {
        // Expected digests computed independently (Python hashlib) from the documented preimage.
        #expect(AuditChain.hash(prevHash: AuditChain.genesisHash, seq: seq, runId: runId, runSeq: runSeq, kind: kind,
                                at: "2026-11-25T13:19:26.123Z", detail: detail) == expected)
    }

    @Test("an untouched chain verifies every event")
    func untouched() throws {
        let (_, store) = try populated()
        try expectIntact(store.verifyChain(), events: 8)
    }

    @Test("an empty store verifies")
    func empty() throws {
        try expectIntact(TempDatabase().store().verifyChain(), events: 0)
    }

    static let tampering: [(what: String, sql: String, brokenSeq: Int64)] = [
        ("edited detail", "UPDATE events SET detail = '{\"i\":99}' WHERE seq = 3", 3),
        ("edited kind", "UPDATE events SET kind = 'nothing' WHERE seq = 5", 5),
        ("edited time", "UPDATE events SET at = '2000-01-01T00:00:00.000Z' WHERE seq = 2", 2),
        ("moved to another run", "UPDATE events SET runId = NULL WHERE seq = 4", 4),
        ("deleted row", "DELETE FROM events WHERE seq = 4", 4),
        ("deleted first row", "DELETE FROM events WHERE seq = 1", 1),
        ("deleted last row", "DELETE FROM events WHERE seq = 8", 8),
        ("deleted last two rows", "DELETE FROM events WHERE seq >= 7", 7),
        ("swapped content of two rows", """
            UPDATE events SET detail = CASE seq WHEN 3 THEN (SELECT detail FROM events WHERE seq = 5)
                                                 ELSE (SELECT detail FROM events WHERE seq = 3) END WHERE seq IN (3, 5)
            """, 3),
        ("reordered rows (whole rows swapped)", """
            UPDATE events SET seq = -seq WHERE seq IN (2, 3);
            UPDATE events SET seq = 3 WHERE seq = -2;
            UPDATE events SET seq = 2 WHERE seq = -3;
            """, 2),
        ("inserted row in the middle", """
            UPDATE events SET seq = seq + 1000 WHERE seq >= 4; UPDATE events SET seq = seq - 999 WHERE seq >= 1004;
            INSERT INTO events VALUES (4, 'r', 3, 'forged', '2026-01-01T00:00:00.000Z', '{}', (SELECT hash FROM events WHERE seq = 3), 'x')
            """, 4),
        ("appended row past the head", """
            INSERT INTO events VALUES (9, NULL, 4, 'forged', '2026-01-01T00:00:00.000Z', '{}', (SELECT hash FROM events WHERE seq = 8),
                                       (SELECT hash FROM events WHERE seq = 8))
            """, 9),
        ("edited runSeq", "UPDATE events SET runSeq = 9 WHERE seq = 6", 6),
    ]

    @Test("tampering through raw SQL is found at the right seq", arguments: tampering)
    func tamperingIsFound(what: String, sql: String, brokenSeq: Int64) throws {
        let (db, store) = try populated()
        RawSQL.execute(db.path, sql)
        let result = try store.verifyChain()
        #expect(result.firstBrokenSeq == brokenSeq, "\(what): \(result.reason ?? "valid")")
        #expect(result.reason != nil)
    }

    @Test("a row edited together with its own hash still breaks the link to the next row")
    func rehashedRowBreaksNextLink() throws {
        let (db, store) = try populated()
        let row = RawSQL.rows(db.path, "SELECT seq, runId, runSeq, kind, at, prevHash FROM events WHERE seq = 3")[0]
        let forgedDetail = "{\"i\":42}"
        let hash = AuditChain.hash(prevHash: row[5], seq: 3, runId: row[1] == "NULL" ? nil : row[1], runSeq: Int64(row[2])!,
                                   kind: row[3], at: row[4], detail: forgedDetail)
        RawSQL.execute(db.path, "UPDATE events SET detail = '\(forgedDetail)', hash = '\(hash)' WHERE seq = 3")
        #expect(try store.verifyChain().firstBrokenSeq == 4)
    }

    @Test("appending after a verified chain continues it")
    func continuesAfterReopen() throws {
        let (db, _) = try populated()
        let reopened = try db.store()
        try reopened.record(runId: nil, kind: "later", detail: .null)
        let events = try reopened.allEvents()
        expectGapFree(events)
        #expect(try reopened.verifyChain().eventsChecked == 9)
    }
}

@Suite("SQLite audit store: hostile strings")
struct AuditHostileInputTests {
    static let hostile: [String] = [
        "it's \"quoted\" `backticked`",
        "'); DROP TABLE events;--",
        "\"; DELETE FROM runs WHERE 1=1; --",
        "nul\0inside\0",
        "\0",
        String(decoding: [0x66, 0xFF, 0xFE, 0xC3, 0x28, 0xED, 0xA0, 0x80, 0x67], as: UTF8.self),
        "\u{FFFD}\u{202E}evil\u{2028}\u{2029}\u{7F}\u{1B}[31m",
        "line\nbreak\r\ttab \\ backslash",
        "",
        "🦀🧨 emoji and combining e\u{301}",
    ]

    @Test("a hostile string is stored and read back verbatim in detail, run id, reason, actor and note", arguments: hostile)
    func storedVerbatim(text: String) throws {
        let db = TempDatabase()
        let store = try db.store()
        let runId = "run-" + text
        try store.beginRun(runId: runId, profile: text, profileDigest: "d", command: [text, "arg"], detail: .object(["k": .str(text)]))
        let detail = JSONValue.object(["value": .str(text), text: .array([.str(text)])])
        try store.record(runId: runId, kind: "worker.said", detail: detail)
        let diffId = try store.recordDiff(runId: runId, content: Array(text.utf8), verdict: "passed", reason: text)
        let decided = try store.decide(diffId: diffId, accept: false, actor: text, note: text)
        #expect(decided.decidedBy == text && decided.note == text && decided.reason == text && decided.runId == runId)

        let event = try #require(try store.allEvents(kind: "worker.said").first)
        #expect(event.runId == runId)
        #expect(event.detail == detail.serialized())
        #expect(event.detailValue == detail)
        let run = try #require(try store.allRuns().first)
        #expect(run.runId == runId && run.profile == text && run.command == [text, "arg"])
        #expect(try store.allEvents(runId: runId).count == 4)
        let tables = Set(RawSQL.rows(db.path, "SELECT name FROM sqlite_master WHERE type = 'table'").map { $0[0] })
        #expect(tables.isSuperset(of: ["runs", "events", "diffs", "bundles"]))
        #expect(try store.verifyChain().isValid)
    }

    @Test("a string in a detail longer than 4096 bytes is capped with a marker naming the bytes cut", arguments: [
        ("a", 10_000, 4096, 5904),
        ("é", 3000, 4096, 1904),
        ("€", 1366, 4095, 3),
        ("b", 4096, 4096, 0),
    ])
    func capped(unit: String, count: Int, keptBytes: Int, cutBytes: Int) throws {
        let text = String(repeating: unit, count: count)
        let store = try TempDatabase().store()
        try store.record(runId: nil, kind: "long", detail: .object(["out": .str(text), "nested": .array([.object(["x": .str(text)])])]))
        let value = try #require(try store.allEvents().first?.detailValue?.object)
        let expected = cutBytes == 0 ? text : String(decoding: Array(text.utf8)[..<keptBytes], as: UTF8.self) + "…[truncated \(cutBytes) bytes]"
        #expect(value["out"] == .str(expected))
        #expect(value["nested"]?.array?.first?.object?["x"] == .str(expected))
    }

    @Test("a registered secret never reaches a row: detail, command, reason and note show [redacted]")
    func secretsRedacted() throws {
        let db = TempDatabase()
        let store = try db.store()
        store.addSecrets(["hunter2", "s3cr3t-token-value"])
        try store.beginRun(runId: "r", profile: "p", profileDigest: "d", command: ["curl", "-H", "Authorization: s3cr3t-token-value"],
                           detail: .object(["env": .object(["PASSWORD": .str("hunter2")])]))
        try store.record(runId: "r", kind: "worker.output", detail: .object(["line": .str("the password is hunter2!")]))
        _ = try store.recordDiff(runId: "r", content: [1], verdict: "rejected", reason: "file contains hunter2")
        let dump = RawSQL.rows(db.path, "SELECT detail FROM events").map { $0[0] }.joined()
            + RawSQL.rows(db.path, "SELECT command FROM runs").map { $0[0] }.joined()
            + RawSQL.rows(db.path, "SELECT reason FROM diffs").map { $0[0] }.joined()
        #expect(!dump.contains("hunter2") && !dump.contains("s3cr3t"))
        #expect(dump.contains("the password is [redacted]!"))
        #expect(try store.allRuns().first?.command == ["curl", "-H", "Authorization: [redacted]"])
    }
}

@Suite("SQLite audit store: concurrent writers and abandoned runs")
struct AuditConcurrencyTests {
    @Test("4 threads on 2 store instances appending 500 events each give gap-free seq and runSeq and a valid chain")
    func concurrentThreads() throws {
        let db = TempDatabase()
        let stores = [try db.store(), try db.store()]
        for t in 0..<4 { try stores[0].beginRun(runId: "t\(t)", profile: "p", profileDigest: "d", command: [], detail: .null) }
        let failures = FailureLog()
        let threads = (0..<4).map { t in
            TestThread {
                let store = stores[t % 2]
                for i in 0..<500 {
                    do {
                        if i % 50 == 49 {
                            try store.recordMany([(runId: nil, kind: "batch", detail: .number(i)), (runId: "t\(t)", kind: "batch", detail: .number(i))])
                        } else {
                            try store.record(runId: i % 3 == 0 ? nil : "t\(t)", kind: "tick", detail: .object(["t": .number(t), "i": .number(i)]))
                        }
                    } catch {
                        failures.add("\(error)")
                    }
                }
            }
        }
        threads.forEach { $0.start() }
        threads.forEach { $0.join() }
        #expect(failures.all == [])
        let events = try stores[1].allEvents()
        #expect(events.count == 4 + 4 * 510)
        expectGapFree(events)
        try expectIntact(stores[0].verifyChain(), events: 2044)
    }

    @Test("4 threads opening a brand-new file at once all succeed and apply each migration once")
    func concurrentFirstOpen() throws {
        let db = TempDatabase()
        let failures = FailureLog()
        let threads = (0..<4).map { t in
            TestThread {
                do {
                    let store = try db.store()
                    try store.record(runId: nil, kind: "opened", detail: .number(t))
                } catch {
                    failures.add("\(error)")
                }
            }
        }
        threads.forEach { $0.start() }
        threads.forEach { $0.join() }
        #expect(failures.all == [])
        #expect(RawSQL.scalar(db.path, "SELECT count(*) FROM schema_migrations") == String(AuditSchema.migrations.count))
        let store = try db.store()
        expectGapFree(try store.allEvents())
        #expect(try store.verifyChain().eventsChecked == 4)
    }

    @Test("runs whose supervisor is gone are marked abandoned once; live ones are left running")
    func abandoned() throws {
        let db = TempDatabase()
        let me = getpid()
        let live = try db.store(pid: me, start: ProcessIdentity.currentStartTime)
        // pid 0 is never a user process; and our own pid with another start time is a recycled pid.
        let dead = try db.store(pid: 0, start: 1)
        let recycled = try db.store(pid: me, start: ProcessIdentity.currentStartTime + 1)
        try live.beginRun(runId: "live", profile: "p", profileDigest: "d", command: [], detail: .null)
        try dead.beginRun(runId: "dead", profile: "p", profileDigest: "d", command: [], detail: .null)
        try recycled.beginRun(runId: "recycled", profile: "p", profileDigest: "d", command: [], detail: .null)
        try dead.beginRun(runId: "done", profile: "p", profileDigest: "d", command: [], detail: .null)
        try dead.finishRun(runId: "done", outcome: "exited", exitStatus: 0, detail: .null)

        let marked = try live.markAbandoned(isAlive: ProcessIdentity.isAlive)
        #expect(marked == ["dead", "recycled"])
        let states = Dictionary(uniqueKeysWithValues: try live.allRuns().map { ($0.runId, $0.state) })
        #expect(states == ["live": "running", "dead": "abandoned", "recycled": "abandoned", "done": "finished"])
        let events = try live.allEvents(kind: "run.abandoned")
        #expect(events.map(\.runId) == ["dead", "recycled"])
        #expect(events.first?.detailValue?.object?["supervisorPid"]?.exactInt64 == 0)
        #expect(try live.markAbandoned(isAlive: ProcessIdentity.isAlive) == [])
        #expect { try live.finishRun(runId: "dead", outcome: "exited", exitStatus: 0, detail: .null) }
            throws: { ($0 as? AuditError)?.message.contains("abandoned") == true }
        #expect(try live.verifyChain().isValid)
    }

    @Test("a process is alive only with its own start time")
    func processIdentity() {
        let start = ProcessIdentity.currentStartTime
        #expect(start > 0)
        #expect(ProcessIdentity.isAlive(pid: getpid(), startTime: start))
        #expect(!ProcessIdentity.isAlive(pid: getpid(), startTime: start + 1))
        #expect(!ProcessIdentity.isAlive(pid: 0, startTime: 0))
        #expect(!ProcessIdentity.isAlive(pid: Int32.max, startTime: 0))
    }
}

@Suite("Audit timestamps")
struct AuditClockTests {
    @Test("timestamps are RFC 3339 UTC with milliseconds", arguments: [
        (0, 5, "1970-01-01T00:00:00.005Z"),
        (1_764_076_766, 123, "2025-11-25T13:19:26.123Z"),
        (951_782_400, 999, "2000-02-29T00:00:00.999Z"),
    ])
    func format(seconds: Int, milliseconds: Int, expected: String) {
        #expect(AuditClock.format(seconds: seconds, milliseconds: milliseconds) == expected)
    }
}

@Suite("reading events by filter")
struct EventQueryTests {
    /// SQLite's plan for the events query `query` makes, as its detail lines.
    static func plan(_ path: String, _ query: AuditEventQuery) throws -> String {
        let db = try SQLiteAuditBackend.open(path: path, readOnly: true)
        let (sql, values) = SQLiteAuditBackend.eventQuery(query)
        let statement = try db.prepare("EXPLAIN QUERY PLAN " + sql, "plan")
        try statement.bind(values)
        var lines: [String] = []
        while try statement.step() { lines.append(statement.text(3)) }
        return lines.joined(separator: "; ")
    }

    @Test("a kind or run filter is answered from its index, not by reading every event after the cursor; the answers are the filtered events")
    func filtersUseIndexes() throws {
        let db = TempDatabase()
        let store = try db.store()
        let run = "01JTEST0000000000000000001"
        try store.beginRun(runId: run, profile: "default", profileDigest: "d", command: ["/bin/true"], detail: .null)
        for i in 0..<50 { try store.record(runId: nil, kind: "api.request", detail: .object(["i": .number(i)])) }
        try store.record(runId: run, kind: "worker.started", detail: .null)
        let kinds = try Self.plan(db.path, AuditEventQuery(since: 3, kind: "worker.started"))
        #expect(kinds.contains("events_kind"), "\(kinds)")
        let runs = try Self.plan(db.path, AuditEventQuery(runId: run, since: 3))
        #expect(runs.contains("events_run"), "\(runs)")
        let all = try Self.plan(db.path, AuditEventQuery(since: 3))
        #expect(!all.contains("events_kind") && !all.contains("events_run"), "the positive control: no filter, no index: \(all)")
        var seen: [String] = []
        try store.events(runId: nil, since: 0, kind: "worker.started") { seen.append($0.kind) }
        #expect(seen == ["worker.started"])
        seen = []
        try store.events(runId: run, since: 0, kind: nil) { seen.append($0.kind) }
        #expect(seen == ["run.created", "worker.started"])
        var count = 0
        try store.events(runId: nil, since: 10, kind: "api.request") { _ in count += 1 }
        #expect(count == 50 - 9, "since is the seq after which events count: run.created is 1, api.request 2 to 51")
    }
}
