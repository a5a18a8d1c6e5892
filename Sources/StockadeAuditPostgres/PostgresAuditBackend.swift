import Logging
import NIOCore
import PostgresNIO
import StockadeAudit
import StockadePolicy

/// The audit store's rows in one PostgreSQL database, shared by any number of supervisors on any
/// number of hosts.
///
/// Writers: every write transaction is `BEGIN` (READ COMMITTED) and then, as its first statement,
/// `pg_advisory_xact_lock(writerLockKey)`: one lock for the whole database, held until COMMIT or
/// ROLLBACK (and released by the server when a writer's connection dies mid-transaction, whose
/// writes are then rolled back). Each later statement of the transaction takes a fresh snapshot, so
/// the ledger reads the chain head committed by the previous lock holder: appends from every thread,
/// process and host are serialized and the chain is one line. An advisory lock rather than
/// `SELECT … FOR UPDATE` on `chain_head`: it also excludes writers when that row is missing (a
/// tampered store), and it orders migrations with appends.
///
/// Durability: a `durable` commit sets `synchronous_commit = on` for its transaction (the commit
/// returns once WAL is flushed, with every earlier commit); the others set it `off` (a server crash
/// may lose the newest of them, never leave the store inconsistent), like SQLite's NORMAL/FULL.
///
/// Readers (`events`, `runs`, `scanChain`) use a `REPEATABLE READ READ ONLY` transaction on a
/// connection of their own: one snapshot, no writers' lock, and their bodies may write through the
/// ledger on another connection. They page through the rows by key, so memory stays bounded.
///
/// Connections come from a bounded pool (`PostgresSessionPool`). A server that cannot be reached
/// fails the call with `.unreachable`; nothing is retried behind the ledger's back.
public final class PostgresAuditBackend: AuditBackend {
    public let url: PostgresStoreURL
    public var location: String { url.description }
    let pool: PostgresSessionPool

    /// Rows per round trip when streaming events or runs.
    static let pageSize = 500
    /// How long a writer waits for the store's lock before failing with `.busy`.
    public static let lockTimeoutSeconds = 10
    public static let defaultMaxConnections = PostgresStoreURL.defaultConnections

    /// Connects to the store at `url` (the password resolved from `environment` as
    /// `PostgresStoreURL.resolvingPassword` says) and brings its schema up to date. `logger` receives
    /// PostgresNIO's connection events (none by default); the password is never in them.
    /// `migrate` false (the read-only commands): nothing is created or changed; a store whose schema
    /// is not up to date is refused, naming what is missing.
    public init(url: PostgresStoreURL, environment: [String: String], maxConnections: Int = defaultMaxConnections,
                logger: Logger? = nil, migrate: Bool = true) throws(AuditError) {
        guard maxConnections >= 1 else {
            throw AuditError(.invalidArgument, path: url.description, "maxConnections must be at least 1, not \(maxConnections)")
        }
        self.url = url
        let password = try url.resolvingPassword(environment: environment)
        pool = PostgresSessionPool(url: url, password: password, capacity: maxConnections, waitSeconds: Self.lockTimeoutSeconds,
                                   logger: logger ?? PostgresSessionPool.silentLogger)
        try pool.withSessionTyped { (session) throws(AuditError) in
            if migrate { try PostgresAuditSchema.migrate(session) } else { try PostgresAuditSchema.requireCurrent(session) }
        }
    }

    deinit { pool.shutdown() }

    // MARK: AuditBackend

    /// A durable commit: PostgreSQL already shares the flush of commits made at once, and shows none
    /// before it is flushed.
    public func withGroupCommittedTransaction<T: Sendable>(_ body: (PostgresAuditTransaction) throws(AuditError) -> T) throws(AuditError) -> T {
        try withTransaction(durable: true, body)
    }

