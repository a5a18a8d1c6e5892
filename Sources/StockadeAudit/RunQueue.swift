import StockadePolicy

/// The run queue that `stockade serve` nodes sharing one store work from: a run submitted to any node
/// is enqueued; each node claims queued runs its labels satisfy, up to its capacity, runs them, and
/// records the report; a node that stops heartbeating loses its runs to another node's reaper, which
/// marks them abandoned or, when the request asked for retries, queues a new attempt.
///
/// Every lease decision is taken on the store's clock, never on a node's: nodes on different hosts
/// need not agree on the time. Errors name the run or node and say what to do.
public protocol RunQueue: Sendable {
    /// Announces a node (at start): its labels, capacity and lease. Returns the lease that later calls
    /// present. Refused with `.nodeInUse` while another process holds the name and its lease is live.
    func register(_ node: QueueNode) throws(AuditError) -> NodeLease

    /// Extends the node's lease; true when the lease had already run out before this heartbeat (the
    /// node was stalled, or the store unreachable, past it): its runs may be another node's now, and it
    /// must give them up. `.nodeReplaced` when another process registered the name since.
    @discardableResult
    func heartbeat(_ lease: NodeLease) throws(AuditError) -> Bool

    /// Removes the node's row (a clean shutdown). Runs it still holds are then reaped like a dead node's.
    func leave(_ lease: NodeLease) throws(AuditError)

    /// Queues a run (attempt 1). `.duplicateRun` when the id is taken.
    func enqueue(_ submission: QueueSubmission) throws(AuditError)

    /// Claims, oldest first, at most `limit` queued runs whose required labels the node carries, and
    /// never more than the node's capacity minus the runs it holds. Never returns a run another claimer
    /// got: two claimers at once each skip the rows the other has locked. A node whose lease has expired
    /// (or that was replaced) claims nothing until it heartbeats again.
    func claim(_ lease: NodeLease, limit: Int) throws(AuditError) -> [QueuedRun]

    /// Records the end of a run this node holds: state `finished` with its report (JSON text).
    /// `.notClaimed` when the run is not held by this lease (reaped after the lease expired, or unknown).
    func finish(runId: String, lease: NodeLease, report: String) throws(AuditError)

    /// A queued run is cancelled at once (it never starts); a claimed one is flagged for its node, which
    /// polls `cancelRequests`. Unknown runs are `.unknownRun`.
    func requestCancel(runId: String) throws(AuditError) -> QueueCancel

    /// The runs this node holds whose cancellation was asked for.
    func cancelRequests(_ lease: NodeLease) throws(AuditError) -> [String]

    /// One run of the queue, nil when it never was queued.
    func run(id: String) throws(AuditError) -> QueuedRun?

    /// Runs in run-id order after `after`, at most `limit`, optionally in one state.
    func runs(after: String?, limit: Int, state: QueuedRunState?) throws(AuditError) -> [QueuedRun]

    /// How many runs are queued, and how many each node holds.
    func counts() throws(AuditError) -> QueueCounts

    /// Takes the claimed runs of every node whose lease has expired (or that restarted under a new
    /// lease, or left): a run whose request allows another attempt is queued again under a new id from
    /// `newRunId` (attempt + 1, linked both ways), the others become `abandoned`; the trail records
    /// `run.abandoned` for those it had running, and `run.retried` for each new attempt, in the same
    /// transaction as the queue's rows. A run the trail shows finished (its node died after recording
    /// the end, before the queue heard of it) becomes `finished` without a report and is never run again.
    func reap(by lease: NodeLease, newRunId: () -> String) throws(AuditError) -> [QueueReaping]
}

/// `run_queue.state`. `queued` → `claimed` → `finished` | `abandoned`; `queued` → `cancelled`.
public enum QueuedRunState: String, CaseIterable, Sendable {
    case queued, claimed, finished, abandoned, cancelled
}

/// What a node announces about itself.
public struct QueueNode: Sendable, Equatable {
    public let name: String
    /// Labels it carries (a run's required labels must be a subset).
    public let labels: [String: String]
    /// Runs it runs at once.
    public let capacity: Int
    /// Seconds after its last heartbeat that its runs may be taken by another node.
    public let leaseSeconds: Int
    /// The host it runs on (`HostIdentity`), shown to operators.
    public let hostId: String

