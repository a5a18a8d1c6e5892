import Glibc
import PostgresNIO
import StockadeAudit

/// The run queue in the tables `run_queue` and `nodes` of a PostgreSQL audit store, on the store's own
/// connection pool.
///
/// Claims are one statement each: the queued rows a node may take are locked with `FOR UPDATE SKIP
/// LOCKED` (a row another claimer has locked is skipped, never waited for, never taken twice) and
/// moved to `claimed` under the node's name and incarnation. Claims, heartbeats and finishes do not
/// take the trail's writer lock: they touch only the queue's rows. The reaper does, because it writes
/// `run.abandoned` and `run.retried` through the ledger in the same transaction as the rows it takes.
///
/// Every lease is judged by `clock_timestamp()` on the server: a node's heartbeat and the reaper's
/// "now" come from one clock.
public final class PostgresRunQueue: RunQueue {
    public let store: PostgresAuditStore
    private var backend: PostgresAuditBackend { store.backend }

    public init(store: PostgresAuditStore) {
        self.store = store
    }

    /// RFC 3339 UTC with milliseconds, as the trail writes its times.
    private static func text(_ column: String) -> String {
        "to_char(\(column) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
    }

    static let columns = """
        q.runId, q.principal, q.request, q.requiredLabels::text, q.retries, q.attempt, q.retryOf, q.retriedBy, q.state, q.node, \
        q.submittedOn, \(text("q.submittedAt")), \(text("q.claimedAt")), \(text("q.finishedAt")), q.report, q.cancelRequested, q.endReason
        """

    /// A lease still runs while `heartbeatAt + leaseSeconds` is in the future on the server's clock.
    static let leaseLive = "n.heartbeatAt + make_interval(secs => n.leaseSeconds) > clock_timestamp()"

    // MARK: nodes

    public func register(_ node: QueueNode) throws(AuditError) -> NodeLease {
        try validate(node)
        let incarnation = Self.newIncarnation()
        return try backend.pool.withSessionTyped { (session) throws(AuditError) -> NodeLease in
            var binds = PostgresBindings()
            binds.append(node.name)
            binds.append(NodeLabels.json(node.labels))
            binds.append(Int32(node.capacity))
            binds.append(Int32(node.leaseSeconds))
            binds.append(incarnation)
            binds.append(node.hostId)
            // Taken over only when the previous holder's lease has run out: two live processes never
            // share a name (their claims would be indistinguishable).
            let rows = try session.query("""
                INSERT INTO nodes AS n (name, labels, capacity, leaseSeconds, incarnation, hostId, startedAt, heartbeatAt)
                VALUES ($1, $2::jsonb, $3, $4, $5, $6, clock_timestamp(), clock_timestamp())
                ON CONFLICT (name) DO UPDATE SET labels = excluded.labels, capacity = excluded.capacity,
                    leaseSeconds = excluded.leaseSeconds, incarnation = excluded.incarnation, hostId = excluded.hostId,
                    startedAt = excluded.startedAt, heartbeatAt = excluded.heartbeatAt
                WHERE NOT (\(Self.leaseLive))
                RETURNING incarnation
                """, binds, "register node \(node.name)")
            guard rows.isEmpty else { return NodeLease(name: node.name, incarnation: incarnation) }
            var lookup = PostgresBindings()
            lookup.append(node.name)
            let holder = try session.query("""
                SELECT n.hostId, ceil(extract(epoch FROM n.heartbeatAt + make_interval(secs => n.leaseSeconds) - clock_timestamp()))::bigint
                FROM nodes n WHERE n.name = $1
                """, lookup, "read node \(node.name)").first
            let (host, seconds) = try holder.map { (row) throws(AuditError) in
                try PostgresRows.decode(row, session) { try $0.decode((String, Int64).self) }
            } ?? ("?", Int64(0))
            throw AuditError(.nodeInUse, path: session.store,
                             "node \(node.name) is registered by a live process on host \(host) (its lease runs \(max(seconds, 0)) s more): stop that node, or wait for its lease to run out, or choose another --node name")
        }
    }

