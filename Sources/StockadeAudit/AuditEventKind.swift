/// The kinds of event the trail holds (docs/CONTRACT.md, "Event kinds"): `audit events --kind`
/// refuses any other, so a typo is an error rather than an empty answer.
public enum AuditEventKind {
    public static let known: [String] = [
        "run.created", "bundle.accepted", "bundle.rejected", "worker.started", "violation", "limit.hit", "kill",
        "worker.exited", "diff.recorded", "diff.rejected", "review.decided", "diff.applied", "diff.conflict",
        "run.finished", "run.abandoned", "verification", "egress.allowed", "egress.denied", "api.request",
    ]
}
