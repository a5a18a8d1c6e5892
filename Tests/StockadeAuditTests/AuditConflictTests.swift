import Glibc
import StockadePolicy
import Testing
@testable import StockadeAudit
@testable import StockadeAuditSQLite

@Suite("SQLite audit store: diffs in conflict")
struct AuditConflictTests {
    func storeWithAcceptedDiff() throws -> (TempDatabase, SQLiteAuditStore, Int64) {
        let db = TempDatabase()
        let store = try db.store()
        try store.beginRun(runId: "r", profile: "p", profileDigest: "d", command: [], detail: .null)
        let id = try store.recordDiff(runId: "r", content: [1], verdict: "passed", reason: nil)
        _ = try store.decide(diffId: id, accept: true, actor: "alice", note: nil)
        return (db, store, id)
    }

    static let conflict = DiffConflict(file: "src/a.txt", hunk: "hunk 1 (@@ -1,3 +1,3 @@)", reason: "src/a.txt: line 2 differs")

    @Test("an accepted diff that did not apply is `conflict` with file, hunk and reason, and a diff.conflict event")
    func markConflict() throws {
        let (_, store, id) = try storeWithAcceptedDiff()
        try store.markConflict(diffId: id, conflict: Self.conflict, detail: .object(["workspace": .string("/ws")]))
        let diff = try #require(try store.diff(id: id))
        #expect(diff.state == "conflict" && diff.appliedAt == nil && diff.conflict == Self.conflict)
        #expect(try store.diffs(state: "conflict").map(\.id) == [id])
        #expect(try store.diffs(state: "accepted").isEmpty)
        let event = try #require(try store.allEvents(kind: "diff.conflict").first)
        let detail = try #require(event.detailValue?.object)
        #expect(detail["file"] == .str("src/a.txt") && detail["hunk"] == .str("hunk 1 (@@ -1,3 +1,3 @@)"))
        #expect(detail["workspace"] == .str("/ws") && detail["diffId"]?.exactInt64 == id)
        #expect(try store.allEvents().map(\.kind) == ["run.created", "diff.recorded", "review.decided", "diff.conflict"])
        // Only an accepted, unapplied diff can be in conflict, once per attempt.
        #expect { try store.markConflict(diffId: id, conflict: Self.conflict, detail: .null) }
            throws: { ($0 as? AuditError)?.code == .invalidState && ($0 as? AuditError)?.message.contains("is conflict") == true }
        #expect { try store.markApplied(diffId: id, detail: .null) } throws: { ($0 as? AuditError)?.code == .invalidState }
    }

    @Test("a diff in conflict can be accepted again and applied, which clears the conflict; the decision says where it came from")
    func retryFromConflict() throws {
        let (_, store, id) = try storeWithAcceptedDiff()
        try store.markConflict(diffId: id, conflict: Self.conflict, detail: .null)
        let again = try store.decide(diffId: id, accept: true, actor: "bob", note: "workspace fixed")
        #expect(again.state == "accepted" && again.decidedBy == "bob")
        try store.markApplied(diffId: id, detail: .null)
        let diff = try #require(try store.diff(id: id))
        #expect(diff.state == "accepted" && diff.appliedAt != nil && diff.conflict == nil)
        let froms = try store.allEvents(kind: "review.decided").map { $0.detailValue?.object?["from"] }
        #expect(froms == [.str("pending"), .str("conflict")])
        #expect { _ = try store.decide(diffId: id, accept: false, actor: "carol", note: nil) }
            throws: { ($0 as? AuditError)?.message.contains("already accepted") == true }
    }

    @Test("a diff in conflict can be rejected; it keeps the conflict that led there and can no longer be applied")
    func rejectFromConflict() throws {
        let (_, store, id) = try storeWithAcceptedDiff()
        try store.markConflict(diffId: id, conflict: Self.conflict, detail: .null)
        let rejected = try store.decide(diffId: id, accept: false, actor: "carol", note: "stale")
        #expect(rejected.state == "rejected" && rejected.conflict == Self.conflict)
        #expect { _ = try store.decide(diffId: id, accept: true, actor: "dave", note: nil) }
            throws: { ($0 as? AuditError)?.message.contains("already rejected") == true }
        #expect { try store.markApplied(diffId: id, detail: .null) } throws: { ($0 as? AuditError)?.code == .invalidState }
    }

    @Test("a database made before conflicts existed is migrated once, its diffs and ids kept, and then accepts the new state")
    func migrationKeepsDiffs() throws {
        let db = TempDatabase()
        RawSQL.execute(db.path, AuditSchema.migrations[0].sql + """
            ;CREATE TABLE schema_migrations (name TEXT PRIMARY KEY NOT NULL, appliedAt TEXT NOT NULL);
            INSERT INTO schema_migrations VALUES ('0001-initial', '2025-01-01T00:00:00.000Z');
            INSERT INTO runs VALUES ('old', 'p', 'd', '[]', 'finished', 'exited', 0, '2025-01-01T00:00:00.000Z', NULL, 1, 1);
            INSERT INTO diffs (id, runId, sha256, bytes, content, verdict, reason, state, createdAt)
                VALUES (7, 'old', 'x', 1, X'01', 'passed', NULL, 'pending', '2025-01-01T00:00:00.000Z');
            """)
        for _ in 0..<2 { _ = try db.store() }
        let names = RawSQL.rows(db.path, "SELECT name FROM schema_migrations ORDER BY name").map { $0[0] }
        #expect(names == AuditSchema.migrations.map(\.name))
        let store = try db.store()
        let old = try #require(try store.diff(id: 7))
        #expect(old.state == "pending" && old.content == [1] && old.conflict == nil)
        _ = try store.decide(diffId: 7, accept: true, actor: "alice", note: nil)
        try store.markConflict(diffId: 7, conflict: Self.conflict, detail: .null)
        #expect(try store.diff(id: 7)?.state == "conflict")
        #expect(RawSQL.scalar(db.path, "SELECT count(*) FROM sqlite_master WHERE name = 'diffs_state'") == "1")
    }
}
