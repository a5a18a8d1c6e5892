import NIOCore
import PostgresNIO
import StockadeAudit

/// The rows `stockade audit export` reads and `import` writes.
extension PostgresAuditBackend {
    /// Diffs per round trip: their content may be large, so fewer than the other rows.
    static let diffPageSize = 16

    /// One `REPEATABLE READ READ ONLY` snapshot, each table paged by its key.
    public func allRows(_ body: (AuditRow) throws -> Void) throws -> AuditChainHead? {
        try snapshot { (session) throws -> AuditChainHead? in
            try Self.pageRuns(session) { run in try body(.run(run)) }
            try Self.page("SELECT \(Self.bundleColumns) FROM bundles", key: "id", size: Self.pageSize, session, "read bundles") { (row) throws -> Int64 in
                let bundle = try Self.bundleRecord(row, session)
                try body(.bundle(bundle))
                return bundle.id
            }
            try Self.page("SELECT \(Self.diffColumns) FROM diffs", key: "id", size: Self.diffPageSize, session, "read diffs") { (row) throws -> Int64 in
                let diff = try Self.diffRecord(row, session)
                try body(.diff(diff))
                return diff.id
            }
            try Self.page("SELECT \(Self.eventColumns) FROM events", key: "seq", size: Self.pageSize, session, "read events") { (row) throws -> Int64 in
                let event = try Self.event(row, session)
                try body(.event(event))
                return event.seq
            }
            return try PostgresAuditTransaction.readHead(session)
        }
    }

    /// Every row of `select` in `key` order, `size` rows per query; `visit` returns each row's key.
    private static func page(_ select: String, key: String, size: Int, _ session: PostgresSession, _ doing: String,
                             _ visit: (PostgresRow) throws -> Int64) throws {
        var after: Int64 = 0
        while true {
            var binds = PostgresBindings()
            binds.append(after)
            let rows = try session.query("\(select) WHERE \(key) > $1 ORDER BY \(key) LIMIT \(size)", binds, doing)
            for row in rows { after = try visit(row) }
            if rows.count < size { return }
        }
    }

    static let bundleColumns = "id, runId, role, status, reason, files, bytes, manifestSha256, createdAt"

    static func bundleRecord(_ row: PostgresRow, _ session: PostgresSession) throws(AuditError) -> AuditBundleRecord {
        let (id, runId, role, status, reason, files, bytes, manifestSha256, createdAt) = try PostgresRows.decode(row, session) { row in
            try row.decode((Int64, String, String, String, String?, Int64, Int64, String?, String).self)
        }
        return AuditBundleRecord(id: id, runId: runId, role: role, status: status, reason: reason, files: files, bytes: bytes,
                                 manifestSha256: manifestSha256, createdAt: createdAt)
    }
}

extension PostgresAuditTransaction {
    public func rowCounts() throws(AuditError) -> AuditRowCounts {
        try flush()
        guard let row = try session.query("""
            SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM bundles), (SELECT count(*) FROM diffs), (SELECT count(*) FROM events)
            """, "count the rows of the trail").first else { return AuditRowCounts() }
        let (runs, bundles, diffs, events) = try PostgresRows.decode(row, session) { try $0.decode((Int64, Int64, Int64, Int64).self) }
        return AuditRowCounts(runs: runs, bundles: bundles, diffs: diffs, events: events)
    }

    /// The identity column takes the id given; its sequence is then moved past it, so later rows the
    /// ledger inserts get greater ids. (A sequence is not transactional: an import rolled back leaves
    /// it advanced, which only skips ids.)
    public func insertBundle(record bundle: AuditBundleRecord) throws(AuditError) {
        try flush()
        var binds = PostgresBindings()
        binds.append(bundle.id)
        binds.append(bundle.runId)
        binds.append(bundle.role)
        binds.append(bundle.status)
        binds.append(bundle.reason)
        binds.append(bundle.files)
        binds.append(bundle.bytes)
        binds.append(bundle.manifestSha256)
        binds.append(bundle.createdAt)
        try session.query("""
            INSERT INTO bundles (id, runId, role, status, reason, files, bytes, manifestSha256, createdAt)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
            """, binds, "insert bundle \(bundle.id) of run \(bundle.runId)")
        try advanceIdentity(table: "bundles", past: bundle.id)
    }

    public func insertDiff(record diff: DiffRecord) throws(AuditError) {
        try flush()
        var binds = PostgresBindings()
        binds.append(diff.id)
        binds.append(diff.runId)
        binds.append(diff.sha256)
        binds.append(diff.bytes)
        binds.append(ByteBuffer(bytes: diff.content))
        binds.append(diff.verdict)
        binds.append(diff.reason)
        binds.append(diff.state)
        binds.append(diff.decidedBy)
        binds.append(diff.note)
        binds.append(diff.decidedAt)
        binds.append(diff.appliedAt)
        binds.append(diff.createdAt)
        binds.append(diff.conflict?.file)
        binds.append(diff.conflict?.hunk)
        binds.append(diff.conflict?.reason)
        try session.query("""
            INSERT INTO diffs (id, runId, sha256, bytes, content, verdict, reason, state, decidedBy, note, decidedAt, appliedAt, createdAt,
                               conflictFile, conflictHunk, conflictReason)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
            """, binds, "insert diff \(diff.id) of run \(diff.runId)")
        try advanceIdentity(table: "diffs", past: diff.id)
    }

    private func advanceIdentity(table: String, past id: Int64) throws(AuditError) {
        var binds = PostgresBindings()
        binds.append(table)
        binds.append(id)
        // The import's ids only grow (`AuditImportReader` checks), so the last one set is the greatest.
        try session.query("SELECT setval(pg_get_serial_sequence($1, 'id'), $2)", binds, "move the id sequence of \(table) past \(id)")
    }
}