    /// Renews the lease, and says whether it had run out first (judged in the same statement, on the
    /// store's clock): a node stalled past its lease, whose runs another node's reaper may have taken
    /// meanwhile, learns it at once and gives them up, and goes on with the lease renewed.
    @discardableResult
    public func heartbeat(_ lease: NodeLease) throws(AuditError) -> Bool {
        var binds = PostgresBindings()
        binds.append(lease.name)
        binds.append(lease.incarnation)
        let lapsed = try backend.pool.withSessionTyped { (session) throws(AuditError) -> Bool? in
            let rows = try session.query("""
                WITH before AS (
                    SELECT NOT (\(Self.leaseLive)) AS lapsed FROM nodes n WHERE n.name = $1 AND n.incarnation = $2 FOR UPDATE
                )
                UPDATE nodes n SET heartbeatAt = clock_timestamp() FROM before
                WHERE n.name = $1 AND n.incarnation = $2 RETURNING before.lapsed
                """, binds, "heartbeat node \(lease.name)")
            return try rows.first.map { (row) throws(AuditError) in try PostgresRows.decode(row, session) { try $0.decode(Bool.self) } }
        }
        guard let lapsed else {
            throw AuditError(.nodeReplaced, path: backend.location,
                             "node \(lease.name) was registered again by another process (or removed) after its lease ran out: this process must stop claiming; restart it")
        }
        return lapsed
    }

    public func leave(_ lease: NodeLease) throws(AuditError) {
        try query("DELETE FROM nodes WHERE name = $1 AND incarnation = $2", [lease.name, lease.incarnation], "remove node \(lease.name)")
    }

    // MARK: runs

    public func enqueue(_ submission: QueueSubmission) throws(AuditError) {
        guard (0...10).contains(submission.retries) else {
            throw AuditError(.invalidArgument, path: backend.location, "retries must be 0 to 10, not \(submission.retries)")
        }
        try validateLabels(submission.requiredLabels, "required label")
        var binds = PostgresBindings()
        binds.append(submission.runId)
        binds.append(submission.principal)
        binds.append(submission.request)
        binds.append(NodeLabels.json(submission.requiredLabels))
        binds.append(Int32(submission.retries))
        binds.append(submission.submittedOn)
        do {
            try backend.pool.withSessionTyped { (session) throws(AuditError) in
                // Notified on commit: listening nodes claim at once instead of at their next poll.
                _ = try session.query("""
                    WITH queued AS (
                        INSERT INTO run_queue (runId, principal, request, requiredLabels, retries, attempt, state, submittedOn, submittedAt)
                        VALUES ($1, $2, $3, $4::jsonb, $5, 1, 'queued', $6, clock_timestamp()) RETURNING runId
                    )
                    SELECT pg_notify('\(Self.notifyChannel)', runId) FROM queued
                    """, binds, "queue run \(submission.runId)")
            }
        } catch where error.code == .constraint {
            throw AuditError(.duplicateRun, path: backend.location, "a run with id \(submission.runId) is already queued; run ids must be unique")
        }
    }

    public func claim(_ lease: NodeLease, limit: Int) throws(AuditError) -> [QueuedRun] {
        guard limit > 0 else { return [] }
        var binds = PostgresBindings()
        binds.append(lease.name)
        binds.append(lease.incarnation)
        binds.append(Int64(limit))
        // The node's labels and capacity come from its registration, read in the same statement; a
        // node past its lease or replaced claims nothing.
        return try backend.pool.withSessionTyped { (session) throws(AuditError) -> [QueuedRun] in
            try session.query("""
                WITH me AS (
                    SELECT n.labels, n.capacity FROM nodes n
                    WHERE n.name = $1 AND n.incarnation = $2 AND \(Self.leaseLive)
                ), room AS (
                    SELECT greatest(0, least($3, me.capacity - (SELECT count(*) FROM run_queue WHERE node = $1 AND state = 'claimed'))) AS n
                    FROM me
                ), picked AS (
                    SELECT q.runId FROM run_queue q, me
                    WHERE q.state = 'queued' AND q.requiredLabels <@ me.labels
                    ORDER BY q.seq
                    LIMIT (SELECT coalesce((SELECT n FROM room), 0))
                    FOR UPDATE OF q SKIP LOCKED
                )
                UPDATE run_queue q SET state = 'claimed', node = $1, incarnation = $2, claimedAt = clock_timestamp()
                FROM picked WHERE q.runId = picked.runId
                RETURNING \(Self.columns)
                """, binds, "claim runs for node \(lease.name)")
                .map { (row) throws(AuditError) in try Self.queuedRun(row, session) }
                .sorted { $0.submittedAt == $1.submittedAt ? $0.runId < $1.runId : $0.submittedAt < $1.submittedAt }
        }
    }

