/// The storage seam beneath `AuditLedger`: rows in, rows out, and a writer transaction. A backend holds
/// no rule of the trail (no hashing, no state machine, no redaction); `AuditLedger` holds them all, so
/// SQLite and a later PostgreSQL backend keep one chain format and one set of transitions.
///
/// What a backend must guarantee:
/// - `withTransaction` is exclusive among writers of the same store, in every process and on every
///   host that shares it, from the first read to the commit. The ledger reads the chain head and the
///   rows it checks inside it, so two appenders can never build on the same head.
/// - All or nothing: when `body` throws, nothing it wrote is kept.
/// - The reads (`events`, `runs`, `scanChain`, `allRows`) each see one consistent snapshot, never hold the
///   writers' lock for their whole length, and allow their `body` to call back into the ledger.
public protocol AuditBackend: Sendable {
    associatedtype Transaction: AuditTransaction

    /// Names the store in error messages: a path, or a URL without credentials.
    var location: String { get }

    /// Runs `body` as one exclusive write transaction and commits it. A `durable` commit is on stable
    /// storage (with every earlier one) when this returns; others may be lost by a power cut but never
    /// leave the store inconsistent. The transaction value is only valid inside `body`.
    func withTransaction<T: Sendable>(durable: Bool, _ body: (Transaction) throws(AuditError) -> T) throws(AuditError) -> T

    /// As `withTransaction(durable: true, body)`, durable with every earlier commit when it returns,
    /// except that other readers may see the commit a moment before it is on stable storage, so that
    /// callers committing at once can share one flush (a group commit). For a commit whose early
    /// sight loses nothing: a run's finish, whose caller answers only once it returns.
    func withGroupCommittedTransaction<T: Sendable>(_ body: (Transaction) throws(AuditError) -> T) throws(AuditError) -> T

    func diff(id: Int64) throws(AuditError) -> DiffRecord?

    /// Diffs in id order, all of them or those in `state`.
    func diffs(state: DiffState?) throws(AuditError) -> [DiffRecord]

    /// One run's diffs, in id order (only its rows are read: a receipt needs no other run's diffs).
    func diffs(runId: String) throws(AuditError) -> [DiffRecord]

    /// Events matching `query`, in `seq` order.
    func events(_ query: AuditEventQuery, _ body: (AuditEvent) throws -> Void) throws

    /// Runs in creation order (`createdAt`, then `runId`).
    func runs(_ body: (AuditRunRecord) throws -> Void) throws

    /// Every event in `seq` order until `visit` returns false, then the chain head row (nil when the
    /// row is missing), all read in one snapshot so that the head matches the events seen.
    func scanChain(_ visit: (AuditEvent) -> Bool) throws(AuditError) -> AuditChainHead?

    /// Every row of the trail, for `stockade audit export`, in one read snapshot: the runs (creation
    /// order), bundles and diffs (id order), events (`seq` order), then the chain head row (nil when
    /// it is missing). Streams: memory holds one row (one page on a server), never the whole trail.
    func allRows(_ body: (AuditRow) throws -> Void) throws -> AuditChainHead?
}

/// The reads and writes of one write transaction. The ledger checks every precondition (the run
/// exists, the diff is in the right state) by reading first, so the writes are plain: they change the
/// row they are given and nothing else.
public protocol AuditTransaction {
    /// The chain head row: seq 0 and the genesis hash on an empty store; nil when the row is missing.
    func chainHead() throws(AuditError) -> AuditChainHead?
    func setChainHead(_ head: AuditChainHead) throws(AuditError)
    /// The highest `runSeq` among the events of `runId` (of events without a run when nil); 0 when none.
    func lastRunSeq(runId: String?) throws(AuditError) -> Int64
    /// Stores one event exactly as given (the ledger computed its seq, runSeq and hashes).
    func insertEvent(_ event: AuditEvent) throws(AuditError)

    /// The state of run `runId`, nil when there is no such run.
    func runState(runId: String) throws(AuditError) -> AuditRunState?
    func insertRun(_ run: AuditRunRecord) throws(AuditError)
    func endRun(runId: String, _ ending: AuditRunEnding) throws(AuditError)
    /// Who owns each run in state `running`, in creation order.
    func runningRuns() throws(AuditError) -> [AuditRunOwner]