    public func withTransaction<T: Sendable>(durable: Bool,
                                             _ body: (PostgresAuditTransaction) throws(AuditError) -> T) throws(AuditError) -> T {
        try pool.withSessionTyped { (session) throws(AuditError) -> T in
            try session.query("BEGIN", "begin a write transaction")
            let value: T
            do throws(AuditError) {
                var binds = PostgresBindings()
                binds.append(durable ? "on" : "off")
                binds.append("\(Self.lockTimeoutSeconds)s")
                binds.append(PostgresAuditSchema.writerLockKey)
                try session.query("""
                    SELECT set_config('synchronous_commit', $1, true), set_config('lock_timeout', $2, true), pg_advisory_xact_lock($3)
                    """, binds, "take the store's writer lock")
                let transaction = PostgresAuditTransaction(session: session)
                value = try body(transaction)
                try transaction.flush()
            } catch {
                PostgresTransactions.rollback(session)
                throw error
            }
            do throws(AuditError) {
                try session.query("COMMIT", "commit")
            } catch {
                // The server may or may not have committed: this connection's state is unknown.
                session.discard()
                throw AuditError(error.code, path: error.path,
                                 "\(error.message); whether this transaction was committed is unknown: `stockade audit verify` shows what the store holds")
            }
            return value
        }
    }

    public func diff(id: Int64) throws(AuditError) -> DiffRecord? {
        try pool.withSessionTyped { (session) throws(AuditError) -> DiffRecord? in try Self.readDiff(session, id: id) }
    }

    public func diffs(state wanted: DiffState?) throws(AuditError) -> [DiffRecord] {
        try pool.withSessionTyped { (session) throws(AuditError) -> [DiffRecord] in
            var binds = PostgresBindings()
            binds.append(wanted?.rawValue)
            return try session.query("SELECT \(Self.diffColumns) FROM diffs WHERE $1::text IS NULL OR state = $1 ORDER BY id", binds, "list diffs")
                .map { (row) throws(AuditError) in try Self.diffRecord(row, session) }
        }
    }

    public func diffs(runId: String) throws(AuditError) -> [DiffRecord] {
        try pool.withSessionTyped { (session) throws(AuditError) -> [DiffRecord] in
            var binds = PostgresBindings()
            binds.append(runId)
            return try session.query("SELECT \(Self.diffColumns) FROM diffs WHERE runId = $1 ORDER BY id", binds, "list the diffs of run \(runId)")
                .map { (row) throws(AuditError) in try Self.diffRecord(row, session) }
        }
    }

    public func events(_ query: AuditEventQuery, _ body: (AuditEvent) throws -> Void) throws {
        try snapshot { (session) throws in
            var after = query.since ?? 0
            while true {
                var binds = PostgresBindings()
                binds.append(after)
                var sql = "SELECT \(Self.eventColumns) FROM events WHERE seq > $1"
                if let runId = query.runId { binds.append(runId); sql += " AND runId = $\(binds.count)" }
                if let kind = query.kind { binds.append(kind); sql += " AND kind = $\(binds.count)" }
                let rows = try session.query(sql + " ORDER BY seq LIMIT \(Self.pageSize)", binds, "read events")
                for row in rows {
                    let event = try Self.event(row, session)
                    try body(event)
                    after = event.seq
                }
                if rows.count < Self.pageSize { return }
            }
        }
    }

    public func runs(_ body: (AuditRunRecord) throws -> Void) throws {
        try snapshot { (session) throws in try Self.pageRuns(session, body) }
    }

    /// Every run in creation order (`createdAt`, then `runId`), a page at a time, in the session's snapshot.
    static func pageRuns(_ session: PostgresSession, _ body: (AuditRunRecord) throws -> Void) throws {
        var after: (createdAt: String, runId: String)?
        while true {
            var binds = PostgresBindings()
            var sql = "SELECT \(runColumns) FROM runs"
            if let after {
                binds.append(after.createdAt)
                binds.append(after.runId)
                sql += " WHERE (createdAt, runId) > ($1, $2)"
            }
            let rows = try session.query(sql + " ORDER BY createdAt, runId LIMIT \(pageSize)", binds, "read runs")
            for row in rows {
                let run = try runRecord(row, session)
                try body(run)
                after = (run.createdAt, run.runId)
            }
            if rows.count < pageSize { return }
        }
    }