    public func finish(runId: String, lease: NodeLease, report: String) throws(AuditError) {
        let rows = try query("""
            UPDATE run_queue SET state = 'finished', report = $4, finishedAt = clock_timestamp()
            WHERE runId = $1 AND state = 'claimed' AND node = $2 AND incarnation = $3 RETURNING runId
            """, [runId, lease.name, lease.incarnation, report], "record the end of run \(runId)")
        guard rows.isEmpty else { return }
        let now = try run(id: runId)
        let why = now.map { "it is \($0.state.rawValue)\($0.node.map { " (node \($0))" } ?? "")\($0.endReason.map { ", \($0)" } ?? "")" }
            ?? "it was never queued"
        throw AuditError(.notClaimed, path: backend.location,
                         "run \(runId) is not held by node \(lease.name) in this process: \(why); its report was not recorded in the queue")
    }

    public func requestCancel(runId: String) throws(AuditError) -> QueueCancel {
        var binds = PostgresBindings()
        binds.append(runId)
        // One statement: a queued row is cancelled, a claimed one flagged; what it was decides the answer.
        let (stateText, node) = try backend.pool.withSessionTyped { (session) throws(AuditError) -> (String, String?) in
            let rows = try session.query("""
            WITH before AS (SELECT runId, state, node FROM run_queue WHERE runId = $1 FOR UPDATE)
            UPDATE run_queue q SET
                state = CASE WHEN before.state = 'queued' THEN 'cancelled' ELSE q.state END,
                finishedAt = CASE WHEN before.state = 'queued' THEN clock_timestamp() ELSE q.finishedAt END,
                endReason = CASE WHEN before.state = 'queued' THEN 'cancelled' ELSE q.endReason END,
                cancelRequested = q.cancelRequested OR before.state IN ('queued', 'claimed')
            FROM before WHERE q.runId = before.runId
            RETURNING before.state, before.node
            """, binds, "cancel run \(runId)")
            guard let row = rows.first else {
                throw AuditError(.unknownRun, path: session.store, "no run with id \(runId) is in the queue")
            }
            return try PostgresRows.decode(row, session) { try $0.decode((String, String?).self) }
        }
        let state = try Self.state(stateText, runId)
        switch state {
        case .queued: return .cancelled
        case .claimed: return .requested(node: node ?? "?")
        default: return .ended(state)
        }
    }

    public func cancelRequests(_ lease: NodeLease) throws(AuditError) -> [String] {
        try backend.pool.withSessionTyped { (session) throws(AuditError) -> [String] in
            var binds = PostgresBindings()
            binds.append(lease.name)
            binds.append(lease.incarnation)
            return try session.query("""
                SELECT runId FROM run_queue WHERE node = $1 AND incarnation = $2 AND state = 'claimed' AND cancelRequested ORDER BY seq
                """, binds, "read the cancellations for node \(lease.name)")
                .map { (row) throws(AuditError) in try PostgresRows.decode(row, String.self, session) }
        }
    }

    public func run(id: String) throws(AuditError) -> QueuedRun? {
        try backend.pool.withSessionTyped { (session) throws(AuditError) -> QueuedRun? in
            var binds = PostgresBindings()
            binds.append(id)
            return try session.query("SELECT \(Self.columns) FROM run_queue q WHERE q.runId = $1", binds, "read queued run \(id)").first
                .map { (row) throws(AuditError) in try Self.queuedRun(row, session) }
        }
    }

    public func runs(after: String?, limit: Int, state: QueuedRunState?) throws(AuditError) -> [QueuedRun] {
        try backend.pool.withSessionTyped { (session) throws(AuditError) -> [QueuedRun] in
            var binds = PostgresBindings()
            binds.append(after)
            binds.append(state?.rawValue)
            binds.append(Int64(max(0, limit)))
            return try session.query("""
                SELECT \(Self.columns) FROM run_queue q
                WHERE ($1::text IS NULL OR q.runId > $1) AND ($2::text IS NULL OR q.state = $2)
                ORDER BY q.runId LIMIT $3
                """, binds, "list queued runs")
                .map { (row) throws(AuditError) in try Self.queuedRun(row, session) }
        }
    }

