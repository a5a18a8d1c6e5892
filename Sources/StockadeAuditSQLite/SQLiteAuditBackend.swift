import CSQLite
import Glibc
import StockadeAudit
import StockadePolicy
import Synchronization

/// The audit store's rows in one SQLite file (WAL, `foreign_keys=ON`). Commits are
/// `synchronous=NORMAL` (consistent after any crash; a power cut may lose the newest commits); a
/// durable one (`withTransaction(durable: true)`) is `FULL`: SQLite fsyncs the WAL before the commit
/// is visible, and so makes every earlier commit durable too. A group-committed one (a run's finish)
/// is committed `NORMAL` and then waits for an `fdatasync` of the WAL begun after its commit, taken
/// outside the writers' lock and shared by every writer that committed meanwhile: one fsync per run
/// at most, fewer when runs end at once, and the other writers go on during it. A failed group fsync
/// fails its write (whose commit is in the file but perhaps not on disk) and every later write: the
/// kernel may have dropped the unwritten pages, so a retry that succeeds would prove nothing.
///
/// One connection serves every writer in this process, guarded by a `Mutex`; other processes open
/// their own. Every write transaction is `BEGIN IMMEDIATE`, which takes the database's single write
/// lock before the ledger reads the chain head, so appends from every thread and process are
/// serialized and the chain is one line. Streams (`events`, `runs`, `scanChain`) read on a private
/// read-only connection, so they never hold the writers' lock and their bodies may write.
public final class SQLiteAuditBackend: AuditBackend {
    public let path: String
    public var location: String { path }
    private let state: Mutex<State>
    /// Commits made through this backend; the durable ones wait until `Sync.through` reaches theirs.
    private let commits = Atomic<UInt64>(0)
    private let sync = Mutex(Sync())
    /// Whether `runs` has the `hostId` column: a database opened read-only is not migrated, and one
    /// written before migration 0003 has none.
    let hasHostColumn: Bool

    private struct State: ~Copyable {
        let db: SQLiteConnection
        /// Set by a failed group fsync: every later write is refused with it.
        var failure: AuditError?
    }

    /// The group commit's side: one fsync at a time, under this lock.
    struct Sync: ~Copyable {
        /// The WAL, opened with the store (so that an fsync error from then on reaches this descriptor;
        /// SQLite removes the file only when the last connection closes, and this one is open). -1 on a
        /// read-only store.
        var wal: Int32 = -1
        /// Every commit up to this count is durable.
        var through: UInt64 = 0
        /// fsyncs done, for tests of the grouping.
        var count = 0
        var failure: AuditError?

        deinit { if wal >= 0 { close(wal) } }
    }

    /// How long a writer waits for another process's write lock before failing with `.busy`.
    public static let busyTimeoutMilliseconds: Int32 = 10_000

    /// SQLite's own threshold: a commit that leaves the WAL at this many pages or more checkpoints it.
    public static let defaultCheckpointPages: Int32 = 1000
    /// For a process that runs one worker and exits (`stockade run`). The first connection of a
    /// process rebuilds the WAL's index by reading every frame since the last checkpoint (SQLite
    /// resets the shared index when no other process holds it): with the default threshold a
    /// one-shot `run` read ≈ 500 frames at start on average, ≈ 1 ms for 680. A lower threshold keeps
    /// that read short, at the cost of a checkpoint (one more fsync) every few runs.
    public static let shortLivedCheckpointPages: Int32 = 128