    public func scanChain(_ visit: (AuditEvent) -> Bool) throws(AuditError) -> AuditChainHead? {
        do {
            return try snapshot { (session) throws(AuditError) -> AuditChainHead? in
                var after: Int64 = 0
                while true {
                    var binds = PostgresBindings()
                    binds.append(after)
                    let rows = try session.query("SELECT \(Self.eventColumns) FROM events WHERE seq > $1 ORDER BY seq LIMIT \(Self.pageSize)",
                                                 binds, "read events")
                    for row in rows {
                        let event = try Self.event(row, session)
                        if !visit(event) { return nil }
                        after = event.seq
                    }
                    if rows.count < Self.pageSize { break }
                }
                return try PostgresAuditTransaction.readHead(session)
            }
        } catch let error as AuditError {
            throw error
        } catch {
            throw AuditError(.postgres, path: location, "cannot verify the chain: \(error)")
        }
    }

    /// Runs `body` in one `REPEATABLE READ READ ONLY` transaction on a connection of its own.
    func snapshot<T>(_ body: (PostgresSession) throws -> T) throws -> T {
        try pool.withSession { session in
            try session.query("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", "begin a read snapshot")
            let value: T
            do {
                value = try body(session)
            } catch {
                PostgresTransactions.rollback(session)
                throw error
            }
            try session.query("COMMIT", "end the read snapshot")
            return value
        }
    }

    // MARK: rows

    static let eventColumns = "seq, runId, runSeq, kind, at, detail, prevHash, hash"

    static let runColumns = """
        runId, profile, profileDigest, command, state, outcome, exitStatus, createdAt, endedAt, supervisorPid, supervisorStart, hostId
        """

    static let diffColumns = """
        id, runId, sha256, bytes, content, verdict, reason, state, decidedBy, note, decidedAt, appliedAt, createdAt,
        conflictFile, conflictHunk, conflictReason
        """

    static func readDiff(_ session: PostgresSession, id: Int64) throws(AuditError) -> DiffRecord? {
        var binds = PostgresBindings()
        binds.append(id)
        return try session.query("SELECT \(diffColumns) FROM diffs WHERE id = $1", binds, "read diff \(id)").first
            .map { (row) throws(AuditError) in try diffRecord(row, session) }
    }

    static func diffRecord(_ row: PostgresRow, _ session: PostgresSession) throws(AuditError) -> DiffRecord {
        let (head, tail) = try PostgresRows.decode(row, session) { row in
            (try row.decode((Int64, String, String, Int64, ByteBuffer, String, String?, String).self),
             try row.decode((String?, String?, String?, String?, String, String?, String?, String?).self, startingAt: 8))
        }
        let (id, runId, sha256, bytes, content, verdict, reason, state) = head
        let (decidedBy, note, decidedAt, appliedAt, createdAt, conflictFile, conflictHunk, conflictReason) = tail
        return DiffRecord(id: id, runId: runId, sha256: sha256, bytes: bytes, content: Array(content.readableBytesView), verdict: verdict,
                          reason: reason, state: state, decidedBy: decidedBy, note: note, decidedAt: decidedAt, appliedAt: appliedAt,
                          createdAt: createdAt, conflict: conflictReason.map { DiffConflict(file: conflictFile, hunk: conflictHunk, reason: $0) })
    }

    static func event(_ row: PostgresRow, _ session: PostgresSession) throws(AuditError) -> AuditEvent {
        let (seq, runId, runSeq, kind, at, detail, prevHash, hash) = try PostgresRows.decode(row, session) { row in
            try row.decode((Int64, String?, Int64, String, String, String, String, String).self)
        }
        return AuditEvent(seq: seq, runId: runId, runSeq: runSeq, kind: kind, at: at, detail: detail, prevHash: prevHash, hash: hash)
    }

