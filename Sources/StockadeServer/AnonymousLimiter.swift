import Glibc
import NIOCore
import Synchronization

/// Bounds the audit rows of calls answered without an authenticated caller: health checks,
/// unknown routes, missing or refused tokens. None of them has an effect, each cost an
/// `api.request` row, and they need nothing to send, so one client could fill the trail's disk
/// (1 300 rows a second measured from one client). Such a call is always answered as usual (a
/// health check is never turned away); what is bounded is its row. A token bucket per peer (its
/// IPv4 address, its IPv6 /64, every Unix-socket peer one bucket): `burst` rows at once,
/// `perSecond` after; and one for all peers together (`allBurst`, `allPerSecond`), so that
/// many addresses do not multiply the bound. A call past either is not recorded on its own: it
/// is counted, and the count recorded as one `api.throttled` row per peer (`all` for the
/// overall bound) at most every `reportSeconds`, and at the service's stop.
final class AnonymousLimiter: Sendable {
    static let burst = 60.0
    static let perSecond = 20.0
    static let allBurst = 600.0
    static let allPerSecond = 200.0
    static let reportSeconds = 10
    /// Peers remembered at once. Past it, buckets that have filled up again are forgotten (looked
    /// for at most once a second); a new peer while none has is counted under `all`.
    static let maxPeers = 4096
    static let everyone = "all"

    struct Bucket {
        var tokens: Double
        var at: UInt64
        var refused = 0
        var reporting = false
        /// When the first call of the count being reported was refused.
        var since: UInt64 = 0

        /// Refilled to `now`, never past `capacity`; a clock read before another thread's later
        /// one counts as no time at all.
        mutating func refill(now: UInt64, capacity: Double, perSecond: Double) {
            if now > at {
                tokens = min(capacity, tokens + Double(now - at) / 1e9 * perSecond)
                at = now
            }
        }
    }

    struct State {
        var peers: [String: Bucket] = [:]
        var all = Bucket(tokens: AnonymousLimiter.allBurst, at: 0)
        var lastSweep: UInt64 = 0
    }

    private let state = Mutex(State())
    /// Records `calls` not recorded one by one from `peer` over the last `seconds`.
    private let report: @Sendable (_ peer: String, _ calls: Int, _ seconds: Int) -> Void

    init(report: @escaping @Sendable (_ peer: String, _ calls: Int, _ seconds: Int) -> Void) {
        self.report = report
    }

    static func nowNs() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// The bucket a remote address counts against: an IPv4 address (an IPv4-mapped IPv6 one as
    /// its IPv4 address), an IPv6 address's /64 (one host's usual allocation), `unix` otherwise.
    static func peer(_ address: SocketAddress?) -> String {
        switch address {
        case .v4:
            return address?.ipAddress ?? "unix"
        case .v6(let a):
            var raw = a.address.sin6_addr
            let bytes = withUnsafeBytes(of: &raw) { Array($0) }
            if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF {
                return bytes[12...].map(String.init).joined(separator: ".")
            }
            let groups = stride(from: 0, to: 8, by: 2).map { String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16) }
            return groups.joined(separator: ":") + "::/64"
        default:
            return "unix"
        }
    }

    /// True when a call from `peer` without an authenticated caller may have its own row now;
    /// false when it is only counted.
    func admit(_ peer: String) -> Bool {
        var startReport: String?
        let admitted = state.withLock { s -> Bool in
            let now = Self.nowNs()
            s.all.refill(now: now, capacity: Self.allBurst, perSecond: Self.allPerSecond)
            if s.peers[peer] == nil && s.peers.count >= Self.maxPeers && now > s.lastSweep + 1_000_000_000 {
                s.lastSweep = now
                s.peers = s.peers.filter { !$0.value.isFull(now: now) || $0.value.reporting }
            }
            // A peer the full table cannot take has only the overall bound.
            var bucket = s.peers[peer] ?? (s.peers.count < Self.maxPeers ? Bucket(tokens: Self.burst, at: now) : nil)
            bucket?.refill(now: now, capacity: Self.burst, perSecond: Self.perSecond)
            let peerHasRoom = bucket.map { $0.tokens >= 1 } ?? true
            if peerHasRoom && s.all.tokens >= 1 {
                bucket?.tokens -= 1
                s.all.tokens -= 1
                if let bucket { s.peers[peer] = bucket }
                return true
            }
            // Counted where the bound was: the peer's own, else everyone's.
            if !peerHasRoom, var own = bucket {
                if own.count(now: now) { startReport = peer }
                s.peers[peer] = own
            } else {
                if s.all.count(now: now) { startReport = Self.everyone }
                if let bucket { s.peers[peer] = bucket }
            }
            return false
        }
        if let key = startReport { Self.afterReportDelay { [self] in flush(key) } }
        return admitted
    }

    /// Runs `flush` `reportSeconds` from now, off the caller's path.
    static func afterReportDelay(_ flush: @escaping @Sendable () -> Void) {
        Task.detached {
            try? await Task.sleep(for: .seconds(reportSeconds))
            flush()
        }
    }

    /// Records what was counted for `peer` since its last report, over the seconds from the
    /// first call counted to now (whole seconds, rounded, at least 1: 10 from the timer, fewer at a stop).
    func flush(_ peer: String) {
        let (refused, since, now) = state.withLock { s -> (Int, UInt64, UInt64) in
            let now = Self.nowNs()
            if peer == Self.everyone {
                let (count, since) = s.all.takeCount()
                return (count, since, now)
            }
            let (count, since) = s.peers[peer]?.takeCount() ?? (0, 0)
            return (count, since, now)
        }
        if refused > 0 { report(peer, refused, Self.windowSeconds(since: since, now: now)) }
    }

    static func windowSeconds(since: UInt64, now: UInt64) -> Int {
        let elapsed = now > since ? now - since : 0
        return max(1, Int((elapsed + 500_000_000) / 1_000_000_000))
    }

    /// Records every count not yet reported (at the service's stop).
    func flushAll() {
        let peers = state.withLock { s in s.peers.filter { $0.value.refused > 0 }.map(\.key) + (s.all.refused > 0 ? [Self.everyone] : []) }
        for peer in peers { flush(peer) }
    }
}

extension AnonymousLimiter.Bucket {
    /// The calls counted since the last report and when the first of them came; the count starts again.
    mutating func takeCount() -> (calls: Int, since: UInt64) {
        defer {
            refused = 0
            reporting = false
        }
        return (refused, since)
    }

    /// Counts a call that was not let through; true when it is the first since the last report (the
    /// caller then arranges the report).
    mutating func count(now: UInt64) -> Bool {
        refused += 1
        guard !reporting else { return false }
        reporting = true
        since = now
        return true
    }

    func isFull(now: UInt64) -> Bool {
        tokens + (now > at ? Double(now - at) / 1e9 * AnonymousLimiter.perSecond : 0) >= AnonymousLimiter.burst
    }
}
