import Foundation
import Glibc
@testable import StockadeLinux
import Testing

/// A UDP server on 127.0.0.1 that answers each query it gets with `wrong` replies of another
/// transaction id, `spacingMs` apart, then (when `empty`) an empty datagram, then (when `answers`)
/// the right answer: 127.0.0.9.
private final class ScriptedDNS: @unchecked Sendable {
    let fd: Int32
    let port: UInt16
    let thread: Thread

    init(wrong: Int, spacingMs: Int, empty: Bool = false, answers: Bool) throws {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        self.fd = fd
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard fd >= 0, bound else { throw POSIXError(.EADDRNOTAVAIL) }
        port = UInt16(bigEndian: a.sin_port)
        thread = Thread {
            defer { close(fd) }  // the thread's own: closed when it is done, never under it
            var query = [UInt8](repeating: 0, count: 512)
            var from = sockaddr_in()
            var fromLength = socklen_t(MemoryLayout<sockaddr_in>.size)
            let n = withUnsafeMutablePointer(to: &from) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(fd, &query, query.count, 0, $0, &fromLength) }
            }
            guard n >= 12 else { return }
            let question = Array(query[12..<n])
            func reply(id0: UInt8, id1: UInt8, withAnswer: Bool) {
                var r: [UInt8] = [id0, id1, 0x81, 0x80, 0, 1, 0, withAnswer ? 1 : 0, 0, 0, 0, 0] + question
                if withAnswer { r += [0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 127, 0, 0, 9] }
                _ = withUnsafePointer(to: &from) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, r, r.count, 0, $0, fromLength) }
                }
            }
            for _ in 0..<wrong {
                reply(id0: query[0] ^ 0xFF, id1: query[1], withAnswer: true)
                usleep(UInt32(spacingMs * 1000))
            }
            if empty {
                _ = withUnsafePointer(to: &from) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, nil, 0, 0, $0, fromLength) }
                }
                usleep(UInt32(spacingMs * 1000))
            }
            if answers { reply(id0: query[0], id1: query[1], withAnswer: true) }
        }
        thread.start()
    }
}

@Suite("the egress proxy's DNS client")
struct DNSResolverTests {
    @Test("the answer to its own question is taken; replies to another id are skipped")
    func answer() throws {
        let server = try ScriptedDNS(wrong: 2, spacingMs: 10, answers: true)
        var resolver = DNSResolver(server: [127, 0, 0, 1], port: server.port)
        resolver.timeoutMs = 5_000
        #expect(resolver.resolve("example.test") == [[127, 0, 0, 9]])
    }

    @Test("an empty datagram is not an answer and does not end the wait")
    func emptyDatagram() throws {
        let server = try ScriptedDNS(wrong: 0, spacingMs: 20, empty: true, answers: true)
        var resolver = DNSResolver(server: [127, 0, 0, 1], port: server.port)
        resolver.timeoutMs = 5_000
        #expect(resolver.resolve("example.test") == [[127, 0, 0, 9]])
    }

    @Test("replies to another id do not extend the wait: it ends at its timeout, not when they stop")
    func deadlineHolds() throws {
        // Wrong replies every 100 ms for 4 s, never the answer. The old loop restarted its 300 ms wait
        // at each one and returned only after the last (over 4 s); one deadline ends it at 300 ms.
        let server = try ScriptedDNS(wrong: 40, spacingMs: 100, answers: false)
        var resolver = DNSResolver(server: [127, 0, 0, 1], port: server.port)
        resolver.timeoutMs = 300
        let start = Date()
        #expect(resolver.resolve("example.test") == [])
        let elapsed = Date().timeIntervalSince(start)
        #expect(elapsed < 2.5, "the wait went on for \(elapsed) s")
    }
}
