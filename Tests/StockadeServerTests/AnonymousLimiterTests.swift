import Foundation
import NIOCore
@testable import StockadeServer
import Synchronization
import Testing

@Suite("the bound on rows of calls without a token")
struct AnonymousLimiterTests {
    final class Reports: Sendable {
        let rows = Mutex<[(String, Int)]>([])
        let seconds = Mutex<[Int]>([])
    }

    @Test("a peer is its IPv4 address, an IPv4-mapped address's IPv4 address, an IPv6 address's /64, or the Unix socket")
    func peers() throws {
        #expect(AnonymousLimiter.peer(try SocketAddress(ipAddress: "192.0.2.7", port: 1)) == "192.0.2.7")
        #expect(AnonymousLimiter.peer(try SocketAddress(ipAddress: "::ffff:192.0.2.7", port: 1)) == "192.0.2.7")
        #expect(AnonymousLimiter.peer(try SocketAddress(ipAddress: "2001:db8:1:2:aaaa::5", port: 1)) == "2001:db8:1:2::/64")
        #expect(AnonymousLimiter.peer(try SocketAddress(ipAddress: "2001:db8:1:2:bbbb::9", port: 2)) == "2001:db8:1:2::/64")
        #expect(AnonymousLimiter.peer(try SocketAddress(unixDomainSocketPath: "/tmp/x.sock")) == "unix")
        #expect(AnonymousLimiter.peer(nil) == "unix")
    }

    @Test("each peer has its burst, all peers together theirs; what is past a bound is counted where the bound was and reported once")
    func bounds() {
        let reports = Reports()
        let limiter = AnonymousLimiter { peer, calls, seconds in
            reports.rows.withLock { $0.append((peer, calls)) }
            reports.seconds.withLock { $0.append(seconds) }
        }
        let burst = Int(AnonymousLimiter.burst)
        #expect((0..<burst).allSatisfy { _ in limiter.admit("198.51.100.1") })
        #expect(!limiter.admit("198.51.100.1") && !limiter.admit("198.51.100.1"))
        #expect(limiter.admit("198.51.100.2"), "another peer has its own bucket")
        // Nine more peers take all peers' burst (600) down to nothing; the next peer's call is counted under all.
        var admitted = burst + 1
        for peer in 3..<13 {
            for _ in 0..<burst where limiter.admit("198.51.100.\(peer)") { admitted += 1 }
        }
        #expect(admitted <= Int(AnonymousLimiter.allBurst) + 2, "\(admitted)")
        #expect(!limiter.admit("198.51.100.200"), "past the overall bound a fresh peer is counted too")
        limiter.flushAll()
        let rows = reports.rows.withLock { $0 }
        #expect(rows.first { $0.0 == "198.51.100.1" }?.1 == 2, "\(rows)")
        #expect((rows.first { $0.0 == AnonymousLimiter.everyone }?.1 ?? 0) >= 1, "\(rows)")
        // Written at once (as at a stop), a row's window is the second it took, not the timer's ten.
        #expect(reports.seconds.withLock { $0 }.allSatisfy { $0 == 1 }, "\(reports.seconds.withLock { $0 })")
        limiter.flushAll()
        #expect(reports.rows.withLock { $0.count } == rows.count, "a count is reported once")
    }

    @Test("a row's seconds are those from the first call counted to the row, rounded, at least one")
    func windowSeconds() {
        let second: UInt64 = 1_000_000_000
        #expect(AnonymousLimiter.windowSeconds(since: 5 * second, now: 5 * second) == 1)
        #expect(AnonymousLimiter.windowSeconds(since: 5 * second, now: 15 * second + 3_000_000) == 10)
        #expect(AnonymousLimiter.windowSeconds(since: 5 * second, now: 8 * second + 600_000_000) == 4)
        #expect(AnonymousLimiter.windowSeconds(since: 9 * second, now: 5 * second) == 1, "a clock read out of order")
    }

    @Test("calls racing from four threads on one peer never refill its bucket: the admitted stay within the burst and the rate")
    func concurrentCallsStayBounded() {
        let limiter = AnonymousLimiter { _, _, _ in }
        let admitted = Atomic<Int>(0)
        let started = Date()
        DispatchQueue.concurrentPerform(iterations: 4) { _ in
            for _ in 0..<200_000 where limiter.admit("unix") { admitted.add(1, ordering: .relaxed) }
        }
        let elapsed = Date().timeIntervalSince(started)
        let bound = Int(AnonymousLimiter.burst) + Int(AnonymousLimiter.perSecond * elapsed) + 1
        #expect(admitted.load(ordering: .relaxed) <= bound, "\(admitted.load(ordering: .relaxed)) admitted in \(elapsed) s")
        #expect(admitted.load(ordering: .relaxed) >= Int(AnonymousLimiter.burst), "the burst itself was admitted")
    }
}