    /// Opens or creates the database at `path` and brings its schema up to date. `checkpointPages`:
    /// the WAL size, in pages, at which a commit checkpoints it (`PRAGMA wal_autocheckpoint`).
    public init(path: String, checkpointPages: Int32 = defaultCheckpointPages) throws(AuditError) {
        guard checkpointPages > 0 else {
            throw AuditError(.invalidArgument, path: path, "checkpointPages must be at least 1, not \(checkpointPages)")
        }
        self.path = path
        let db = try Self.open(path: path, readOnly: false)
        try db.execute("PRAGMA wal_autocheckpoint = \(checkpointPages)", "set the WAL checkpoint threshold")
        try AuditSchema.migrate(db)
        hasHostColumn = true
        state = Mutex(State(db: db))
        let wal = Glibc.open(path + "-wal", O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard wal >= 0 else {
            throw AuditError(.openFailed, path: path + "-wal", errno: errno,
                             "cannot open the audit database's write-ahead log, which the store fsyncs itself (is the state directory on a local filesystem?)")
        }
        sync.withLock { $0.wal = wal }
    }

    /// Opens an existing database for queries only: no schema migration, no WAL switch, no write;
    /// the files are left as they are. Fails when there is no database at `path`.
    public init(readingAt path: String) throws(AuditError) {
        guard access(path, F_OK) == 0 else {
            throw AuditError(.storage, path: path, "there is no audit database here: nothing has run with this state directory (set --state-dir or STOCKADE_STATE_DIR)")
        }
        self.path = path
        let db = try Self.open(path: path, readOnly: true)
        hasHostColumn = try db.first("SELECT count(*) FROM pragma_table_info('runs') WHERE name = 'hostId'", [],
                                     "read the columns of runs") { $0.int64(0) } == 1
        state = Mutex(State(db: db))
    }

    static func open(path: String, readOnly: Bool) throws(AuditError) -> SQLiteConnection {
        let db = try SQLiteConnection(path: path, readOnly: readOnly)
        // Before anything touches the file, so that even the first statement waits for another
        // process that is creating or migrating the same file.
        db.setBusyTimeout(milliseconds: busyTimeoutMilliseconds)
        // The first statement reads the header: a non-database file fails here with .notADatabase.
        // Switching to WAL takes an exclusive lock, and SQLite answers BUSY at
        // once (without its busy handler) when another process is doing the
        // same on a new file: retry for as long as the busy timeout.
        var mode: String?
        var waited = 0
        while true {
            do {
                mode = try db.first("PRAGMA journal_mode" + (readOnly ? "" : "=WAL"), [], "read the database header and set WAL mode") { $0.text(0) }
                break
            } catch where error.code == .busy && waited < busyTimeoutMilliseconds {
                usleep(20_000)
                waited += 20
            }
        }
        if !readOnly, mode?.lowercased() != "wal" {
            throw AuditError(.storage, path: path,
                             "cannot switch the audit database to WAL mode (it stayed in \(mode ?? "unknown") mode); keep the state directory on a local filesystem")
        }
        try db.execute("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL",
                       "configure the audit database")
        return db
    }

    // MARK: AuditBackend

    /// `BEGIN IMMEDIATE` on the shared connection; a `durable` one is committed with `synchronous=FULL`.
    public func withTransaction<T: Sendable>(durable: Bool,
                                             _ body: (SQLiteAuditTransaction) throws(AuditError) -> T) throws(AuditError) -> T {
        try commit(durable: durable, body).result
    }

    /// Committed `NORMAL`, then durable through a shared fsync of the WAL (see the type's comment).
    public func withGroupCommittedTransaction<T: Sendable>(_ body: (SQLiteAuditTransaction) throws(AuditError) -> T) throws(AuditError) -> T {
        let (result, ticket) = try commit(durable: false, body)
        try makeDurable(ticket)
        return result
    }

    /// One write transaction under the writers' lock; its result and its number among this store's commits.
    private func commit<T: Sendable>(durable: Bool,
                                     _ body: (SQLiteAuditTransaction) throws(AuditError) -> T) throws(AuditError) -> (result: T, ticket: UInt64) {
        try state.withLock { (state) throws(AuditError) -> (result: T, ticket: UInt64) in
            if let failure = state.failure { throw failure }
            let db = state.db
            if durable { try db.run("PRAGMA synchronous = FULL", [], "make the commit durable") }
            defer { if durable { try? db.run("PRAGMA synchronous = NORMAL", [], "restore the commit mode") } }
            let result = try db.immediateTransaction { () throws(AuditError) -> T in
                try body(SQLiteAuditTransaction(db: db, path: path))
            }
            // Counted under the writers' lock, after COMMIT wrote the frames: a count read later
            // covers only commits already in the WAL.
            return (result, commits.add(1, ordering: .sequentiallyConsistent).newValue)
        }
    }

    /// Returns when commit number `ticket` is on stable storage: at once when an fsync that began after
    /// it has ended; else after this thread's own fsync, or after the one that held the lock while it
    /// waited, whichever covered it first. Lock order: this lock, then the writers' (to refuse every
    /// later write after a failure); never the other way round.
    private func makeDurable(_ ticket: UInt64) throws(AuditError) {
        try sync.withLock { (sync) throws(AuditError) in
            if let failure = sync.failure { throw failure }
            if sync.through >= ticket { return }
            let target = commits.load(ordering: .sequentiallyConsistent)
            sync.count += 1
            guard fdatasync(sync.wal) == 0 else {
                let err = errno
                let wal = path + "-wal"
                // To every writer that committed before the failure (this one and those queued behind
                // it): its rows are in the file. To every later one: refused before it writes.
                let committed = AuditError(.storage, path: wal, errno: err,
                                           "the commit is in the audit database but fdatasync of its write-ahead log failed, so it may be lost by a power cut: this store takes no more writes; stop the supervisor, check the disk, and start it again")
                sync.failure = committed
                state.withLock {
                    $0.failure = AuditError(.storage, path: wal, errno: err,
                                            "fdatasync of the audit database's write-ahead log failed, so its newest commits may not be on disk: this store takes no more writes; stop the supervisor, check the disk, and start it again")
                }
                throw committed
            }
            sync.through = target
        }
    }

    /// fsyncs of the WAL so far, and commits (tests of the group commit).
    var syncCount: Int { sync.withLock { $0.count } }
    var commitCount: UInt64 { commits.load(ordering: .sequentiallyConsistent) }

    /// Runs `body` holding the group commit's lock, so that durable writers queue behind it (tests).
    func withSyncHeld(_ body: () -> Void) { sync.withLock { _ in body() } }

    /// Whether the group commit's descriptor is the database's WAL (tests).
    var syncFileIsWAL: Bool {
        sync.withLock { sync in
            var held = stat(), named = stat()
            return fstat(sync.wal, &held) == 0 && lstat(path + "-wal", &named) == 0
                && held.st_dev == named.st_dev && held.st_ino == named.st_ino
        }
    }

    /// Points the group commit at `fd` instead of the WAL (tests of a failing fsync).
    func replaceSyncFile(_ fd: Int32) {
        sync.withLock { sync in
            if sync.wal >= 0 { close(sync.wal) }
            sync.wal = fd
        }
    }

    public func diff(id: Int64) throws(AuditError) -> DiffRecord? {
        try state.withLock { (state) throws(AuditError) -> DiffRecord? in try Self.readDiff(state.db, id: id) }
    }

    public func diffs(state wanted: DiffState?) throws(AuditError) -> [DiffRecord] {
        try state.withLock { (state) throws(AuditError) -> [DiffRecord] in
            try state.db.withStatement("SELECT \(Self.diffColumns) FROM diffs WHERE ?1 IS NULL OR state = ?1 ORDER BY id",
                                       [wanted.map(\.rawValue).sqlite], "list diffs") { (s) throws(AuditError) -> [DiffRecord] in
                var out: [DiffRecord] = []
                while try s.step() { out.append(Self.diffRecord(s)) }
                return out
            }
        }
    }

    public func diffs(runId: String) throws(AuditError) -> [DiffRecord] {
        try state.withLock { (state) throws(AuditError) -> [DiffRecord] in
            try state.db.withStatement("SELECT \(Self.diffColumns) FROM diffs WHERE runId = ?1 ORDER BY id",
                                       [.text(runId)], "list the diffs of run \(runId)") { (s) throws(AuditError) -> [DiffRecord] in
                var out: [DiffRecord] = []
                while try s.step() { out.append(Self.diffRecord(s)) }
                return out
            }
        }
    }

    public func events(_ query: AuditEventQuery, _ body: (AuditEvent) throws -> Void) throws {
        let db = try Self.open(path: path, readOnly: true)
        try db.readTransaction {
            let (sql, values) = Self.eventQuery(query)
            let statement = try db.prepare(sql, "read events")
            try statement.bind(values)
            while try statement.step() { try body(Self.event(statement)) }
        }
    }

    /// Only the filters asked for, so the planner can use `events_kind (kind, seq)` or `events_run`: a
    /// filter written `?1 IS NULL OR …` hides them, and an event stream whose filter matched nothing
    /// read every event after its cursor at each poll.
    static func eventQuery(_ query: AuditEventQuery) -> (sql: String, values: [SQLiteValue]) {
        var sql = "SELECT \(eventColumns) FROM events WHERE seq > ?1"
        var values: [SQLiteValue] = [.int(query.since ?? 0)]
        if let runId = query.runId {
            values.append(.text(runId))
            sql += " AND runId = ?\(values.count)"
        }
        if let kind = query.kind {
            values.append(.text(kind))
            sql += " AND kind = ?\(values.count)"
        }
        return (sql + " ORDER BY seq", values)
    }

    public func runs(_ body: (AuditRunRecord) throws -> Void) throws {
        let db = try Self.open(path: path, readOnly: true)
        try db.readTransaction {
            let statement = try db.prepare("""
                SELECT runId, profile, profileDigest, command, state, outcome, exitStatus, createdAt, endedAt, supervisorPid, supervisorStart,
                       \(hasHostColumn ? "hostId" : "NULL")
                FROM runs ORDER BY createdAt, runId
                """, "read runs")
            while try statement.step() { try body(try runRecord(statement)) }
        }
    }

    public func scanChain(_ visit: (AuditEvent) -> Bool) throws(AuditError) -> AuditChainHead? {
        let db = try Self.open(path: path, readOnly: true)
        do {
            return try db.readTransaction { () throws(AuditError) -> AuditChainHead? in
                let statement = try db.prepare("SELECT \(Self.eventColumns) FROM events ORDER BY seq", "read events")
                while try statement.step() {
                    if !visit(Self.event(statement)) { return nil }
                }
                return try SQLiteAuditTransaction.readHead(db)
            }
        } catch let error as AuditError {
            throw error
        } catch {
            throw AuditError(.sqlite, path: path, "cannot verify the chain: \(error)")
        }
    }

    /// The value of a pragma on the shared connection (for tests of the connection's settings).
    func pragma(_ name: String) throws(AuditError) -> String? {
        try state.withLock { (state) throws(AuditError) -> String? in
            try state.db.first("PRAGMA \(name)", [], "read pragma \(name)") { $0.text(0) }
        }
    }

    // MARK: rows

    static let eventColumns = "seq, runId, runSeq, kind, at, detail, prevHash, hash"

    static let diffColumns = """
        id, runId, sha256, bytes, content, verdict, reason, state, decidedBy, note, decidedAt, appliedAt, createdAt,
        conflictFile, conflictHunk, conflictReason
        """

    static func readDiff(_ db: SQLiteConnection, id: Int64) throws(AuditError) -> DiffRecord? {
        try db.first("SELECT \(diffColumns) FROM diffs WHERE id = ?", [.int(id)], "read diff \(id)") { diffRecord($0) }
    }

    static func diffRecord(_ s: SQLiteStatement) -> DiffRecord {
        DiffRecord(id: s.int64(0), runId: s.text(1), sha256: s.text(2), bytes: s.int64(3), content: s.blob(4), verdict: s.text(5),
                   reason: s.optionalText(6), state: s.text(7), decidedBy: s.optionalText(8), note: s.optionalText(9),
                   decidedAt: s.optionalText(10), appliedAt: s.optionalText(11), createdAt: s.text(12),
                   conflict: s.optionalText(15).map { DiffConflict(file: s.optionalText(13), hunk: s.optionalText(14), reason: $0) })
    }

    static func event(_ s: SQLiteStatement) -> AuditEvent {
        AuditEvent(seq: s.int64(0), runId: s.optionalText(1), runSeq: s.int64(2), kind: s.text(3), at: s.text(4), detail: s.text(5),
                   prevHash: s.text(6), hash: s.text(7))
    }

    func runRecord(_ s: SQLiteStatement) throws(AuditError) -> AuditRunRecord {
        let runId = s.text(0)
        let commandText = s.text(3)
        guard let parsed = try? StrictJSON.parse(Array(commandText.utf8), limits: .init(maxBytes: Int.max, maxDepth: 4)),
              let items = parsed.array else {
            throw AuditError(.corruptRow, path: path, "the command of run \(runId) is not a JSON array; the row was edited by hand: run `stockade audit verify`")
        }
        return AuditRunRecord(runId: runId, profile: s.text(1), profileDigest: s.text(2), command: items.map { $0.string ?? $0.serialized() },
                              state: s.text(4), outcome: s.optionalText(5), exitStatus: s.optionalInt64(6).map { Int32(truncatingIfNeeded: $0) },
                              createdAt: s.text(7), endedAt: s.optionalText(8), supervisorPid: Int32(truncatingIfNeeded: s.int64(9)),
                              supervisorStart: UInt64(bitPattern: s.int64(10)), hostId: s.optionalText(11))
    }
}

/// One `BEGIN IMMEDIATE` transaction on the backend's shared connection; valid only inside
/// `SQLiteAuditBackend.withTransaction`'s body, which holds the connection's lock.
public struct SQLiteAuditTransaction: AuditTransaction {
    let db: SQLiteConnection
    let path: String

