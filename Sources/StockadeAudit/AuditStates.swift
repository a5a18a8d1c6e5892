/// The states and verdicts the ledger's rows take. Raw values are the strings stored in the database
/// and printed by the CLI; the public `AuditStore` API keeps taking and returning those strings, and
/// the ledger parses them at its edge so the transition rules below are checked on typed values.

/// `runs.state`: a run is begun `running` and ends exactly once, `finished` by its supervisor or
/// `abandoned` by a later one that found its supervisor gone.
public enum AuditRunState: String, CaseIterable, Sendable {
    case running, finished, abandoned
}

/// `bundles.role`.
public enum BundleRole: String, CaseIterable, Sendable {
    case request, result
}

/// `bundles.status`, which also names the event: `bundle.accepted` or `bundle.rejected`.
public enum BundleStatus: String, CaseIterable, Sendable {
    case accepted, rejected

    var eventKind: AuditEventKind {
        switch self {
        case .accepted: .bundleAccepted
        case .rejected: .bundleRejected
        }
    }
}

/// `diffs.verdict`: the path guard's verdict on a diff when it was recorded.
public enum DiffVerdict: String, CaseIterable, Sendable {
    case passed, rejected
}

/// `diffs.state`, the review queue. A passed diff starts `pending`, a rejected one `rejected` (by the
/// guard). Only `pending` and `conflict` can be decided; only an `accepted` diff not yet applied can be
/// applied or fall into `conflict`.
public enum DiffState: String, CaseIterable, Sendable {
    case pending, accepted, rejected, conflict

    /// A review decision may move the diff out of this state.
    var isDecidable: Bool { self == .pending || self == .conflict }
}

/// A reviewer's decision, recorded as the diff's new state and in `review.decided`.
public enum ReviewDecision: String, CaseIterable, Sendable {
    case accepted, rejected

    var state: DiffState {
        switch self {
        case .accepted: .accepted
        case .rejected: .rejected
        }
    }
}
