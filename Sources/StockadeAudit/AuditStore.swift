import StockadePolicy

/// The audit trail: runs, a hash-chained event stream, bundle verdicts and the diff review queue.
///
/// Every method that appends events does so in one write transaction, so an event and the rows it
/// describes become visible together, and the chain never forks, loses or duplicates a `seq` even when
/// several supervisors share the store. `AuditLedger` implements it over any `AuditBackend`;
/// `SQLiteAuditStore` (in StockadeAuditSQLite) is the ledger over the local SQLite backend.
public protocol AuditStore: Sendable {
    /// Registers secret values (profile secrets, values of env keys the profile marks secret): from then
    /// on every occurrence in a stored detail, command, reason, actor or note is replaced by `[redacted]`.
    func addSecrets(_ values: [String])

    /// A `runs` row in state `running` and the event `run.created`, in one transaction.
    func beginRun(runId: String, profile: String, profileDigest: String, command: [String], detail: JSONValue) throws(AuditError)

    /// Appends one event; returns its `seq`.
    @discardableResult
    func record(runId: String?, kind: String, detail: JSONValue) throws(AuditError) -> Int64

    /// Appends several events in one transaction (all or none).
    func recordMany(_ events: [(runId: String?, kind: String, detail: JSONValue)]) throws(AuditError)

    /// Appends `events` (as `recordMany` would), then moves a running run to `finished` with its
    /// outcome and appends `run.finished`, all in one durable transaction (all or none): a run whose
    /// last events come right before its end costs one commit, not two. Group-committed (see
    /// `AuditBackend.withGroupCommittedTransaction`): durable when it returns, perhaps seen by
    /// readers a moment before.
    func finishRun(runId: String, outcome: String, exitStatus: Int32, detail: JSONValue,
                   after events: [(runId: String?, kind: String, detail: JSONValue)]) throws(AuditError)

    /// A bundle verdict row (`role` request|result, `status` accepted|rejected) and the event
    /// `bundle.accepted` or `bundle.rejected`.
    func recordBundle(runId: String, role: String, status: String, reason: String?, files: Int, bytes: Int64,
                      manifestSha256: String?) throws(AuditError)

    /// Stores a run's diff with the path guard's verdict (`passed` or `rejected`) and appends
    /// `diff.recorded` (and `diff.rejected`) in the same transaction: the event is durable before
    /// the diff is visible to review. Returns the diff id.
    func recordDiff(runId: String, content: [UInt8], verdict: String, reason: String?) throws(AuditError) -> Int64

    /// Accepts or rejects a `pending` diff, or one in `conflict` (a retry after the workspace was fixed, or
    /// giving up on it), and appends `review.decided`. Fails naming the current state otherwise.
    func decide(diffId: Int64, accept: Bool, actor: String, note: String?) throws(AuditError) -> DiffRecord

    /// Records that an accepted diff was written to the workspace (`diff.applied`).
    func markApplied(diffId: Int64, detail: JSONValue) throws(AuditError)

    /// Records that an accepted diff could not be applied and nothing was written: the diff becomes
    /// `conflict` with the file, hunk and reason, and `diff.conflict` is appended.
    func markConflict(diffId: Int64, conflict: DiffConflict, detail: JSONValue) throws(AuditError)

    func diff(id: Int64) throws(AuditError) -> DiffRecord?

    /// Diffs in id order, all of them or those in `state` (pending|accepted|rejected|conflict).
    func diffs(state: String?) throws(AuditError) -> [DiffRecord]

    /// One run's diffs, in id order.
    func diffs(runId: String) throws(AuditError) -> [DiffRecord]

    /// Streams events in `seq` order, filtered by run, by `seq > since`, and by kind. `body` may call
    /// back into the store: the stream reads its own snapshot.
    func events(runId: String?, since: Int64?, kind: String?, _ body: (AuditEvent) throws -> Void) throws

    /// Streams runs in creation order.
    func runs(_ body: (AuditRunRecord) throws -> Void) throws

    /// Recomputes the hash chain and the sequence numbers from the first event to the last, and checks
    /// that every anchor (a chain head a verified checkpoint signed) is still in the chain: the event at
    /// its seq exists and has its hash. Without anchors nothing shows that events were cut from the end.
    func verifyChain(anchors: [AuditChainHead]) throws(AuditError) -> ChainVerification

    /// Marks `abandoned` every running run of this host whose supervisor (pid, start time) `isAlive`
    /// says is gone, with an event `run.abandoned`; returns their ids. A run another host began is never
    /// judged: its pid means nothing here.
    func markAbandoned(isAlive: (Int32, UInt64) -> Bool) throws(AuditError) -> [String]
}

extension AuditStore {
    /// Moves a running run to `finished` with its outcome, and appends `run.finished`.
    public func finishRun(runId: String, outcome: String, exitStatus: Int32, detail: JSONValue) throws(AuditError) {
        try finishRun(runId: runId, outcome: outcome, exitStatus: exitStatus, detail: detail, after: [])
    }

    /// The chain alone: proves the integrity of the events there are, not that none were cut from the end.
    public func verifyChain() throws(AuditError) -> ChainVerification {
        try verifyChain(anchors: [])
    }
}

/// The last event of the chain, as `verifyChain` reports it and a checkpoint signs it.
public struct AuditChainHead: Sendable, Equatable {
    public let seq: Int64
    /// The event's hash, lowercase hex SHA-256.
    public let hash: String