    public func chainHead() throws(AuditError) -> AuditChainHead? {
        try Self.readHead(db)
    }

    static func readHead(_ db: SQLiteConnection) throws(AuditError) -> AuditChainHead? {
        try db.first("SELECT seq, hash FROM chain_head WHERE id = 1", [], "read the chain head") { AuditChainHead(seq: $0.int64(0), hash: $0.text(1)) }
    }

    public func setChainHead(_ head: AuditChainHead) throws(AuditError) {
        try db.run("UPDATE chain_head SET seq = ?, hash = ? WHERE id = 1", [.int(head.seq), .text(head.hash)], "advance the chain head")
    }

    public func lastRunSeq(runId: String?) throws(AuditError) -> Int64 {
        try db.first("SELECT coalesce(max(runSeq), 0) FROM events WHERE runId IS ?", [runId.sqlite], "read the run's last event") { $0.int64(0) } ?? 0
    }

    public func insertEvent(_ event: AuditEvent) throws(AuditError) {
        try db.run("INSERT INTO events (seq, runId, runSeq, kind, at, detail, prevHash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   [.int(event.seq), event.runId.sqlite, .int(event.runSeq), .text(event.kind), .text(event.at), .text(event.detail),
                    .text(event.prevHash), .text(event.hash)],
                   "append event \(event.kind)")
    }

