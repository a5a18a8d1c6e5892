import Glibc
import CSQLite
import Crypto
import StockadePolicy
import Synchronization

/// The audit store in one SQLite file (WAL, `foreign_keys=ON`). Commits are
/// `synchronous=NORMAL` (consistent after any crash; a power cut may lose the
/// newest commits) except the ones that close a story — a run's end, a diff,
/// a review decision, an application, an abandonment — which are `FULL` and
/// so also make every earlier commit durable: one fsync per run, not five.
///
/// One connection serves every writer in this process, guarded by a `Mutex`; other processes open
/// their own. Every append runs in `BEGIN IMMEDIATE`, which takes the database's single write lock
/// before the chain head is read, so appends from every thread and process are serialized and the
/// chain is one line. Streams (`events`, `runs`, `verifyChain`) read on a private read-only connection,
/// so they never hold the writers' lock and their bodies may write.
public final class SQLiteAuditStore: AuditStore {
    public let path: String
    public let supervisorPid: Int32
    public let supervisorStart: UInt64
    private let state: Mutex<State>

    private struct State: ~Copyable {
        let db: SQLiteConnection
        var sanitizer = DetailSanitizer()
    }

    /// How long a writer waits for another process's write lock before failing with `.busy`.
    public static let busyTimeoutMilliseconds: Int32 = 10_000

    /// Opens or creates the database at `path` and brings its schema up to date.
    /// `supervisorPid` and `supervisorStart` (the process start time, see `ProcessIdentity`) are stored
    /// on each run this store begins, so a later supervisor can tell whether its owner is still alive.
    public init(path: String, supervisorPid: Int32, supervisorStart: UInt64) throws(AuditError) {
        self.path = path
        self.supervisorPid = supervisorPid
        self.supervisorStart = supervisorStart
        let db = try Self.open(path: path, readOnly: false)
        try AuditSchema.migrate(db)
        state = Mutex(State(db: db))
    }

    /// Opens an existing database for queries only: no schema migration, no WAL switch, no write;
    /// the files are left as they are. Fails when there is no database at `path`.
    public init(readingAt path: String) throws(AuditError) {
        guard access(path, F_OK) == 0 else {
            throw AuditError(.storage, path: path, "there is no audit database here: nothing has run with this state directory (set --state-dir or STOCKADE_STATE_DIR)")
        }
        self.path = path
        self.supervisorPid = 0
        self.supervisorStart = 0
        state = Mutex(State(db: try Self.open(path: path, readOnly: true)))
    }

    /// Adds secret values (profile secrets, values of env keys marked secret): from now on every
    /// occurrence in a detail, reason, note or command stored by this store is replaced by `[redacted]`.
    public func addSecrets(_ values: [String]) {
        state.withLock { $0.sanitizer.addSecrets(values) }
    }