    static func runRecord(_ row: PostgresRow, _ session: PostgresSession) throws(AuditError) -> AuditRunRecord {
        let (head, tail) = try PostgresRows.decode(row, session) { row in
            (try row.decode((String, String, String, String, String, String?).self),
             try row.decode((Int32?, String, String?, Int32, Int64, String?).self, startingAt: 6))
        }
        let (runId, profile, profileDigest, commandText, state, outcome) = head
        let (exitStatus, createdAt, endedAt, supervisorPid, supervisorStart, hostId) = tail
        guard let parsed = try? StrictJSON.parse(Array(commandText.utf8), limits: .init(maxBytes: Int.max, maxDepth: 4)),
              let items = parsed.array else {
            throw AuditError(.corruptRow, path: session.store, "the command of run \(runId) is not a JSON array; the row was edited by hand: run `stockade audit verify`")
        }
        return AuditRunRecord(runId: runId, profile: profile, profileDigest: profileDigest, command: items.map { $0.string ?? $0.serialized() },
                              state: state, outcome: outcome, exitStatus: exitStatus, createdAt: createdAt, endedAt: endedAt,
                              supervisorPid: supervisorPid, supervisorStart: UInt64(bitPattern: supervisorStart), hostId: hostId)
    }
}

/// One write transaction on a session of the backend's pool, holding the store's writer lock; valid
/// only inside `PostgresAuditBackend.withTransaction`'s body.
///
/// Events are not sent one by one: `insertEvent` queues them and they go as multi-row INSERTs before
/// the transaction's next statement of any other kind (so every read sees them) and before COMMIT.
/// A batch of 1000 events is then a few round trips instead of 1000.
public struct PostgresAuditTransaction: AuditTransaction {
    let session: PostgresSession
    private let queued: QueuedEvents

    init(session: PostgresSession) {
        self.session = session
        queued = QueuedEvents()
    }

    /// Events inserted but not yet sent. The transaction is used by one thread, inside its body.
    final class QueuedEvents {
        var events: [AuditEvent] = []
    }

    /// Rows per INSERT: 8 parameters each, well under the protocol's 65535.
    static let rowsPerInsert = 1000

    /// Sends the queued events.
    func flush() throws(AuditError) {
        guard !queued.events.isEmpty else { return }
        let events = queued.events
        queued.events = []
        var start = 0
        while start < events.count {
            let chunk = events[start..<min(start + Self.rowsPerInsert, events.count)]
            var binds = PostgresBindings(capacity: chunk.count * 8)
            var values: [String] = []
            values.reserveCapacity(chunk.count)
            for event in chunk {
                let first = binds.count + 1
                values.append("(" + (first..<first + 8).map { "$\($0)" }.joined(separator: ", ") + ")")
                binds.append(event.seq)
                binds.append(event.runId)
                binds.append(event.runSeq)
                binds.append(event.kind)
                binds.append(event.at)
                binds.append(event.detail)
                binds.append(event.prevHash)
                binds.append(event.hash)
            }
            let kinds = Set(chunk.map(\.kind)).sorted().joined(separator: ", ")
            try session.query("INSERT INTO events (seq, runId, runSeq, kind, at, detail, prevHash, hash) VALUES " + values.joined(separator: ", "),
                              binds, "append \(chunk.count == 1 ? "event" : "\(chunk.count) events") \(kinds)")
            start += chunk.count
        }
    }

    public func chainHead() throws(AuditError) -> AuditChainHead? {
        try flush()
        return try Self.readHead(session)
    }

    static func readHead(_ session: PostgresSession) throws(AuditError) -> AuditChainHead? {
        try session.query("SELECT seq, hash FROM chain_head WHERE id = 1", "read the chain head").first.map { (row) throws(AuditError) in
            let (seq, hash) = try PostgresRows.decode(row, session) { try $0.decode((Int64, String).self) }
            return AuditChainHead(seq: seq, hash: hash)
        }
    }