    public func runState(runId: String) throws(AuditError) -> AuditRunState? {
        guard let text = try db.first("SELECT state FROM runs WHERE runId = ?", [.text(runId)], "read run \(runId)", { $0.text(0) }) else {
            return nil
        }
        guard let state = AuditRunState(rawValue: text) else {
            throw AuditError(.corruptRow, path: path, "run \(runId) has the unknown state \(text); the row was edited by hand")
        }
        return state
    }

    public func insertRun(_ run: AuditRunRecord) throws(AuditError) {
        try db.run("""
            INSERT INTO runs (runId, profile, profileDigest, command, state, outcome, exitStatus, createdAt, endedAt,
                              supervisorPid, supervisorStart, hostId)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """, [.text(run.runId), .text(run.profile), .text(run.profileDigest),
                  .text(JSONValue.array(run.command.map { .string($0) }).serialized()), .text(run.state), run.outcome.sqlite,
                  run.exitStatus.map { .int(Int64($0)) } ?? .null, .text(run.createdAt), run.endedAt.sqlite,
                  .int(Int64(run.supervisorPid)), .int(Int64(bitPattern: run.supervisorStart)), run.hostId.sqlite],
            "insert run \(run.runId)")
    }

    public func endRun(runId: String, _ ending: AuditRunEnding) throws(AuditError) {
        try db.run("UPDATE runs SET state = ?, outcome = ?, exitStatus = ?, endedAt = ? WHERE runId = ?",
                   [.text(ending.state.rawValue), ending.outcome.sqlite, ending.exitStatus.map { .int(Int64($0)) } ?? .null,
                    .text(ending.endedAt), .text(runId)], "end run \(runId)")
    }