    public init(name: String, labels: [String: String], capacity: Int, leaseSeconds: Int, hostId: String) {
        self.name = name
        self.labels = labels
        self.capacity = capacity
        self.leaseSeconds = leaseSeconds
        self.hostId = hostId
    }
}

/// A node's registration: its name and the incarnation (one per start) its claims are made under.
public struct NodeLease: Sendable, Equatable {
    public let name: String
    public let incarnation: String

    public init(name: String, incarnation: String) {
        self.name = name
        self.incarnation = incarnation
    }
}

/// A run to queue.
public struct QueueSubmission: Sendable, Equatable {
    public let runId: String
    /// The API token's name that submitted it, if any.
    public let principal: String?
    /// The request object as submitted (JSON text): what the claiming node runs.
    public let request: String
    /// Labels the node that runs it must carry.
    public let requiredLabels: [String: String]
    /// Further attempts allowed when a node dies under it (0…10).
    public let retries: Int
    /// The node whose API took the submission.
    public let submittedOn: String?

    public init(runId: String, principal: String?, request: String, requiredLabels: [String: String], retries: Int, submittedOn: String?) {
        self.runId = runId
        self.principal = principal
        self.request = request
        self.requiredLabels = requiredLabels
        self.retries = retries
        self.submittedOn = submittedOn
    }
}

/// One row of the queue.
public struct QueuedRun: Sendable, Equatable {
    public let runId: String
    public let principal: String?
    public let request: String
    public let requiredLabels: [String: String]
    public let retries: Int
    /// 1 for the first attempt, 2 for the retry of it, …
    public let attempt: Int
    /// The attempt this one retries.
    public let retryOf: String?
    /// The attempt that retries this one.
    public let retriedBy: String?
    public let state: QueuedRunState
    /// The node that claimed it.
    public let node: String?
    public let submittedOn: String?
    /// RFC 3339 UTC with milliseconds, on the store's clock.
    public let submittedAt: String
    public let claimedAt: String?
    public let finishedAt: String?
    /// The run report (JSON text) its node recorded.
    public let report: String?
    public let cancelRequested: Bool
    /// Why it ended without its node's report: `lease-expired`, `node-restarted`, `node-left`,
    /// `cancelled`, `finished-without-report`.
    public let endReason: String?

    public init(runId: String, principal: String?, request: String, requiredLabels: [String: String], retries: Int, attempt: Int,
                retryOf: String?, retriedBy: String?, state: QueuedRunState, node: String?, submittedOn: String?, submittedAt: String,
                claimedAt: String?, finishedAt: String?, report: String?, cancelRequested: Bool, endReason: String?) {
        self.runId = runId
        self.principal = principal
        self.request = request
        self.requiredLabels = requiredLabels
        self.retries = retries
        self.attempt = attempt
        self.retryOf = retryOf
        self.retriedBy = retriedBy
        self.state = state
        self.node = node
        self.submittedOn = submittedOn
        self.submittedAt = submittedAt
        self.claimedAt = claimedAt
        self.finishedAt = finishedAt
        self.report = report
        self.cancelRequested = cancelRequested
        self.endReason = endReason
    }
}

/// The answer to `requestCancel`.
public enum QueueCancel: Sendable, Equatable {
    /// It was queued: it is `cancelled` now and will never start.
    case cancelled
    /// `node` holds it; the flag is set and that node cancels it.
    case requested(node: String)
    /// It has ended already (`finished`, `abandoned`, `cancelled`).
    case ended(QueuedRunState)
}

public struct QueueCounts: Sendable, Equatable {
    public let queued: Int
    /// Claimed runs per node name.
    public let claimed: [String: Int]

    public init(queued: Int, claimed: [String: Int]) {
        self.queued = queued
        self.claimed = claimed
    }
}

/// One claimed run a reaper took from a node.
public struct QueueReaping: Sendable, Equatable {
    public enum Action: Sendable, Equatable {
        /// Marked abandoned; `audited` when the trail had it running (and now records `run.abandoned`).
        case abandoned(audited: Bool)
        /// Abandoned, and attempt `attempt` queued as `runId`.
        case retried(runId: String, attempt: Int, audited: Bool)
        /// The trail shows it finished: the queue row is `finished` without a report.
        case finishedWithoutReport
    }

    public let runId: String
    public let node: String
    /// `lease-expired`, `node-restarted` or `node-left`.
    public let reason: String
    public let attempt: Int
    public let action: Action