    /// Returns the new bundle's id.
    func insertBundle(_ bundle: AuditBundleRow) throws(AuditError) -> Int64

    /// Returns the new diff's id.
    func insertDiff(_ diff: AuditDiffRow) throws(AuditError) -> Int64
    func diff(id: Int64) throws(AuditError) -> DiffRecord?
    /// Writes the review columns of diff `diff.id` (state, decidedBy, note, decidedAt, appliedAt,
    /// conflict); its content, hash, verdict and creation time never change.
    func updateDiff(_ diff: DiffRecord) throws(AuditError)

    /// How many rows each table of the trail holds (`stockade audit import` writes only into an empty store).
    func rowCounts() throws(AuditError) -> AuditRowCounts
    /// Stores an exported bundle row exactly as given, its id included; later bundles get greater ids.
    func insertBundle(record: AuditBundleRecord) throws(AuditError)
    /// Stores an exported diff exactly as given, its id and review columns included; later diffs get greater ids.
    func insertDiff(record: DiffRecord) throws(AuditError)
}

/// Which events `AuditBackend.events` returns: all filters are optional and combine with AND.
public struct AuditEventQuery: Sendable, Equatable {
    public var runId: String?
    /// Only events with a greater `seq`.
    public var since: Int64?
    public var kind: String?

    public init(runId: String? = nil, since: Int64? = nil, kind: String? = nil) {
        self.runId = runId
        self.since = since
        self.kind = kind
    }
}

/// How a running run ended.
public struct AuditRunEnding: Sendable, Equatable {
    public let state: AuditRunState
    public let outcome: String?
    public let exitStatus: Int32?
    public let endedAt: String

    public init(state: AuditRunState, outcome: String?, exitStatus: Int32?, endedAt: String) {
        self.state = state
        self.outcome = outcome
        self.exitStatus = exitStatus
        self.endedAt = endedAt
    }
}

/// The supervisor that began a running run: enough to judge whether it is still alive.
public struct AuditRunOwner: Sendable, Equatable {
    public let runId: String
    public let supervisorPid: Int32
    public let supervisorStart: UInt64
    /// nil for rows written before runs recorded their host.
    public let hostId: String?

    public init(runId: String, supervisorPid: Int32, supervisorStart: UInt64, hostId: String?) {
        self.runId = runId
        self.supervisorPid = supervisorPid
        self.supervisorStart = supervisorStart
        self.hostId = hostId
    }
}

/// A new `bundles` row.
public struct AuditBundleRow: Sendable, Equatable {
    public let runId: String
    public let role: BundleRole
    public let status: BundleStatus
    public let reason: String?
    public let files: Int64
    public let bytes: Int64
    public let manifestSha256: String?
    public let createdAt: String

    public init(runId: String, role: BundleRole, status: BundleStatus, reason: String?, files: Int64, bytes: Int64,
                manifestSha256: String?, createdAt: String) {
        self.runId = runId
        self.role = role
        self.status = status
        self.reason = reason
        self.files = files
        self.bytes = bytes
        self.manifestSha256 = manifestSha256
        self.createdAt = createdAt
    }
}

/// A new `diffs` row, before the backend gives it an id.
public struct AuditDiffRow: Sendable, Equatable {
    public let runId: String
    public let sha256: String
    public let content: [UInt8]
    public let verdict: DiffVerdict
    public let reason: String?
    public let state: DiffState
    public let decidedBy: String?
    public let decidedAt: String?
    public let createdAt: String

    public init(runId: String, sha256: String, content: [UInt8], verdict: DiffVerdict, reason: String?, state: DiffState,
                decidedBy: String?, decidedAt: String?, createdAt: String) {
        self.runId = runId
        self.sha256 = sha256
        self.content = content
        self.verdict = verdict
        self.reason = reason
        self.state = state
        self.decidedBy = decidedBy
        self.decidedAt = decidedAt
        self.createdAt = createdAt
    }
}
