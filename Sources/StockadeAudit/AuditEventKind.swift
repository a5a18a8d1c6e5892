/// The kinds of event the trail holds (docs/CONTRACT.md, "Event kinds"); the raw values are the
/// strings stored in `events.kind`. `audit events --kind` refuses any other, so a typo is an error
/// rather than an empty answer. The store itself appends any kind a caller names: the ledger writes
/// its own kinds through these cases, the supervisor the rest by name.
public enum AuditEventKind: String, CaseIterable, Sendable {
    case runCreated = "run.created"
    case bundleAccepted = "bundle.accepted"
    case bundleRejected = "bundle.rejected"
    case workerStarted = "worker.started"
    case violation = "violation"
    case limitHit = "limit.hit"
    case kill = "kill"
    case workerExited = "worker.exited"
    case diffRecorded = "diff.recorded"
    case diffRejected = "diff.rejected"
    case reviewDecided = "review.decided"
    case diffApplied = "diff.applied"
    case diffConflict = "diff.conflict"
    case runFinished = "run.finished"
    case runAbandoned = "run.abandoned"
    /// The run queue queued a new attempt of a run whose node died (the request allowed retries).
    case runRetried = "run.retried"
    case verification = "verification"
    /// A connection the egress proxy is about to relay (`egress.allowed` follows when it ends).
    case egressOpened = "egress.opened"
    case egressAllowed = "egress.allowed"
    case egressDenied = "egress.denied"
    /// A call to the service's API (`stockade serve`).
    case apiRequest = "api.request"
    /// Calls the service refused, without a row each, from a peer over its bound for calls
    /// without a valid token: one row with their count.
    case apiThrottled = "api.throttled"
    /// `stockade token create`: a bearer token for the API was made (never the token or its hash).
    case tokenCreated = "token.created"
    /// `stockade token revoke`.
    case tokenRevoked = "token.revoked"

    /// Every kind's stored name, in declaration order.
    public static let known: [String] = allCases.map(\.rawValue)
}