    public init(runId: String, node: String, reason: String, attempt: Int, action: Action) {
        self.runId = runId
        self.node = node
        self.reason = reason
        self.attempt = attempt
        self.action = action
    }
}

/// A run another node held that the trail must record as lost: what `AuditLedger.abandonRuns` writes.
public struct RunAbandonment: Sendable, Equatable {
    public let runId: String
    /// The node that held it.
    public let node: String
    public let reason: String
    public let attempt: Int
    public let retries: Int
    /// The new attempt's run id, when one was queued.
    public let retryRunId: String?

    public init(runId: String, node: String, reason: String, attempt: Int, retries: Int, retryRunId: String?) {
        self.runId = runId
        self.node = node
        self.reason = reason
        self.attempt = attempt
        self.retries = retries
        self.retryRunId = retryRunId
    }
}

/// Node names and labels: what `--node`, `--labels` and a request's `nodeLabels` accept.
public enum NodeLabels {
    /// At most this many labels on a node or a request.
    public static let maxCount = 32

    /// A node name: 1–63 of `a-z A-Z 0-9 . _ -`, not starting with `.` or `-`. Returns why not, or nil.
    public static func nameProblem(_ name: String) -> String? {
        tokenProblem(name, allowEmpty: false, extra: [])
    }

    /// Why `key` is not a label key (1–63 of `a-z A-Z 0-9 . _ - /`), or nil.
    public static func keyProblem(_ key: String) -> String? {
        tokenProblem(key, allowEmpty: false, extra: [UInt8(ascii: "/")])
    }

    /// Why `value` is not a label value (0–63 of `a-z A-Z 0-9 . _ -`), or nil.
    public static func valueProblem(_ value: String) -> String? {
        tokenProblem(value, allowEmpty: true, extra: [])
    }

    /// `k=v,k2=v2` (empty: no labels). Errors name the label.
    public static func parse(_ text: String) throws(AuditError) -> [String: String] {
        var labels: [String: String] = [:]
        guard !text.isEmpty else { return labels }
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            guard let equals = item.firstIndex(of: "=") else {
                throw AuditError(.invalidArgument, "label \"\(item)\" is not KEY=VALUE")
            }
            let key = String(item[..<equals])
            let value = String(item[item.index(after: equals)...])
            if let problem = keyProblem(key) { throw AuditError(.invalidArgument, "label key \"\(key)\": \(problem)") }
            if let problem = valueProblem(value) { throw AuditError(.invalidArgument, "label \(key): value \"\(value)\": \(problem)") }
            guard labels.updateValue(value, forKey: key) == nil else {
                throw AuditError(.invalidArgument, "label \(key) is given twice")
            }
        }
        guard labels.count <= maxCount else { throw AuditError(.invalidArgument, "\(labels.count) labels: at most \(maxCount)") }
        return labels
    }

    /// The labels as a JSON object (sorted keys): how the store keeps them.
    public static func json(_ labels: [String: String]) -> String {
        JSONValue.object(labels.mapValues { .string($0) }).serialized()
    }

    /// The stored JSON object back; nil when it is not an object of strings.
    public static func decode(_ text: String) -> [String: String]? {
        guard let value = try? StrictJSON.parse(Array(text.utf8), limits: .init(maxBytes: 1 << 20, maxDepth: 4)),
              let members = value.object else { return nil }
        var labels: [String: String] = [:]
        for (key, item) in members {
            guard let string = item.string else { return nil }
            labels[key] = string
        }
        return labels
    }

    private static func tokenProblem(_ text: String, allowEmpty: Bool, extra: Set<UInt8>) -> String? {
        let bytes = Array(text.utf8)
        if bytes.isEmpty { return allowEmpty ? nil : "must not be empty" }
        if bytes.count > 63 { return "is \(bytes.count) bytes long: at most 63" }
        if bytes[0] == UInt8(ascii: ".") || bytes[0] == UInt8(ascii: "-") { return "must not start with '.' or '-'" }
        for byte in bytes {
            let ok = (byte >= 0x61 && byte <= 0x7A) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x30 && byte <= 0x39)
                || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-") || extra.contains(byte)
            if !ok { return "only letters, digits, '.', '_', '-'\(extra.isEmpty ? "" : " and '/'") are allowed" }
        }
        return nil
    }
}