    public func counts() throws(AuditError) -> QueueCounts {
        try backend.pool.withSessionTyped { (session) throws(AuditError) -> QueueCounts in
            var queued = 0
            var claimed: [String: Int] = [:]
            for row in try session.query("""
                SELECT state, coalesce(node, ''), count(*) FROM run_queue WHERE state IN ('queued', 'claimed') GROUP BY 1, 2
                """, "count queued runs") {
                let (state, node, count) = try PostgresRows.decode(row, session) { try $0.decode((String, String, Int64).self) }
                if state == "queued" { queued += Int(count) } else { claimed[node, default: 0] += Int(count) }
            }
            return QueueCounts(queued: queued, claimed: claimed)
        }
    }

    // MARK: the reaper

    public func reap(by lease: NodeLease, newRunId: () -> String) throws(AuditError) -> [QueueReaping] {
        var reapings: [QueueReaping] = []
        var taken: [RunAbandonment] = []
        let audited = try store.abandonRuns(markedByNode: lease.name) { (tx) throws(AuditError) -> [RunAbandonment] in
            reapings = []
            taken = []
            let session = tx.session
            // Rows another reaper is taking right now are skipped; it records them.
            let rows = try session.query("""
                SELECT q.runId, q.node, q.attempt, q.retries, q.cancelRequested,
                       CASE WHEN n.name IS NULL THEN 'node-left' WHEN n.incarnation <> q.incarnation THEN 'node-restarted'
                            ELSE 'lease-expired' END
                FROM run_queue q LEFT JOIN nodes n ON n.name = q.node
                WHERE q.state = 'claimed' AND (n.name IS NULL OR n.incarnation <> q.incarnation OR NOT (\(Self.leaseLive)))
                ORDER BY q.seq
                FOR UPDATE OF q SKIP LOCKED
                """, "find the runs of nodes whose lease expired")
            for row in rows {
                let (runId, node, attempt, retries, cancelRequested, reason) = try PostgresRows.decode(row, session) {
                    try $0.decode((String, String, Int32, Int32, Bool, String).self)
                }
                var binds = PostgresBindings()
                binds.append(runId)
                if try tx.runState(runId: runId) == .finished {
                    binds.append("finished-without-report")
                    try session.query("""
                        UPDATE run_queue SET state = 'finished', finishedAt = clock_timestamp(), endReason = $2 WHERE runId = $1
                        """, binds, "record run \(runId) as finished")
                    reapings.append(QueueReaping(runId: runId, node: node, reason: reason, attempt: Int(attempt), action: .finishedWithoutReport))
                    continue
                }
                var retryRunId: String?
                // A run somebody asked to cancel is never tried again.
                if attempt <= retries && !cancelRequested {
                    let retry = newRunId()
                    var insert = PostgresBindings()
                    insert.append(retry)
                    insert.append(runId)
                    try session.query("""
                        WITH queued AS (
                            INSERT INTO run_queue (runId, principal, request, requiredLabels, retries, attempt, retryOf, state, submittedOn, submittedAt)
                            SELECT $1, principal, request, requiredLabels, retries, attempt + 1, runId, 'queued', submittedOn, clock_timestamp()
                            FROM run_queue WHERE runId = $2 RETURNING runId
                        )
                        SELECT pg_notify('\(Self.notifyChannel)', runId) FROM queued
                        """, insert, "queue a new attempt of run \(runId)")
                    retryRunId = retry
                }
                binds.append(reason)
                binds.append(retryRunId)
                try session.query("""
                    UPDATE run_queue SET state = 'abandoned', finishedAt = clock_timestamp(), endReason = $2, retriedBy = $3 WHERE runId = $1
                    """, binds, "record run \(runId) as abandoned")
                taken.append(RunAbandonment(runId: runId, node: node, reason: reason, attempt: Int(attempt), retries: Int(retries),
                                            retryRunId: retryRunId))
            }
            return taken
        }
        return reapings + taken.map { run in
            let wasRunning = audited.contains(run.runId)
            let action: QueueReaping.Action = run.retryRunId.map { .retried(runId: $0, attempt: run.attempt + 1, audited: wasRunning) }
                ?? .abandoned(audited: wasRunning)
            return QueueReaping(runId: run.runId, node: run.node, reason: run.reason, attempt: run.attempt, action: action)
        }
    }

    // MARK: notifications

    /// The channel every enqueue (and every retry the reaper queues) notifies, with the run id.
    public static let notifyChannel = "stockade_run_queue"

