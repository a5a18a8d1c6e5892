import Glibc
import Synchronization

/// Bounds the calls a peer makes without an authenticated caller: health checks, unknown routes,
/// missing or refused tokens. Each costs an `api.request` row and needs nothing to send, so one
/// client could otherwise fill the trail's disk (1 300 rows a second measured from one client).
/// A token bucket per peer (its IP address; every Unix-socket peer shares one, the socket being
/// the operators' group's): `burst` calls at once, `perSecond` after. A call over it is answered
/// 429 `rate-limited` and not recorded on its own; the calls refused so are counted, and the count
/// is recorded as one `api.throttled` row per peer at most every `reportSeconds`. A call with a
/// valid token is never limited here (`--max-per-principal` bounds those callers' runs).
final class AnonymousLimiter: Sendable {
    static let burst = 60.0
    static let perSecond = 20.0
    static let reportSeconds = 10
    /// Peers remembered at once; past it, buckets that have filled up again are forgotten, and if
    /// none has, new peers share one bucket (`other`) until some do.
    static let maxPeers = 4096

    struct Bucket {
        var tokens: Double
        var at: UInt64
        var refused = 0
        var reporting = false
    }

    private let buckets = Mutex<[String: Bucket]>([:])
    /// Records `calls` refused from `peer` over the last `seconds`.
    private let report: @Sendable (_ peer: String, _ calls: Int, _ seconds: Int) -> Void

    init(report: @escaping @Sendable (_ peer: String, _ calls: Int, _ seconds: Int) -> Void) {
        self.report = report
    }

    static func nowNs() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// True when `peer` may make one more call now; false (and the call counted) when it may not.
    func admit(_ peer: String) -> Bool {
        let now = Self.nowNs()
        var startReport = false
        var key = peer
        let admitted = buckets.withLock { all -> Bool in
            if all[key] == nil && all.count >= Self.maxPeers {
                all = all.filter { !Self.isFull($0.value, now: now) || $0.value.reporting }
                if all.count >= Self.maxPeers { key = "other" }
            }
            var bucket = all[key] ?? Bucket(tokens: Self.burst, at: now)
            bucket.tokens = min(Self.burst, bucket.tokens + Double(now &- bucket.at) / 1e9 * Self.perSecond)
            bucket.at = now
            let ok = bucket.tokens >= 1
            if ok {
                bucket.tokens -= 1
            } else {
                bucket.refused += 1
                if !bucket.reporting {
                    bucket.reporting = true
                    startReport = true
                }
            }
            all[key] = bucket
            return ok
        }
        if startReport {
            let reportKey = key
            Task.detached { [self] in
                try? await Task.sleep(for: .seconds(Self.reportSeconds))
                flush(reportKey)
            }
        }
        return admitted
    }

    /// Records what was refused from `peer` since its last report.
    func flush(_ peer: String) {
        let refused = buckets.withLock { all -> Int in
            guard var bucket = all[peer] else { return 0 }
            let count = bucket.refused
            bucket.refused = 0
            bucket.reporting = false
            all[peer] = bucket
            return count
        }
        if refused > 0 { report(peer, refused, Self.reportSeconds) }
    }

    /// Records every peer's count not yet reported (at the service's stop).
    func flushAll() {
        let peers = buckets.withLock { all in all.filter { $0.value.refused > 0 }.map(\.key) }
        for peer in peers { flush(peer) }
    }

    static func isFull(_ bucket: Bucket, now: UInt64) -> Bool {
        bucket.tokens + Double(now &- bucket.at) / 1e9 * perSecond >= burst
    }
}