    public func runningRuns() throws(AuditError) -> [AuditRunOwner] {
        try db.withStatement("SELECT runId, supervisorPid, supervisorStart, hostId FROM runs WHERE state = 'running' ORDER BY createdAt, runId",
                             [], "list running runs") { (s) throws(AuditError) -> [AuditRunOwner] in
            var out: [AuditRunOwner] = []
            while try s.step() {
                out.append(AuditRunOwner(runId: s.text(0), supervisorPid: Int32(truncatingIfNeeded: s.int64(1)),
                                         supervisorStart: UInt64(bitPattern: s.int64(2)), hostId: s.optionalText(3)))
            }
            return out
        }
    }

    public func insertBundle(_ bundle: AuditBundleRow) throws(AuditError) -> Int64 {
        try db.run("INSERT INTO bundles (runId, role, status, reason, files, bytes, manifestSha256, createdAt) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   [.text(bundle.runId), .text(bundle.role.rawValue), .text(bundle.status.rawValue), bundle.reason.sqlite,
                    .int(bundle.files), .int(bundle.bytes), bundle.manifestSha256.sqlite, .text(bundle.createdAt)],
                   "insert the \(bundle.role.rawValue) bundle of run \(bundle.runId)")
        return db.lastInsertRowID
    }

    public func insertDiff(_ diff: AuditDiffRow) throws(AuditError) -> Int64 {
        try db.run("""
            INSERT INTO diffs (runId, sha256, bytes, content, verdict, reason, state, decidedBy, decidedAt, createdAt)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """, [.text(diff.runId), .text(diff.sha256), .int(Int64(diff.content.count)), .blob(diff.content), .text(diff.verdict.rawValue),
                  diff.reason.sqlite, .text(diff.state.rawValue), diff.decidedBy.sqlite, diff.decidedAt.sqlite, .text(diff.createdAt)],
            "insert the diff of run \(diff.runId)")
        return db.lastInsertRowID
    }

    public func diff(id: Int64) throws(AuditError) -> DiffRecord? {
        try SQLiteAuditBackend.readDiff(db, id: id)
    }

    public func updateDiff(_ diff: DiffRecord) throws(AuditError) {
        try db.run("""
            UPDATE diffs SET state = ?, decidedBy = ?, note = ?, decidedAt = ?, appliedAt = ?,
                             conflictFile = ?, conflictHunk = ?, conflictReason = ?
            WHERE id = ?
            """, [.text(diff.state), diff.decidedBy.sqlite, diff.note.sqlite, diff.decidedAt.sqlite, diff.appliedAt.sqlite,
                  (diff.conflict?.file).sqlite, (diff.conflict?.hunk).sqlite, (diff.conflict?.reason).sqlite, .int(diff.id)],
            "update diff \(diff.id)")
    }
}