    public init(seq: Int64, hash: String) {
        self.seq = seq
        self.hash = hash
    }
}

/// One row of the event stream.
public struct AuditEvent: Sendable, Equatable {
    public let seq: Int64
    public let runId: String?
    /// 1, 2, 3… within the run (or among events without a run).
    public let runSeq: Int64
    public let kind: String
    /// RFC 3339, UTC, milliseconds: `2026-11-25T13:19:26.123Z`.
    public let at: String
    /// Canonical JSON (sorted keys, compact), exactly the text the hash covers.
    public let detail: String
    public let prevHash: String
    public let hash: String

    public init(seq: Int64, runId: String?, runSeq: Int64, kind: String, at: String, detail: String, prevHash: String, hash: String) {
        self.seq = seq
        self.runId = runId
        self.runSeq = runSeq
        self.kind = kind
        self.at = at
        self.detail = detail
        self.prevHash = prevHash
        self.hash = hash
    }

    /// The detail parsed back into a value (nil if the stored text is not JSON: a hand-edited row).
    public var detailValue: JSONValue? {
        try? StrictJSON.parse(Array(detail.utf8), limits: .init(maxBytes: Int.max, maxDepth: 64))
    }
}

/// One row of `runs`.
public struct AuditRunRecord: Sendable, Equatable {
    public let runId: String
    public let profile: String
    public let profileDigest: String
    public let command: [String]
    /// running | finished | abandoned
    public let state: String
    public let outcome: String?
    public let exitStatus: Int32?
    public let createdAt: String
    public let endedAt: String?
    public let supervisorPid: Int32
    public let supervisorStart: UInt64
    /// The host that began the run (`HostIdentity`); nil for runs recorded before runs carried it.
    public let hostId: String?

    public init(runId: String, profile: String, profileDigest: String, command: [String], state: String, outcome: String?,
                exitStatus: Int32?, createdAt: String, endedAt: String?, supervisorPid: Int32, supervisorStart: UInt64,
                hostId: String? = nil) {
        self.runId = runId
        self.profile = profile
        self.profileDigest = profileDigest
        self.command = command
        self.state = state
        self.outcome = outcome
        self.exitStatus = exitStatus
        self.createdAt = createdAt
        self.endedAt = endedAt
        self.supervisorPid = supervisorPid
        self.supervisorStart = supervisorStart
        self.hostId = hostId
    }
}

/// One diff in the review queue.
public struct DiffRecord: Sendable, Equatable {
    public let id: Int64
    public let runId: String
    /// Hex SHA-256 of `content`.
    public let sha256: String
    public let bytes: Int64
    public let content: [UInt8]
    /// passed | rejected: the path guard's verdict.
    public let verdict: String
    public let reason: String?
    /// pending | accepted | rejected | conflict
    public let state: String
    /// The actor of the decision (`guard` for a diff the path guard rejected, `auto` for autoAcceptDiffs).
    public let decidedBy: String?
    public let note: String?
    public let decidedAt: String?
    public let appliedAt: String?
    public let createdAt: String
    /// Why the last attempt to apply it failed; kept when a diff in conflict is rejected, cleared when it applies.
    public let conflict: DiffConflict?

    public init(id: Int64, runId: String, sha256: String, bytes: Int64, content: [UInt8], verdict: String, reason: String?,
                state: String, decidedBy: String?, note: String?, decidedAt: String?, appliedAt: String?, createdAt: String,
                conflict: DiffConflict? = nil) {
        self.conflict = conflict
        self.id = id
        self.runId = runId
        self.sha256 = sha256
        self.bytes = bytes
        self.content = content
        self.verdict = verdict
        self.reason = reason
        self.state = state
        self.decidedBy = decidedBy
        self.note = note
        self.decidedAt = decidedAt
        self.appliedAt = appliedAt
        self.createdAt = createdAt
    }
}

/// Where an accepted diff stopped applying: the file (as the diff names it), the hunk when a hunk's
/// lines no longer match (`hunk 2 (@@ -4,3 +4,4 @@)`), and the applier's reason.
public struct DiffConflict: Sendable, Equatable {
    public let file: String?
    public let hunk: String?
    public let reason: String

    public init(file: String?, hunk: String?, reason: String) {
        self.file = file
        self.hunk = hunk
        self.reason = reason
    }
}

/// The result of `verifyChain`.
public struct ChainVerification: Sendable, Equatable {
    public let eventsChecked: Int64
    /// The first `seq` at which the chain or the sequence numbers do not hold; nil when all hold.
    public let firstBrokenSeq: Int64?
    /// Why it is broken, naming what was expected.
    public let reason: String?
    /// The last event when the whole chain holds (nil when it is broken or empty): what a checkpoint signs.
    public let head: AuditChainHead?

    public var isValid: Bool { firstBrokenSeq == nil }

    public init(eventsChecked: Int64, firstBrokenSeq: Int64?, reason: String?, head: AuditChainHead? = nil) {
        self.eventsChecked = eventsChecked
        self.firstBrokenSeq = firstBrokenSeq
        self.reason = reason
        self.head = head
    }
}

/// A store that tells how long each of its write transactions took (every append, committed or
/// failed, lock waits included): what a service publishes as its audit write latency.
public protocol AuditWriteObserving: Sendable {
    /// Replaces the observer. It runs on the writing thread after each transaction: keep it cheap.
    func observeWrites(_ observer: @escaping @Sendable (Duration) -> Void)
}