    private static func open(path: String, readOnly: Bool) throws(AuditError) -> SQLiteConnection {
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

    // MARK: writes

    public func beginRun(runId: String, profile: String, profileDigest: String, command: [String], detail: JSONValue) throws(AuditError) {
        try write { (db, sanitizer) throws(AuditError) in
            let now = AuditClock.now()
            let commandValue = sanitizer.sanitize(JSONValue.array(command.map { .string($0) }))
            let profile = sanitizer.sanitize(profile)
            do throws(AuditError) {
                try db.run("""
                    INSERT INTO runs (runId, profile, profileDigest, command, state, createdAt, supervisorPid, supervisorStart)
                    VALUES (?, ?, ?, ?, 'running', ?, ?, ?)
                    """, [.text(runId), .text(profile), .text(profileDigest), .text(commandValue.serialized()),
                          .text(now), .int(Int64(supervisorPid)), .int(Int64(bitPattern: supervisorStart))], "insert run \(runId)")
            } catch {
                guard error.code == .constraint else { throw error }
                throw AuditError(.duplicateRun, path: path, "a run with id \(runId) is already recorded; run ids must be unique")
            }
            try append(db, sanitizer, runId: runId, kind: "run.created", at: now,
                       detail: merged(detail, ["profile": .string(profile), "profileDigest": .string(profileDigest), "command": commandValue]))
        }
    }

    @discardableResult
    public func record(runId: String?, kind: String, detail: JSONValue) throws(AuditError) -> Int64 {
        try write { (db, sanitizer) throws(AuditError) -> Int64 in
            try append(db, sanitizer, runId: runId, kind: kind, at: AuditClock.now(), detail: detail)
        }
    }

    public func recordMany(_ events: [(runId: String?, kind: String, detail: JSONValue)]) throws(AuditError) {
        guard !events.isEmpty else { return }
        try write { (db, sanitizer) throws(AuditError) in
            // One transaction holds the write lock, so the chain head and each
            // run's last runSeq are read once and carried along, not per event.
            guard var head = try db.first("SELECT seq, hash FROM chain_head WHERE id = 1", [], "read the chain head", { ($0.int64(0), $0.text(1)) }) else {
                throw AuditError(.corruptRow, path: path, "the chain head row is missing: the database was edited by hand; run `stockade audit verify`")
            }
            var runSeqs: [String: Int64] = [:]
            var orphanSeq: Int64?
            for event in events {
                let at = AuditClock.now()
                let runSeq: Int64
                if let runId = event.runId {
                    if let last = runSeqs[runId] {
                        runSeq = last + 1
                    } else {
                        try requireRun(db, runId)
                        runSeq = (try db.first("SELECT coalesce(max(runSeq), 0) FROM events WHERE runId = ?", [.text(runId)],
                                               "read the run's last event") { $0.int64(0) } ?? 0) + 1
                    }
                    runSeqs[runId] = runSeq
                } else {
                    var last: Int64 = 0
                    if let known = orphanSeq {
                        last = known
                    } else {
                        last = try db.first("SELECT coalesce(max(runSeq), 0) FROM events WHERE runId IS NULL", [],
                                            "read the last event without a run") { $0.int64(0) } ?? 0
                    }
                    runSeq = last + 1
                    orphanSeq = runSeq
                }
                let seq = head.0 + 1
                let text = sanitizer.sanitize(event.detail).serialized()
                let hash = AuditChain.hash(prevHash: head.1, seq: seq, runId: event.runId, runSeq: runSeq, kind: event.kind, at: at, detail: text)
                try db.run("INSERT INTO events (seq, runId, runSeq, kind, at, detail, prevHash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [.int(seq), event.runId.sqlite, .int(runSeq), .text(event.kind), .text(at), .text(text), .text(head.1), .text(hash)],
                           "append an event")
                head = (seq, hash)
            }
            try db.run("UPDATE chain_head SET seq = ?, hash = ? WHERE id = 1", [.int(head.0), .text(head.1)], "advance the chain head")
        }
    }

    public func finishRun(runId: String, outcome: String, exitStatus: Int32, detail: JSONValue) throws(AuditError) {
        try write(durable: true) { (db, sanitizer) throws(AuditError) in
            let now = AuditClock.now()
            try db.run("UPDATE runs SET state = 'finished', outcome = ?, exitStatus = ?, endedAt = ? WHERE runId = ? AND state = 'running'",
                       [.text(outcome), .int(Int64(exitStatus)), .text(now), .text(runId)], "finish run \(runId)")
            if db.changes == 0 {
                let current = try db.first("SELECT state FROM runs WHERE runId = ?", [.text(runId)], "read run \(runId)") { $0.text(0) }
                guard let current else { throw unknownRun(runId) }
                throw AuditError(.invalidState, path: path, "run \(runId) is \(current), not running: it cannot be finished again")
            }
            try append(db, sanitizer, runId: runId, kind: "run.finished", at: now,
                       detail: merged(detail, ["outcome": .string(outcome), "exitStatus": .number(exitStatus)]))
        }
    }

    public func recordBundle(runId: String, role: String, status: String, reason: String?, files: Int, bytes: Int64,
                             manifestSha256: String?) throws(AuditError) {
        try require(role, in: ["request", "result"], "bundle role")
        try require(status, in: ["accepted", "rejected"], "bundle status")
        try write { (db, sanitizer) throws(AuditError) in
            let now = AuditClock.now()
            let reason = reason.map(sanitizer.sanitize)
            try insert(db, runId: runId, "INSERT INTO bundles (runId, role, status, reason, files, bytes, manifestSha256, createdAt) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       [.text(runId), .text(role), .text(status), reason.sqlite, .int(Int64(files)), .int(bytes), manifestSha256.sqlite, .text(now)],
                       "insert the \(role) bundle of run \(runId)")
            var detail: [String: JSONValue] = ["role": .string(role), "files": .number(files), "bytes": .number(bytes),
                                               "reason": reason.map { .string($0) } ?? .null,
                                               "manifestSha256": manifestSha256.map { .string($0) } ?? .null]
            detail["bundleId"] = .number(db.lastInsertRowID)
            try append(db, sanitizer, runId: runId, kind: "bundle.\(status)", at: now, detail: .object(detail))
        }
    }

    public func recordDiff(runId: String, content: [UInt8], verdict: String, reason: String?) throws(AuditError) -> Int64 {
        try require(verdict, in: ["passed", "rejected"], "diff verdict")
        let sha256 = AuditChain.hex(SHA256.hash(data: content))
        return try write(durable: true) { (db, sanitizer) throws(AuditError) -> Int64 in
            let now = AuditClock.now()
            let reason = reason.map(sanitizer.sanitize)
            let rejected = verdict == "rejected"
            try insert(db, runId: runId, """
                INSERT INTO diffs (runId, sha256, bytes, content, verdict, reason, state, decidedBy, decidedAt, createdAt)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """, [.text(runId), .text(sha256), .int(Int64(content.count)), .blob(content), .text(verdict), reason.sqlite,
                      .text(rejected ? "rejected" : "pending"), rejected ? .text("guard") : .null, rejected ? .text(now) : .null, .text(now)],
                "insert the diff of run \(runId)")
            let id = db.lastInsertRowID
            let base: [String: JSONValue] = ["diffId": .number(id), "sha256": .string(sha256), "bytes": .number(content.count),
                                             "verdict": .string(verdict), "reason": reason.map { .string($0) } ?? .null]
            try append(db, sanitizer, runId: runId, kind: "diff.recorded", at: now, detail: .object(base))
            if rejected {
                try append(db, sanitizer, runId: runId, kind: "diff.rejected", at: now,
                           detail: .object(["diffId": .number(id), "actor": .string("guard"), "reason": reason.map { .string($0) } ?? .null]))
            }
            return id
        }
    }

    public func decide(diffId: Int64, accept: Bool, actor: String, note: String?) throws(AuditError) -> DiffRecord {
        try write(durable: true) { (db, sanitizer) throws(AuditError) -> DiffRecord in
            let now = AuditClock.now()
            let decision = accept ? "accepted" : "rejected"
            let actor = sanitizer.sanitize(actor)
            let note = note.map(sanitizer.sanitize)
            // Read and updated under the write transaction's lock: of two deciders, one wins and the other is told.
            guard let before = try readDiff(db, id: diffId) else { throw unknownDiff(diffId) }
            guard ["pending", "conflict"].contains(before.state) else {
                throw AuditError(.invalidState, path: path,
                                 "diff \(diffId) is already \(before.state) (by \(before.decidedBy ?? "?") at \(before.decidedAt ?? "?")): only a pending diff, or one in conflict, can be accepted or rejected")
            }
            try db.run("UPDATE diffs SET state = ?, decidedBy = ?, note = ?, decidedAt = ? WHERE id = ? AND state = ?",
                       [.text(decision), .text(actor), note.sqlite, .text(now), .int(diffId), .text(before.state)], "decide diff \(diffId)")
            guard let record = try readDiff(db, id: diffId) else { throw unknownDiff(diffId) }
            try append(db, sanitizer, runId: record.runId, kind: "review.decided", at: now,
                       detail: .object(["diffId": .number(diffId), "decision": .string(decision), "actor": .string(actor),
                                        "note": note.map { .string($0) } ?? .null, "from": .string(before.state)]))
            return record
        }
    }

    public func markApplied(diffId: Int64, detail: JSONValue) throws(AuditError) {
        try write(durable: true) { (db, sanitizer) throws(AuditError) in
            let now = AuditClock.now()
            try db.run("""
                UPDATE diffs SET appliedAt = ?, conflictFile = NULL, conflictHunk = NULL, conflictReason = NULL
                WHERE id = ? AND state = 'accepted' AND appliedAt IS NULL
                """, [.text(now), .int(diffId)], "mark diff \(diffId) applied")
            guard let record = try readDiff(db, id: diffId) else { throw unknownDiff(diffId) }
            if db.changes == 0 {
                let why = record.state == "accepted" ? "was already applied at \(record.appliedAt ?? "?")" : "is \(record.state), not accepted"
                throw AuditError(.invalidState, path: path, "diff \(diffId) \(why): only an accepted diff is applied, once")
            }
            try append(db, sanitizer, runId: record.runId, kind: "diff.applied", at: now, detail: merged(detail, ["diffId": .number(diffId)]))
        }
    }

    public func markConflict(diffId: Int64, conflict: DiffConflict, detail: JSONValue) throws(AuditError) {
        try write(durable: true) { (db, sanitizer) throws(AuditError) in
            let now = AuditClock.now()
            let file = conflict.file.map(sanitizer.sanitize), hunk = conflict.hunk.map(sanitizer.sanitize)
            let reason = sanitizer.sanitize(conflict.reason)
            try db.run("""
                UPDATE diffs SET state = 'conflict', conflictFile = ?, conflictHunk = ?, conflictReason = ?
                WHERE id = ? AND state = 'accepted' AND appliedAt IS NULL
                """, [file.sqlite, hunk.sqlite, .text(reason), .int(diffId)], "mark diff \(diffId) in conflict")
            guard let record = try readDiff(db, id: diffId) else { throw unknownDiff(diffId) }
            if db.changes == 0 {
                let why = record.state == "accepted" ? "was already applied at \(record.appliedAt ?? "?")" : "is \(record.state), not accepted"
                throw AuditError(.invalidState, path: path, "diff \(diffId) \(why): only an accepted, unapplied diff can be in conflict")
            }
            try append(db, sanitizer, runId: record.runId, kind: "diff.conflict", at: now,
                       detail: merged(detail, ["diffId": .number(diffId), "file": file.map { .string($0) } ?? .null,
                                               "hunk": hunk.map { .string($0) } ?? .null, "reason": .string(reason)]))
        }
    }

    public func markAbandoned(isAlive: (Int32, UInt64) -> Bool) throws(AuditError) -> [String] {
        try write(durable: true) { (db, sanitizer) throws(AuditError) -> [String] in
            var running: [(runId: String, pid: Int32, start: UInt64)] = []
            try db.withStatement("SELECT runId, supervisorPid, supervisorStart FROM runs WHERE state = 'running' ORDER BY createdAt, runId",
                                 [], "list running runs") { (s) throws(AuditError) in
                while try s.step() {
                    running.append((s.text(0), Int32(truncatingIfNeeded: s.int64(1)), UInt64(bitPattern: s.int64(2))))
                }
            }
            var abandoned: [String] = []
            for run in running where !isAlive(run.pid, run.start) {
                let now = AuditClock.now()
                try db.run("UPDATE runs SET state = 'abandoned', endedAt = ? WHERE runId = ? AND state = 'running'",
                           [.text(now), .text(run.runId)], "mark run \(run.runId) abandoned")
                try append(db, sanitizer, runId: run.runId, kind: "run.abandoned", at: now,
                           detail: .object(["supervisorPid": .number(run.pid), "supervisorStart": .number(run.start),
                                            "markedBy": .number(supervisorPid)]))
                abandoned.append(run.runId)
            }
            return abandoned
        }
    }

    // MARK: reads

    public func diff(id: Int64) throws(AuditError) -> DiffRecord? {
        try state.withLock { (state) throws(AuditError) -> DiffRecord? in try readDiff(state.db, id: id) }
    }

    public func diffs(state wanted: String?) throws(AuditError) -> [DiffRecord] {
        if let wanted { try require(wanted, in: ["pending", "accepted", "rejected", "conflict"], "review state") }
        return try state.withLock { (state) throws(AuditError) -> [DiffRecord] in
            try state.db.withStatement("SELECT \(Self.diffColumns) FROM diffs WHERE ?1 IS NULL OR state = ?1 ORDER BY id",
                                       [wanted.sqlite], "list diffs") { (s) throws(AuditError) -> [DiffRecord] in
                var out: [DiffRecord] = []
                while try s.step() { out.append(Self.diffRecord(s)) }
                return out
            }
        }
    }

    public func events(runId: String?, since: Int64?, kind: String?, _ body: (AuditEvent) throws -> Void) throws {
        let db = try Self.open(path: path, readOnly: true)
        try db.readTransaction {
            let statement = try db.prepare("""
                SELECT seq, runId, runSeq, kind, at, detail, prevHash, hash FROM events
                WHERE (?1 IS NULL OR runId = ?1) AND seq > ?2 AND (?3 IS NULL OR kind = ?3)
                ORDER BY seq
                """, "read events")
            try statement.bind([runId.sqlite, .int(since ?? 0), kind.sqlite])
            while try statement.step() { try body(Self.event(statement)) }
        }
    }

    public func runs(_ body: (AuditRunRecord) throws -> Void) throws {
        let db = try Self.open(path: path, readOnly: true)
        try db.readTransaction {
            let statement = try db.prepare("""
                SELECT runId, profile, profileDigest, command, state, outcome, exitStatus, createdAt, endedAt, supervisorPid, supervisorStart
                FROM runs ORDER BY createdAt, runId
                """, "read runs")
            while try statement.step() { try body(try runRecord(statement)) }
        }
    }

    public func verifyChain(anchors: [AuditChainHead]) throws(AuditError) -> ChainVerification {
        let db = try Self.open(path: path, readOnly: true)
        do {
            return try db.readTransaction { () throws(AuditError) -> ChainVerification in
                var verifier = ChainVerifier(anchors: anchors)
                let statement = try db.prepare("SELECT seq, runId, runSeq, kind, at, detail, prevHash, hash FROM events ORDER BY seq", "read events")
                while try statement.step() {
                    if let broken = verifier.check(Self.event(statement)) { return broken }
                }
                let head = try db.first("SELECT seq, hash FROM chain_head WHERE id = 1", [], "read the chain head") { ($0.int64(0), $0.text(1)) }
                return verifier.finish(head: head)
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

    // MARK: internals

    /// Runs `body` in a `BEGIN IMMEDIATE` transaction on the shared connection;
    /// a `durable` one is committed with `synchronous=FULL`.
    private func write<T: Sendable>(durable: Bool = false,
                                    _ body: (SQLiteConnection, DetailSanitizer) throws(AuditError) -> T) throws(AuditError) -> T {
        try state.withLock { (state) throws(AuditError) -> T in
            let db = state.db
            let sanitizer = state.sanitizer
            if durable { try db.execute("PRAGMA synchronous = FULL", "make the commit durable") }
            defer { if durable { try? db.execute("PRAGMA synchronous = NORMAL", "restore the commit mode") } }
            return try db.immediateTransaction { () throws(AuditError) -> T in try body(db, sanitizer) }
        }
    }

    /// Appends one event at the chain head. Must run inside `write`.
    @discardableResult
    private func append(_ db: SQLiteConnection, _ sanitizer: DetailSanitizer, runId: String?, kind: String, at: String,
                        detail: JSONValue) throws(AuditError) -> Int64 {
        guard let head = try db.first("SELECT seq, hash FROM chain_head WHERE id = 1", [], "read the chain head", { ($0.int64(0), $0.text(1)) }) else {
            throw AuditError(.corruptRow, path: path, "the chain head row is missing: the database was edited by hand; run `stockade audit verify`")
        }
        let runSeq = try db.first("SELECT coalesce(max(runSeq), 0) FROM events WHERE runId IS ?", [runId.sqlite], "read the run's last event") { $0.int64(0) } ?? 0
        let seq = head.0 + 1
        let text = sanitizer.sanitize(detail).serialized()
        let hash = AuditChain.hash(prevHash: head.1, seq: seq, runId: runId, runSeq: runSeq + 1, kind: kind, at: at, detail: text)
        if let runId {
            try requireRun(db, runId)
        }
        try db.run("INSERT INTO events (seq, runId, runSeq, kind, at, detail, prevHash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   [.int(seq), runId.sqlite, .int(runSeq + 1), .text(kind), .text(at), .text(text), .text(head.1), .text(hash)],
                   "append event \(kind)")
        try db.run("UPDATE chain_head SET seq = ?, hash = ? WHERE id = 1", [.int(seq), .text(hash)], "advance the chain head")
        return seq
    }

    private func requireRun(_ db: SQLiteConnection, _ runId: String) throws(AuditError) {
        if try db.first("SELECT 1 FROM runs WHERE runId = ?", [.text(runId)], "look up run", { _ in true }) == nil {
            throw unknownRun(runId)
        }
    }

    /// An insert whose row references a run: an unknown run is named as such, not as a constraint failure.
    private func insert(_ db: SQLiteConnection, runId: String, _ sql: String, _ params: [SQLiteValue], _ what: String) throws(AuditError) {
        try requireRun(db, runId)
        try db.run(sql, params, what)
    }

    private func require(_ value: String, in allowed: [String], _ what: String) throws(AuditError) {
        guard allowed.contains(value) else {
            throw AuditError(.invalidArgument, path: path, "\(what) \"\(value)\" is not one of \(allowed.joined(separator: ", "))")
        }
    }

    private func unknownRun(_ runId: String) -> AuditError {
        AuditError(.unknownRun, path: path, "no run with id \(runId) is recorded; begin the run before recording its events")
    }

    private func unknownDiff(_ id: Int64) -> AuditError {
        AuditError(.unknownDiff, path: path, "no diff with id \(id) is recorded; `stockade review list` shows the ids")
    }

    /// `detail` with `extra` keys added (the store's keys win); a non-object detail is kept under "detail".
    private func merged(_ detail: JSONValue, _ extra: [String: JSONValue]) -> JSONValue {
        switch detail {
        case .object(let members): .object(members.merging(extra) { _, ours in ours })
        case .null: .object(extra)
        default: .object(extra.merging(["detail": detail]) { ours, _ in ours })
        }
    }

    private static let diffColumns = """
        id, runId, sha256, bytes, content, verdict, reason, state, decidedBy, note, decidedAt, appliedAt, createdAt,
        conflictFile, conflictHunk, conflictReason
        """

    private func readDiff(_ db: SQLiteConnection, id: Int64) throws(AuditError) -> DiffRecord? {
        try db.first("SELECT \(Self.diffColumns) FROM diffs WHERE id = ?", [.int(id)], "read diff \(id)") { Self.diffRecord($0) }
    }

    private static func diffRecord(_ s: SQLiteStatement) -> DiffRecord {
        DiffRecord(id: s.int64(0), runId: s.text(1), sha256: s.text(2), bytes: s.int64(3), content: s.blob(4), verdict: s.text(5),
                   reason: s.optionalText(6), state: s.text(7), decidedBy: s.optionalText(8), note: s.optionalText(9),
                   decidedAt: s.optionalText(10), appliedAt: s.optionalText(11), createdAt: s.text(12),
                   conflict: s.optionalText(15).map { DiffConflict(file: s.optionalText(13), hunk: s.optionalText(14), reason: $0) })
    }

    private static func event(_ s: SQLiteStatement) -> AuditEvent {
        AuditEvent(seq: s.int64(0), runId: s.optionalText(1), runSeq: s.int64(2), kind: s.text(3), at: s.text(4), detail: s.text(5),
                   prevHash: s.text(6), hash: s.text(7))
    }

    private func runRecord(_ s: SQLiteStatement) throws(AuditError) -> AuditRunRecord {
        let runId = s.text(0)
        let commandText = s.text(3)
        guard let parsed = try? StrictJSON.parse(Array(commandText.utf8), limits: .init(maxBytes: Int.max, maxDepth: 4)),
              let items = parsed.array else {
            throw AuditError(.corruptRow, path: path, "the command of run \(runId) is not a JSON array; the row was edited by hand: run `stockade audit verify`")
        }
        return AuditRunRecord(runId: runId, profile: s.text(1), profileDigest: s.text(2), command: items.map { $0.string ?? $0.serialized() },
                              state: s.text(4), outcome: s.optionalText(5), exitStatus: s.optionalInt64(6).map { Int32(truncatingIfNeeded: $0) },
                              createdAt: s.text(7), endedAt: s.optionalText(8), supervisorPid: Int32(truncatingIfNeeded: s.int64(9)),
                              supervisorStart: UInt64(bitPattern: s.int64(10)))
    }
}