    public func setChainHead(_ head: AuditChainHead) throws(AuditError) {
        try flush()
        var binds = PostgresBindings()
        binds.append(head.seq)
        binds.append(head.hash)
        try session.query("UPDATE chain_head SET seq = $1, hash = $2 WHERE id = 1", binds, "advance the chain head")
    }

    public func lastRunSeq(runId: String?) throws(AuditError) -> Int64 {
        try flush()
        var binds = PostgresBindings()
        let sql: String
        if let runId {
            binds.append(runId)
            sql = "SELECT coalesce(max(runSeq), 0) FROM events WHERE runId = $1"
        } else {
            sql = "SELECT coalesce(max(runSeq), 0) FROM events WHERE runId IS NULL"
        }
        guard let row = try session.query(sql, binds, "read the run's last event").first else { return 0 }
        return try PostgresRows.decode(row, Int64.self, session)
    }

    public func insertEvent(_ event: AuditEvent) throws(AuditError) {
        queued.events.append(event)
        // A long run of inserts (an import) goes out a full INSERT at a time, never all held here.
        if queued.events.count >= Self.rowsPerInsert { try flush() }
    }

    public func runState(runId: String) throws(AuditError) -> AuditRunState? {
        try flush()
        var binds = PostgresBindings()
        binds.append(runId)
        guard let row = try session.query("SELECT state FROM runs WHERE runId = $1", binds, "read run \(runId)").first else { return nil }
        let text = try PostgresRows.decode(row, String.self, session)
        guard let state = AuditRunState(rawValue: text) else {
            throw AuditError(.corruptRow, path: session.store, "run \(runId) has the unknown state \(text); the row was edited by hand")
        }
        return state
    }

    public func insertRun(_ run: AuditRunRecord) throws(AuditError) {
        try flush()
        var binds = PostgresBindings()
        binds.append(run.runId)
        binds.append(run.profile)
        binds.append(run.profileDigest)
        binds.append(JSONValue.array(run.command.map { .string($0) }).serialized())
        binds.append(run.state)
        binds.append(run.outcome)
        binds.append(run.exitStatus)
        binds.append(run.createdAt)
        binds.append(run.endedAt)
        binds.append(run.supervisorPid)
        binds.append(Int64(bitPattern: run.supervisorStart))
        binds.append(run.hostId)
        try session.query("""
            INSERT INTO runs (runId, profile, profileDigest, command, state, outcome, exitStatus, createdAt, endedAt,
                              supervisorPid, supervisorStart, hostId)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
            """, binds, "insert run \(run.runId)")
    }

    public func endRun(runId: String, _ ending: AuditRunEnding) throws(AuditError) {
        try flush()
        var binds = PostgresBindings()
        binds.append(ending.state.rawValue)
        binds.append(ending.outcome)
        binds.append(ending.exitStatus)
        binds.append(ending.endedAt)
        binds.append(runId)
        try session.query("UPDATE runs SET state = $1, outcome = $2, exitStatus = $3, endedAt = $4 WHERE runId = $5", binds, "end run \(runId)")
    }

    public func runningRuns() throws(AuditError) -> [AuditRunOwner] {
        try flush()
        return try session.query("SELECT runId, supervisorPid, supervisorStart, hostId FROM runs WHERE state = 'running' ORDER BY createdAt, runId",
                          "list running runs").map { (row) throws(AuditError) in
            let (runId, pid, start, hostId) = try PostgresRows.decode(row, session) { try $0.decode((String, Int32, Int64, String?).self) }
            return AuditRunOwner(runId: runId, supervisorPid: pid, supervisorStart: UInt64(bitPattern: start), hostId: hostId)
        }
    }

    public func insertBundle(_ bundle: AuditBundleRow) throws(AuditError) -> Int64 {
        try flush()
        var binds = PostgresBindings()
        binds.append(bundle.runId)
        binds.append(bundle.role.rawValue)
        binds.append(bundle.status.rawValue)
        binds.append(bundle.reason)
        binds.append(bundle.files)
        binds.append(bundle.bytes)
        binds.append(bundle.manifestSha256)
        binds.append(bundle.createdAt)
        return try returnedId(session.query("""
            INSERT INTO bundles (runId, role, status, reason, files, bytes, manifestSha256, createdAt)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id
            """, binds, "insert the \(bundle.role.rawValue) bundle of run \(bundle.runId)"))
    }

