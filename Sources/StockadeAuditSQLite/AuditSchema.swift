import StockadeAudit

/// The audit schema as named, forward-only migrations. A migration, once released, never changes:
/// a new column or table is a new entry at the end. Each applied name is recorded in
/// `schema_migrations`, so opening an up-to-date database changes nothing.
enum AuditSchema {
    struct Migration {
        let name: String
        let sql: String
    }

    static let migrations: [Migration] = [
        Migration(name: "0001-initial", sql: """
            CREATE TABLE runs (
                runId TEXT PRIMARY KEY NOT NULL,
                profile TEXT NOT NULL,
                profileDigest TEXT NOT NULL,
                command TEXT NOT NULL,
                state TEXT NOT NULL CHECK (state IN ('running', 'finished', 'abandoned')),
                outcome TEXT,
                exitStatus INTEGER,
                createdAt TEXT NOT NULL,
                endedAt TEXT,
                supervisorPid INTEGER NOT NULL,
                supervisorStart INTEGER NOT NULL
            );
            CREATE INDEX runs_state ON runs (state);

            CREATE TABLE events (
                seq INTEGER PRIMARY KEY NOT NULL,
                runId TEXT REFERENCES runs (runId),
                runSeq INTEGER NOT NULL,
                kind TEXT NOT NULL,
                at TEXT NOT NULL,
                detail TEXT NOT NULL,
                prevHash TEXT NOT NULL,
                hash TEXT NOT NULL
            );
            CREATE INDEX events_run ON events (runId, runSeq);
            CREATE INDEX events_kind ON events (kind, seq);

            -- The last appended event: lets verification notice rows cut from the end of the chain.
            CREATE TABLE chain_head (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                seq INTEGER NOT NULL,
                hash TEXT NOT NULL
            );
            INSERT INTO chain_head (id, seq, hash) VALUES (1, 0, '\(AuditChain.genesisHash)');

            CREATE TABLE bundles (
                id INTEGER PRIMARY KEY NOT NULL,
                runId TEXT NOT NULL REFERENCES runs (runId),
                role TEXT NOT NULL CHECK (role IN ('request', 'result')),
                status TEXT NOT NULL CHECK (status IN ('accepted', 'rejected')),
                reason TEXT,
                files INTEGER NOT NULL,
                bytes INTEGER NOT NULL,
                manifestSha256 TEXT,
                createdAt TEXT NOT NULL
            );
            CREATE INDEX bundles_run ON bundles (runId);

            CREATE TABLE diffs (
                id INTEGER PRIMARY KEY NOT NULL,
                runId TEXT NOT NULL REFERENCES runs (runId),
                sha256 TEXT NOT NULL,
                bytes INTEGER NOT NULL,
                content BLOB NOT NULL,
                verdict TEXT NOT NULL CHECK (verdict IN ('passed', 'rejected')),
                reason TEXT,
                state TEXT NOT NULL CHECK (state IN ('pending', 'accepted', 'rejected')),
                decidedBy TEXT,
                note TEXT,
                decidedAt TEXT,
                appliedAt TEXT,
                createdAt TEXT NOT NULL
            );
            CREATE INDEX diffs_state ON diffs (state, id);
            """),
        // A diff whose application failed is `conflict`, with the file and hunk that did not apply; SQLite
        // cannot widen a CHECK constraint in place, so the table is rebuilt (same rows, same ids).
        Migration(name: "0002-diff-conflict", sql: """
            CREATE TABLE diffs_0002 (
                id INTEGER PRIMARY KEY NOT NULL,
                runId TEXT NOT NULL REFERENCES runs (runId),
                sha256 TEXT NOT NULL,
                bytes INTEGER NOT NULL,
                content BLOB NOT NULL,
                verdict TEXT NOT NULL CHECK (verdict IN ('passed', 'rejected')),
                reason TEXT,
                state TEXT NOT NULL CHECK (state IN ('pending', 'accepted', 'rejected', 'conflict')),
                decidedBy TEXT,
                note TEXT,
                decidedAt TEXT,
                appliedAt TEXT,
                createdAt TEXT NOT NULL,
                conflictFile TEXT,
                conflictHunk TEXT,
                conflictReason TEXT
            );
            INSERT INTO diffs_0002 (id, runId, sha256, bytes, content, verdict, reason, state, decidedBy, note, decidedAt, appliedAt, createdAt)
                SELECT id, runId, sha256, bytes, content, verdict, reason, state, decidedBy, note, decidedAt, appliedAt, createdAt FROM diffs;
            DROP TABLE diffs;
            ALTER TABLE diffs_0002 RENAME TO diffs;
            CREATE INDEX diffs_state ON diffs (state, id);
            """),
        // The host that began each run (`HostIdentity`), so that hosts sharing a store judge only their
        // own runs abandoned. Runs recorded before it stay NULL: the ledger counts them as this host's.
        Migration(name: "0003-run-host", sql: "ALTER TABLE runs ADD COLUMN hostId TEXT"),
    ]

    /// Creates or updates the schema. Runs under `BEGIN IMMEDIATE`, so two processes opening a new
    /// file at once apply each migration once.
    static func migrate(_ db: SQLiteConnection) throws(AuditError) {
        try db.immediateTransaction { () throws(AuditError) in
            try db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY NOT NULL, appliedAt TEXT NOT NULL)",
                           "create the schema_migrations table")
            var applied: Set<String> = []
            try db.withStatement("SELECT name FROM schema_migrations", [], "read the applied migrations") { (s) throws(AuditError) in
                while try s.step() { applied.insert(s.text(0)) }
            }
            let known = Set(migrations.map(\.name))
            if let unknown = applied.subtracting(known).sorted().first {
                throw AuditError(.migration, path: db.path,
                                 "the audit database has migration \(unknown), which this Stockade does not know: it was written by a newer version; use that version, or another --state-dir")
            }
            for migration in migrations where !applied.contains(migration.name) {
                do throws(AuditError) {
                    try db.execute(migration.sql, "apply migration \(migration.name)")
                } catch {
                    throw AuditError(.migration, path: db.path, "\(error.message); the database was left unchanged")
                }
                try db.run("INSERT INTO schema_migrations (name, appliedAt) VALUES (?, ?)",
                           [.text(migration.name), .text(AuditClock.now())], "record migration \(migration.name)")
            }
        }
    }
}