    /// Calls `wake` each time a run is queued on the store, by any node, until the calling task is
    /// cancelled (then it returns) or the connection breaks (then it throws). It holds one connection
    /// of its own, beside the pool's. Claims never depend on it: it only shortens the wait for the
    /// next poll.
    public func listenForQueuedRuns(_ wake: @escaping @Sendable () -> Void) async throws {
        let session = try backend.pool.dedicatedSession()
        defer { session.close() }
        do {
            try await session.connection.listen(on: Self.notifyChannel) { notifications in
                for try await _ in notifications { wake() }
            }
        } catch is CancellationError {
            return
        } catch {
            if Task.isCancelled { return }
            throw PostgresErrors.map(error, doing: "listen for queued runs", store: session.store)
        }
    }

    // MARK: internals

    private func validate(_ node: QueueNode) throws(AuditError) {
        if let problem = NodeLabels.nameProblem(node.name) {
            throw AuditError(.invalidArgument, path: backend.location, "node name \"\(node.name)\": \(problem)")
        }
        try validateLabels(node.labels, "label")
        guard node.capacity >= 1, node.capacity <= 10_000 else {
            throw AuditError(.invalidArgument, path: backend.location, "node capacity must be 1 to 10000, not \(node.capacity)")
        }
        guard node.leaseSeconds >= 1, node.leaseSeconds <= 86_400 else {
            throw AuditError(.invalidArgument, path: backend.location, "node lease must be 1 to 86400 seconds, not \(node.leaseSeconds)")
        }
    }

    private func validateLabels(_ labels: [String: String], _ what: String) throws(AuditError) {
        guard labels.count <= NodeLabels.maxCount else {
            throw AuditError(.invalidArgument, path: backend.location, "\(labels.count) labels: at most \(NodeLabels.maxCount)")
        }
        for (key, value) in labels {
            if let problem = NodeLabels.keyProblem(key) {
                throw AuditError(.invalidArgument, path: backend.location, "\(what) key \"\(key)\": \(problem)")
            }
            if let problem = NodeLabels.valueProblem(value) {
                throw AuditError(.invalidArgument, path: backend.location, "\(what) \(key): value \"\(value)\": \(problem)")
            }
        }
    }

    @discardableResult
    private func query(_ sql: String, _ values: [String], _ doing: String) throws(AuditError) -> [PostgresRow] {
        var binds = PostgresBindings()
        for value in values { binds.append(value) }
        return try backend.pool.withSessionTyped { (session) throws(AuditError) -> [PostgresRow] in
            try session.query(sql, binds, doing)
        }
    }

    private static func state(_ text: String, _ runId: String) throws(AuditError) -> QueuedRunState {
        guard let state = QueuedRunState(rawValue: text) else {
            throw AuditError(.corruptRow, path: nil, "queued run \(runId) has the unknown state \(text); the row was edited by hand")
        }
        return state
    }

    static func queuedRun(_ row: PostgresRow, _ session: PostgresSession) throws(AuditError) -> QueuedRun {
        let (head, tail) = try PostgresRows.decode(row, session) { row in
            (try row.decode((String, String?, String, String, Int32, Int32, String?, String?, String).self),
             try row.decode((String?, String?, String, String?, String?, String?, Bool, String?).self, startingAt: 9))
        }
        let (runId, principal, request, labelsText, retries, attempt, retryOf, retriedBy, stateText) = head
        let (node, submittedOn, submittedAt, claimedAt, finishedAt, report, cancelRequested, endReason) = tail
        guard let labels = NodeLabels.decode(labelsText) else {
            throw AuditError(.corruptRow, path: session.store, "queued run \(runId) has required labels that are not an object of strings: \(labelsText)")
        }
        return QueuedRun(runId: runId, principal: principal, request: request, requiredLabels: labels, retries: Int(retries),
                         attempt: Int(attempt), retryOf: retryOf, retriedBy: retriedBy, state: try state(stateText, runId), node: node,
                         submittedOn: submittedOn, submittedAt: submittedAt, claimedAt: claimedAt, finishedAt: finishedAt, report: report,
                         cancelRequested: cancelRequested, endReason: endReason)
    }

    /// 128 random bits (the system generator: getrandom), hex: tells this start of a node from every
    /// other start under the same name.
    private static func newIncarnation() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<2).map { _ in
            let text = String(generator.next() as UInt64, radix: 16)
            return String(repeating: "0", count: 16 - text.count) + text
        }.joined()
    }
}
