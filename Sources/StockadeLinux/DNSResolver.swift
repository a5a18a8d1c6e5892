import Glibc

/// A minimal DNS client for the egress proxy's `network.egress.resolver`: one UDP
/// query for the A records of a name at one server (RFC 1035), answered within
/// `timeoutMs`, or nothing. Used instead of getaddrinfo when a profile names a server,
/// so that operators can point the proxy at their own resolver (and tests at one
/// that counts what it is asked).
public struct DNSResolver: Sendable {
    public let server: [UInt8]
    public let port: UInt16
    public var timeoutMs: Int32 = 3_000

    public init(server: [UInt8], port: UInt16) {
        self.server = server
        self.port = port
    }

    /// The query for `name`'s A records with transaction `id`; nil for a name that is not one.
    static func query(_ name: String, id: UInt16) -> [UInt8]? {
        var out: [UInt8] = [UInt8(id >> 8), UInt8(id & 0xFF), 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]
        for label in name.split(separator: ".") {
            guard !label.isEmpty, label.utf8.count <= 63 else { return nil }
            out.append(UInt8(label.utf8.count))
            out += label.utf8
        }
        out += [0, 0, 1, 0, 1]
        return out.count <= 512 ? out : nil
    }

    /// The A records of a response to query `id`, or nil when it is not a good answer to it.
    static func addresses(in r: [UInt8], id: UInt16) -> [[UInt8]]? {
        guard r.count >= 12, UInt16(r[0]) << 8 | UInt16(r[1]) == id, r[2] & 0x80 != 0, r[3] & 0x0F == 0 else { return nil }
        let questions = Int(r[4]) << 8 | Int(r[5]), answers = Int(r[6]) << 8 | Int(r[7])
        var i = 12
        func skipName() -> Bool {
            while i < r.count {
                let n = Int(r[i])
                if n == 0 { i += 1; return true }
                if n & 0xC0 == 0xC0 { i += 2; return i <= r.count }
                i += 1 + n
            }
            return false
        }
        for _ in 0..<questions {
            guard skipName(), i + 4 <= r.count else { return nil }
            i += 4
        }
        var out: [[UInt8]] = []
        for _ in 0..<answers {
            guard skipName(), i + 10 <= r.count else { return nil }
            let type = Int(r[i]) << 8 | Int(r[i + 1]), length = Int(r[i + 8]) << 8 | Int(r[i + 9])
            i += 10
            guard i + length <= r.count else { return nil }
            if type == 1 && length == 4 && out.count < 16 { out.append(Array(r[i..<(i + 4)])) }
            i += length
        }
        return out
    }

    /// The A records of `name`, asked of the server once.
    public func resolve(_ name: String) -> [[UInt8]] {
        let id = UInt16.random(in: 0...UInt16.max)
        guard server.count == 4, let q = Self.query(name, id: id) else { return [] }
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        withUnsafeMutableBytes(of: &a.sin_addr) { $0.copyBytes(from: server) }
        // Connected: replies from any other address are dropped by the kernel.
        let connected = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0, send(fd, q, q.count, 0) == q.count else { return [] }
        var buffer = [UInt8](repeating: 0, count: 1500)
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
        // One deadline for the whole wait: an interrupted poll goes on with what is left of it, and
        // replies that do not answer the question (another id) do not extend it.
        let deadline = Self.monotonicMillis() + Int64(timeoutMs)
        while true {
            let left = deadline - Self.monotonicMillis()
            guard left > 0 else { return [] }
            let ready = poll(&fds, 1, Int32(clamping: left))
            if ready < 0 && errno == EINTR { continue }
            guard ready > 0 else { return [] }
            // Never blocking: a datagram poll saw can still be dropped before recv (a bad UDP
            // checksum is found only then), and a blocking recv would wait past the deadline.
            let n = recv(fd, &buffer, buffer.count, Int32(MSG_DONTWAIT))
            if n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) { continue }
            guard n >= 0 else { return [] }
            if n == 0 { continue }  // an empty datagram answers nothing
            if let found = Self.addresses(in: Array(buffer[0..<n]), id: id) { return found }
        }
    }

    static func monotonicMillis() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Int64(now.tv_sec) * 1000 + Int64(now.tv_nsec) / 1_000_000
    }
}
