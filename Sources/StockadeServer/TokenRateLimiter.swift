import Synchronization

/// `stockade serve --max-calls-per-token N`: each token name may make N calls a second, in bursts
/// of up to N (a token bucket of N calls, refilled at N a second). `--max-per-principal` bounds a
/// token's runs and `--max-streams-per-token` its open streams; this bounds everything else a token
/// can make the service do, each call being at least a token check and an `api.request` row.
///
/// A call past the bound is answered 429 `rate-limited` before its handler runs, so it has no
/// effect, with the whole seconds until the token's next call is let through in `Retry-After`. It
/// is not recorded on its own, or a client looping on its refusals would write a row each time: it
/// is counted, and the count recorded as one `api.throttled` row naming the token at most every
/// `AnonymousLimiter.reportSeconds`, and at the service's stop.
///
/// One bucket per token name that made a call: names come only from valid tokens, so the table is
/// bounded by the tokens the store holds.
public final class TokenRateLimiter: Sendable {
    /// The flag's range; 0 is no bound (the default).
    public static let range = 0...100_000

    let perSecond: Double
    private let buckets = Mutex<[String: AnonymousLimiter.Bucket]>([:])
    /// Records `calls` refused to `principal` over the last `seconds`.
    private let report: @Sendable (_ principal: String, _ calls: Int, _ seconds: Int) -> Void

    /// nil when `perSecond` is 0 (no bound).
    init?(perSecond: Int, report: @escaping @Sendable (_ principal: String, _ calls: Int, _ seconds: Int) -> Void) {
        guard perSecond > 0 else { return nil }
        self.perSecond = Double(perSecond)
        self.report = report
    }

    /// nil when `principal` may make a call now (it is counted); else the whole seconds, at least 1,
    /// until its next call would be let through.
    func admit(_ principal: String) -> Int? {
        var startReport = false
        let wait: Int? = buckets.withLock { table in
            let now = AnonymousLimiter.nowNs()
            var bucket = table[principal] ?? AnonymousLimiter.Bucket(tokens: perSecond, at: now)
            bucket.refill(now: now, capacity: perSecond, perSecond: perSecond)
            defer { table[principal] = bucket }
            if bucket.tokens >= 1 {
                bucket.tokens -= 1
                return nil
            }
            startReport = bucket.count(now: now)
            return max(1, Int(((1 - bucket.tokens) / perSecond).rounded(.up)))
        }
        if startReport { AnonymousLimiter.afterReportDelay { [self] in flush(principal) } }
        return wait
    }

    /// Records what was refused to `principal` since its last report.
    func flush(_ principal: String) {
        let (refused, since, now) = buckets.withLock { table -> (Int, UInt64, UInt64) in
            let (count, since) = table[principal]?.takeCount() ?? (0, 0)
            return (count, since, AnonymousLimiter.nowNs())
        }
        if refused > 0 { report(principal, refused, AnonymousLimiter.windowSeconds(since: since, now: now)) }
    }

    /// Records every count not yet reported (at the service's stop).
    func flushAll() {
        for principal in buckets.withLock({ $0.filter { $0.value.refused > 0 }.map(\.key) }) { flush(principal) }
    }
}
