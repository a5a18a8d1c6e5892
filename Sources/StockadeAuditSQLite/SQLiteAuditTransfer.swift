import StockadeAudit

/// The rows `stockade audit export` reads and `import` writes.
extension SQLiteAuditBackend {
    /// One read transaction on a private read-only connection: WAL readers never block the writers,
    /// and the statements step one row at a time.
    public func allRows(_ body: (AuditRow) throws -> Void) throws -> AuditChainHead? {
        let db = try Self.open(path: path, readOnly: true)
        return try db.readTransaction {
            let runs = try db.prepare("""
                SELECT runId, profile, profileDigest, command, state, outcome, exitStatus, createdAt, endedAt, supervisorPid, supervisorStart,
                       \(hasHostColumn ? "hostId" : "NULL")
                FROM runs ORDER BY createdAt, runId
                """, "read runs")
            while try runs.step() { try body(.run(try runRecord(runs))) }
            let bundles = try db.prepare("SELECT \(Self.bundleColumns) FROM bundles ORDER BY id", "read bundles")
            while try bundles.step() { try body(.bundle(Self.bundleRecord(bundles))) }
            let diffs = try db.prepare("SELECT \(Self.diffColumns) FROM diffs ORDER BY id", "read diffs")
            while try diffs.step() { try body(.diff(Self.diffRecord(diffs))) }
            let events = try db.prepare("SELECT \(Self.eventColumns) FROM events ORDER BY seq", "read events")
            while try events.step() { try body(.event(Self.event(events))) }
            return try SQLiteAuditTransaction.readHead(db)
        }
    }

    static let bundleColumns = "id, runId, role, status, reason, files, bytes, manifestSha256, createdAt"

    static func bundleRecord(_ s: SQLiteStatement) -> AuditBundleRecord {
        AuditBundleRecord(id: s.int64(0), runId: s.text(1), role: s.text(2), status: s.text(3), reason: s.optionalText(4), files: s.int64(5),
                          bytes: s.int64(6), manifestSha256: s.optionalText(7), createdAt: s.text(8))
    }
}

extension SQLiteAuditTransaction {
    public func rowCounts() throws(AuditError) -> AuditRowCounts {
        try db.first("""
            SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM bundles), (SELECT count(*) FROM diffs), (SELECT count(*) FROM events)
            """, [], "count the rows of the trail") { AuditRowCounts(runs: $0.int64(0), bundles: $0.int64(1), diffs: $0.int64(2), events: $0.int64(3)) }
            ?? AuditRowCounts()
    }

    /// An `INTEGER PRIMARY KEY` takes the id given; later rows get ids above the greatest.
    public func insertBundle(record bundle: AuditBundleRecord) throws(AuditError) {
        try db.run("""
            INSERT INTO bundles (id, runId, role, status, reason, files, bytes, manifestSha256, createdAt) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            """, [.int(bundle.id), .text(bundle.runId), .text(bundle.role), .text(bundle.status), bundle.reason.sqlite, .int(bundle.files),
                  .int(bundle.bytes), bundle.manifestSha256.sqlite, .text(bundle.createdAt)],
            "insert bundle \(bundle.id) of run \(bundle.runId)")
    }

    public func insertDiff(record diff: DiffRecord) throws(AuditError) {
        try db.run("""
            INSERT INTO diffs (id, runId, sha256, bytes, content, verdict, reason, state, decidedBy, note, decidedAt, appliedAt, createdAt,
                               conflictFile, conflictHunk, conflictReason)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """, [.int(diff.id), .text(diff.runId), .text(diff.sha256), .int(diff.bytes), .blob(diff.content), .text(diff.verdict),
                  diff.reason.sqlite, .text(diff.state), diff.decidedBy.sqlite, diff.note.sqlite, diff.decidedAt.sqlite, diff.appliedAt.sqlite,
                  .text(diff.createdAt), (diff.conflict?.file).sqlite, (diff.conflict?.hunk).sqlite, (diff.conflict?.reason).sqlite],
            "insert diff \(diff.id) of run \(diff.runId)")
    }
}