    public func insertDiff(_ diff: AuditDiffRow) throws(AuditError) -> Int64 {
        try flush()
        var binds = PostgresBindings()
        binds.append(diff.runId)
        binds.append(diff.sha256)
        binds.append(Int64(diff.content.count))
        binds.append(ByteBuffer(bytes: diff.content))
        binds.append(diff.verdict.rawValue)
        binds.append(diff.reason)
        binds.append(diff.state.rawValue)
        binds.append(diff.decidedBy)
        binds.append(diff.decidedAt)
        binds.append(diff.createdAt)
        return try returnedId(session.query("""
            INSERT INTO diffs (runId, sha256, bytes, content, verdict, reason, state, decidedBy, decidedAt, createdAt)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id
            """, binds, "insert the diff of run \(diff.runId)"))
    }

    private func returnedId(_ rows: [PostgresRow]) throws(AuditError) -> Int64 {
        guard let row = rows.first else {
            throw AuditError(.postgres, path: session.store, "the server returned no id for the inserted row")
        }
        return try PostgresRows.decode(row, Int64.self, session)
    }

    public func diff(id: Int64) throws(AuditError) -> DiffRecord? {
        try flush()
        return try PostgresAuditBackend.readDiff(session, id: id)
    }

    public func updateDiff(_ diff: DiffRecord) throws(AuditError) {
        try flush()
        var binds = PostgresBindings()
        binds.append(diff.state)
        binds.append(diff.decidedBy)
        binds.append(diff.note)
        binds.append(diff.decidedAt)
        binds.append(diff.appliedAt)
        binds.append(diff.conflict?.file)
        binds.append(diff.conflict?.hunk)
        binds.append(diff.conflict?.reason)
        binds.append(diff.id)
        try session.query("""
            UPDATE diffs SET state = $1, decidedBy = $2, note = $3, decidedAt = $4, appliedAt = $5,
                             conflictFile = $6, conflictHunk = $7, conflictReason = $8
            WHERE id = $9
            """, binds, "update diff \(diff.id)")
    }
}

/// Decoding rows into the ledger's values, failing as `.corruptRow` naming the column.
enum PostgresRows {
    static func decode<T>(_ row: PostgresRow, _ session: PostgresSession, _ body: (PostgresRow) throws -> T) throws(AuditError) -> T {
        do {
            return try body(row)
        } catch {
            throw PostgresErrors.map(error, doing: "read a row", store: session.store)
        }
    }

    static func decode<T: PostgresDecodable>(_ row: PostgresRow, _ type: T.Type, _ session: PostgresSession) throws(AuditError) -> T {
        try decode(row, session) { try $0.decode(T.self) }
    }
}

extension PostgresRow {
    /// Columns `start…` of the row as a tuple: `decode` takes all columns from the first, and the
    /// variadic decoder cannot take a tuple longer than the row; this decodes a window of it.
    func decode<each Column: PostgresDecodable>(_ types: (repeat each Column).Type, startingAt start: Int) throws -> (repeat each Column) {
        let cells = PostgresRandomAccessRow(self)
        var index = start
        func next<C: PostgresDecodable>(_ type: C.Type) throws -> C {
            defer { index += 1 }
            return try cells[index].decode(C.self)
        }
        return (repeat try next((each Column).self))
    }
}

enum PostgresTransactions {
    /// Rolls back after a failed statement or body; a connection where even that fails is discarded.
    static func rollback(_ session: PostgresSession) {
        guard session.isHealthy else { return }
        do throws(AuditError) {
            try session.query("ROLLBACK", "roll back")
        } catch {
            session.discard()
        }
    }
}
