import CStockade
import Glibc
@testable import StockadeLinux
import StockadePolicy
import Synchronization
import Testing

/// The proxy run in the test's own network namespace (the worker-pid argument is this
/// process), against upstream servers on 127.0.0.1 only, with an injected resolver
/// that counts its calls: the proof that a refused name is never looked up.
@Suite("the egress proxy", .serialized)
struct EgressProxyTests {
    final class Recorder: Sendable {
        let events = Mutex<[EgressProxy.Event]>([])
        let limits = Mutex<[String]>([])
        let lookups = Mutex<[String]>([])
    }

    /// A loopback server answering every connection with `body` (after reading what arrives first).
    final class Upstream: @unchecked Sendable {
        let fd: Int32
        let port: UInt16
        let body: [UInt8]
        var thread: Thread?

        /// On 127.0.0.1 and a free port, or on `address` (host order) and `port`.
        init(body: [UInt8], address: UInt32 = 0x7F00_0001, port wanted: UInt16 = 0) throws {
            (fd, port) = try EgressProxyTests.listener(address, wanted)
            self.body = body
            let fd = self.fd, body = self.body
            let t = Thread {
                while true {
                    let c = accept(fd, nil, nil)
                    // Closed here, once nothing of this thread uses it: closed by `stop` while this thread
                    // was serving a connection, its number could name the next test's listener by the
                    // time this `accept` ran, and this upstream would answer that test's connections.
                    if c < 0 { close(fd); return }
                    var scratch = [UInt8](repeating: 0, count: 4096)
                    _ = recv(c, &scratch, scratch.count, 0)
                    var off = 0
                    while off < body.count {
                        let n = body[off...].withUnsafeBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                        if n <= 0 { break }
                        off += n
                    }
                    close(c)
                }
            }
            thread = t
            t.start()
        }

        /// Stops accepting: the thread's `accept` fails, and it closes the listener.
        func stop() {
            shutdown(fd, Int32(SHUT_RDWR))
        }
    }

    final class Thread: @unchecked Sendable {
        let body: () -> Void
        var handle = pthread_t()
        init(_ body: @escaping () -> Void) { self.body = body }
        func start() {
            let box = Unmanaged.passRetained(self)
            pthread_create(&handle, nil, { arg in
                Unmanaged<Thread>.fromOpaque(arg!).takeRetainedValue().body()
                return nil
            }, box.toOpaque())
            pthread_detach(handle)
        }
    }

    /// A TCP listener on `address` (host order) and `port` (0: a free one), and its port.
    static func listener(_ address: UInt32, _ port: UInt16) throws -> (fd: Int32, port: UInt16) {
        let sock = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        a.sin_addr.s_addr = address.bigEndian
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(sock, $0, len) == 0 && listen(sock, 64) == 0 && getsockname(sock, $0, &len) == 0 }
        }
        try #require(ok, "listen on \(address):\(port): errno \(errno)")
        return (sock, UInt16(bigEndian: a.sin_port))
    }

    static func start(allow: [String], hosts: [String: String] = ["allowed.test": "127.0.0.1"], allowPrivate: Bool = true,
                      maxConnections: Int = 64, maxBytes: Int64 = 1 << 30, headTimeoutMs: Int32 = 10_000,
                      onOpen: (@Sendable (EgressProxy.Event) -> Bool)? = nil, namespaceOf: Int32 = getpid(),
                      recorder: Recorder) throws -> EgressProxy {
        var egress = Profile.Egress()
        egress.allow = allow.compactMap(EgressRule.parse)
        egress.allowPrivate = allowPrivate
        egress.maxConnections = maxConnections
        egress.maxBytes = maxBytes
        var c = EgressProxy.Configuration(policy: EgressPolicy(egress: egress, hosts: hosts))
        c.headTimeoutMs = headTimeoutMs
        c.resolve = { name in
            recorder.lookups.withLock { $0.append(name) }
            return [[127, 0, 0, 1]]
        }
        c.onEvent = { e in recorder.events.withLock { $0.append(e) } }
        c.onLimit = { l in recorder.limits.withLock { $0.append(l) } }
        if let onOpen { c.onOpen = onOpen }
        return try EgressProxy.start(inNamespaceOf: namespaceOf, port: 0, configuration: c)
    }

    static func nowMs() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }

    static func connect(_ port: UInt16, address: UInt32 = 0x7F00_0001) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        a.sin_addr.s_addr = address.bigEndian
        let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        try #require(rc == 0)
        var tv = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return fd
    }

    /// Sends `request` and reads to end of file (or the 20 s receive timeout).
    static func exchange(_ port: UInt16, _ request: [UInt8]) throws -> String {
        try exchange(port, parts: [request])
    }

    /// Sends `parts` on one connection, 200 ms apart (a relay already running takes each as it comes),
    /// and returns everything answered until the proxy closes.
    static func exchange(_ port: UInt16, parts: [[UInt8]]) throws -> String {
        let fd = try connect(port)
        defer { close(fd) }
        for (i, part) in parts.enumerated() {
            if i > 0 { usleep(200_000) }
            _ = part.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &chunk, chunk.count, 0)
            if n <= 0 { break }
            out += chunk[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    @Test("a refused name gets 403 and is never resolved; an admitted one is resolved once and relayed", .timeLimit(.minutes(1)))
    func refusedNamesAreNeverResolved() throws {
        let upstream = try Upstream(body: Array("HTTP/1.0 200 OK\r\n\r\nhello from upstream".utf8))
        defer { upstream.stop() }
        let recorder = Recorder()
        // No pinned host: the resolver is the only way to an address.
        let proxy = try Self.start(allow: ["allowed.test:\(upstream.port)"], hosts: [:], recorder: recorder)
        let denied = try Self.exchange(proxy.port, Array("CONNECT exfil-data.attacker.test:\(upstream.port) HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        #expect(denied.hasPrefix("HTTP/1.1 403"), "\(denied)")
        let viaSocks = try Self.exchange(proxy.port, [5, 1, 0, 5, 1, 0, 3, 20] + Array("exfil2.attacker.test".utf8) + [0, 80])
        #expect(Array(viaSocks.utf8).prefix(4) == [5, 0, 5, 2], "\(Array(viaSocks.utf8))")
        // A SOCKS name with a terminal escape in it is refused before anything records it.
        let escaped = try Self.exchange(proxy.port, [5, 1, 0, 5, 1, 0, 3, 6] + Array("a\u{1B}[2Jb".utf8) + [1, 187])
        #expect(Array(escaped.utf8).prefix(4) == [5, 0, 5, 8], "\(Array(escaped.utf8))")
        #expect(recorder.lookups.withLock { $0 } == [], "a denied name reached the resolver")
        // Positive control: the admitted name is looked up once and the upstream's bytes arrive.
        let allowed = try Self.exchange(proxy.port, Array("CONNECT allowed.test:\(upstream.port) HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n".utf8))
        #expect(allowed.hasPrefix("HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.0 200 OK"), "\(allowed)")
        #expect(allowed.hasSuffix("hello from upstream"))
        proxy.stop()
        #expect(recorder.lookups.withLock { $0 } == ["allowed.test"])
        let events = recorder.events.withLock { $0 }
        #expect(events.count == 4)
        #expect(events.filter { !$0.allowed }.map(\.reason) == ["not-allowed", "not-allowed", "bad-request"])
        #expect(events.filter { !$0.allowed }.map(\.host) == ["exfil-data.attacker.test", "exfil2.attacker.test", nil])
        let ok = try #require(events.first { $0.allowed })
        #expect(ok.address == "127.0.0.1" && ok.rule == "allowed.test:\(upstream.port)" && ok.bytesIn > 19 && ok.bytesOut == 18)
        #expect(proxy.totals.connections == 4 && proxy.totals.allowed == 1 && proxy.totals.denied == 3)
    }

    @Test("plain HTTP: the absolute URI is rewritten to origin form with the checked Host and Connection: close", .timeLimit(.minutes(1)))
    func plainHTTP() throws {
        let head = "GET http://Allowed.test:8080/p?q=1 HTTP/1.1\r\nHost: evil.test\r\nProxy-Connection: keep-alive\r\nAccept: */*\r\n"
            + "Forwarded: host=evil.test\r\nX-Forwarded-Host: evil.test\r\nX-Original-URL: http://evil.test/\r\n"
            + "X_Forwarded_Host: evil.test\r\nx_original_url: /admin\r\nProxy_Authorization: Basic x\r\n\r\n"
        let parsed = try ProxyRequest.parseHTTP(ArraySlice(Array(head.utf8))).get()
        #expect(parsed.kind == .http && parsed.host == "Allowed.test" && parsed.port == 8080)
        #expect(String(decoding: parsed.upstreamHead, as: UTF8.self)
                == "GET /p?q=1 HTTP/1.1\r\nHost: Allowed.test:8080\r\nAccept: */*\r\nConnection: close\r\n\r\n")
        for bad in ["GET / HTTP/1.1\r\n\r\n", "GET https://a.test/ HTTP/1.1\r\n\r\n", "GET http://u@a.test/ HTTP/1.1\r\n\r\n",
                    "CONNECT a.test HTTP/1.1\r\n\r\n", "GET http://a.test/ HTTP/1.1\nHost: a\r\n\r\n", "GET http://a.test/ HTTP/1.1\r\n folded\r\n\r\n",
                    "get http://a.test/ HTTP/1.1\r\n\r\n", "GET http://a.test/ HTTP/2\r\n\r\n"] {
            guard case .failure = ProxyRequest.parseHTTP(ArraySlice(Array(bad.utf8))) else {
                Issue.record("accepted: \(bad.debugDescription)")
                continue
            }
        }
    }

    @Test("IP literals, loopback without allowPrivate, metadata and other ports are refused before any connection", .timeLimit(.minutes(1)))
    func refusals() throws {
        let upstream = try Upstream(body: Array("unreachable".utf8))
        defer { upstream.stop() }
        let recorder = Recorder()
        let proxy = try Self.start(allow: ["allowed.test:\(upstream.port)", "meta.test:\(upstream.port)"],
                                   hosts: ["allowed.test": "127.0.0.1", "meta.test": "169.254.169.254"], allowPrivate: false,
                                   recorder: recorder)
        for (target, reason) in [("127.0.0.1:\(upstream.port)", "ip-literal"), ("allowed.test:\(upstream.port)", "loopback-address"),
                                 ("meta.test:\(upstream.port)", "link-local-address"), ("allowed.test:22", "port-not-allowed")] {
            let r = try Self.exchange(proxy.port, Array("CONNECT \(target) HTTP/1.1\r\n\r\n".utf8))
            #expect(r.hasPrefix("HTTP/1.1 403") && r.contains(reason), "\(target): \(r)")
            #expect(!r.contains("unreachable"))
        }
        proxy.stop()
        #expect(recorder.events.withLock { $0.map(\.reason) } == ["ip-literal", "loopback-address", "link-local-address", "port-not-allowed"])
        #expect(recorder.lookups.withLock { $0 } == [])
    }

    @Test("a 1 MB header line and a request that never finishes are cut off while others are served", .timeLimit(.minutes(1)))
    func hostileRequests() throws {
        let upstream = try Upstream(body: Array("HTTP/1.0 200 OK\r\n\r\nok".utf8))
        defer { upstream.stop() }
        let recorder = Recorder()
        let proxy = try Self.start(allow: ["allowed.test:\(upstream.port)"], headTimeoutMs: 1_500, recorder: recorder)
        let slow = try Self.connect(proxy.port)
        defer { close(slow) }
        _ = send(slow, "CONNECT allowed.test:", 21, Int32(MSG_NOSIGNAL))
        let huge = Array("GET http://allowed.test:\(upstream.port)/ HTTP/1.1\r\nX: ".utf8) + [UInt8](repeating: 65, count: 1 << 20) + Array("\r\n\r\n".utf8)
        let big = try Self.exchange(proxy.port, huge)
        // The proxy closes with most of the line unread: the client may see the 431 or only a reset.
        #expect(big.isEmpty || big.hasPrefix("HTTP/1.1 431"), "\(big.prefix(80))")
        // Served while the slow one is still pending.
        let started = Self.nowMs()
        let ok = try Self.exchange(proxy.port, Array("GET http://allowed.test:\(upstream.port)/ HTTP/1.1\r\n\r\n".utf8))
        #expect(ok.hasSuffix("ok"), "\(ok)")
        #expect(Self.nowMs() - started < 1_000)
        var buffer = [UInt8](repeating: 0, count: 512)
        let n = recv(slow, &buffer, buffer.count, 0)
        #expect(n > 0 && String(decoding: buffer[0..<n], as: UTF8.self).hasPrefix("HTTP/1.1 408"))
        proxy.stop()
        #expect(Set(recorder.events.withLock { $0.compactMap(\.reason) }) == ["request-too-large", "request-timeout"])
    }

    @Test("the connection limit and the byte limit refuse and are reported once", .timeLimit(.minutes(1)))
    func limits() throws {
        let upstream = try Upstream(body: [UInt8](repeating: 66, count: 1 << 20))
        defer { upstream.stop() }
        let recorder = Recorder()
        let proxy = try Self.start(allow: ["allowed.test:\(upstream.port)"], maxConnections: 3, maxBytes: 256 << 10, recorder: recorder)
        let first = try Self.exchange(proxy.port, Array("CONNECT allowed.test:\(upstream.port) HTTP/1.1\r\n\r\nx".utf8))
        #expect(first.hasPrefix("HTTP/1.1 200"))
        #expect(first.utf8.count < 256 << 10 + 100, "the byte cap cut the download: \(first.utf8.count)")
        #expect(first.utf8.count > 64 << 10, "bytes below the cap were relayed")
        _ = try Self.exchange(proxy.port, Array("CONNECT other.test:443 HTTP/1.1\r\n\r\n".utf8))
        _ = try Self.exchange(proxy.port, Array("CONNECT other.test:443 HTTP/1.1\r\n\r\n".utf8))
        let fourth = try Self.exchange(proxy.port, Array("CONNECT allowed.test:\(upstream.port) HTTP/1.1\r\n\r\n".utf8))
        #expect(fourth.hasPrefix("HTTP/1.1 429"), "\(fourth)")
        let fifth = try Self.exchange(proxy.port, Array("CONNECT allowed.test:\(upstream.port) HTTP/1.1\r\n\r\n".utf8))
        #expect(fifth.hasPrefix("HTTP/1.1 429"))
        proxy.stop()
        #expect(recorder.limits.withLock { $0 } == ["egress.bytes", "egress.connections"])
        let reasons = recorder.events.withLock { $0.map { $0.reason ?? "ok" } }
        #expect(reasons == ["byte-limit", "not-allowed", "not-allowed", "connection-limit"], "\(reasons)")
        #expect(proxy.totals.connections == 5 && proxy.totals.denied == 4)
    }
}

extension EgressProxyTests {
    /// A free loopback address other than 127.0.0.1 for an upstream on port 443.
    static func loopback443() -> UInt32 {
        0x7F00_0000 | UInt32(2 + (getpid() % 200)) << 8 | UInt32(1 + (nowMs() % 200))
    }

    @Test("a tunnel to 443 must begin with a ClientHello naming its host: an alert first, plain bytes or another name are cut off", .timeLimit(.minutes(1)))
    func tlsTunnels() throws {
        let address = Self.loopback443()
        let upstream = try Upstream(body: Array("upstream bytes".utf8), address: address, port: 443)
        defer { upstream.stop() }
        let recorder = Recorder()
        let dotted = "127.\((address >> 16) & 0xFF).\((address >> 8) & 0xFF).\(address & 0xFF)"
        let proxy = try Self.start(allow: ["tls.test:443"], hosts: ["tls.test": dotted], recorder: recorder)
        let connect = Array("CONNECT tls.test:443 HTTP/1.1\r\n\r\n".utf8)
        let established = "HTTP/1.1 200 Connection established\r\n\r\n"
        // Some TLS servers skip a warning alert before the handshake and take the ClientHello after it.
        let alert: [UInt8] = [0x15, 3, 3, 0, 2, 1, 0x5A]
        for (bytes, reason) in [(alert + ClientHelloTests.hello("evil.test"), "bad-tls"),
                                (Array("GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n".utf8), "bad-tls"),
                                (ClientHelloTests.hello("evil.test"), "sni-mismatch"),
                                (ClientHelloTests.hello("tls.test", extra: ClientHelloTests.ech), "ech")] {
            let answer = try Self.exchange(proxy.port, connect + bytes)
            #expect(answer == established, "\(reason): nothing of the upstream's may come back: \(answer)")
        }
        // The positive control: the tunnel's own name is relayed both ways.
        let ok = try Self.exchange(proxy.port, connect + ClientHelloTests.hello("tls.test"))
        #expect(ok == established + "upstream bytes", "\(ok)")
        proxy.stop()
        let events = recorder.events.withLock { $0 }
        #expect(events.prefix(4).map(\.reason) == ["bad-tls", "bad-tls", "sni-mismatch", "ech"] && events.map(\.allowed) == [false, false, false, false, true],
                "\(events.map(\.reason))")
        #expect(events[2].serverName == "evil.test" && events[2].host == "tls.test", "the refusal names what was asked for")
    }

    @Test("a connection over the 64 at once is answered 429 and recorded, once each", .timeLimit(.minutes(1)))
    func concurrentLimit() throws {
        let recorder = Recorder()
        let proxy = try Self.start(allow: ["allowed.test:9"], maxConnections: 1000, recorder: recorder)
        var held: [Int32] = []
        defer { held.forEach { close($0) } }
        for _ in 0..<EgressProxy.maxConcurrent {
            let fd = try Self.connect(proxy.port)
            _ = send(fd, "CONNECT allowed.test:", 21, Int32(MSG_NOSIGNAL))
            held.append(fd)
        }
        // Each held connection has its thread once its first bytes are read back by the proxy.
        var busy = ""
        for _ in 0..<100 {
            busy = try Self.exchange(proxy.port, Array("CONNECT allowed.test:9 HTTP/1.1\r\n\r\n".utf8))
            if busy.hasPrefix("HTTP/1.1 429") { break }
            usleep(20_000)
        }
        #expect(busy.hasPrefix("HTTP/1.1 429"), "\(busy)")
        held.forEach { close($0) }
        held = []
        proxy.stop()
        let reasons = recorder.events.withLock { $0.compactMap(\.reason) }
        #expect(reasons.filter { $0 == "concurrent-limit" }.count == 1, "\(reasons)")
    }

    @Test("a relay does not wake for a socket it asks nothing of: a peer gone both ways while the other side does not read would spin it")
    func stalledRelaySleeps() throws {
        var pair: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
        defer { close(pair[0]) }
        // Both ways shut: what the upstream's socket is once the worker half-closed and the upstream ended.
        shutdown(pair[0], Int32(SHUT_WR))
        close(pair[1])
        var asked = [pollfd(fd: pair[0], events: 0, revents: 0)]
        #expect(poll(&asked, 1, 0) == 1 && asked[0].revents & Int16(POLLHUP) != 0, "the positive control: poll reports the hang-up unasked")
        var watched = [RelayDirection.watch(pair[0], 0)]
        #expect(poll(&watched, 1, 0) == 0, "nothing asked: nothing to wake for")
        var reading = [RelayDirection.watch(pair[0], Int16(POLLIN))]
        #expect(poll(&reading, 1, 0) == 1, "asked to read: the end of file wakes it")
    }
}

@Suite("TLS ClientHello server names")
struct ClientHelloTests {
    /// A minimal ClientHello record naming `name` (or none), as clients build them.
    static func hello(_ name: String?, extra: [UInt8] = []) -> [UInt8] {
        var extensions: [UInt8] = []
        if let name {
            let n = Array(name.utf8)
            let entry: [UInt8] = [0] + [UInt8(n.count >> 8), UInt8(n.count & 0xFF)] + n
            let list = [UInt8(entry.count >> 8), UInt8(entry.count & 0xFF)] + entry
            extensions += [0, 0, UInt8(list.count >> 8), UInt8(list.count & 0xFF)] + list
        }
        extensions = [0x00, 0x17, 0, 0] + extensions + extra  // extended_master_secret first: the parser must skip it
        var body: [UInt8] = [3, 3] + [UInt8](repeating: 7, count: 32) + [0] + [0, 2, 0x13, 0x01] + [1, 0]
        body += [UInt8(extensions.count >> 8), UInt8(extensions.count & 0xFF)] + extensions
        let handshake: [UInt8] = [1, 0, UInt8(body.count >> 8), UInt8(body.count & 0xFF)] + body
        return [0x16, 3, 1, UInt8(handshake.count >> 8), UInt8(handshake.count & 0xFF)] + handshake
    }

    @Test("the server name is found after other extensions; partial, absent, plain and malformed hellos are told apart")
    func serverName() {
        let record = Self.hello("allowed.test")
        #expect(ProxyRequest.clientHello(record) == .serverName("allowed.test"))
        #expect(ProxyRequest.clientHello(Array(record.prefix(40))) == .incomplete)
        #expect(ProxyRequest.clientHello(Self.hello(nil)) == .noServerName)
        #expect(ProxyRequest.clientHello(Array("GET / HTTP/1.1\r\n".utf8)) == .notTLS)
        #expect(ProxyRequest.clientHello([0x15, 3, 3, 0, 2, 1, 0x5A] + record) == .notTLS, "an alert first is not a ClientHello")
        var broken = record
        broken[5] = 2  // a ServerHello, not a ClientHello
        #expect(ProxyRequest.clientHello(broken) == .malformed)
        var lying = record
        lying[lying.count - 13] = 0xFF  // the name's length runs past the extension
        #expect(ProxyRequest.clientHello(lying) == .malformed)
    }

    /// An encrypted_client_hello extension (type `type`) with a few opaque bytes.
    static let ech: [UInt8] = [0xFE, 0x0D, 0, 4, 0, 0, 1, 0x55]

    @Test("a hello carrying an encrypted server name (ECH, draft ESNI) is told apart, after the name in the clear or before it; a second name is malformed")
    func encryptedServerName() {
        #expect(ProxyRequest.clientHello(Self.hello("allowed.test", extra: Self.ech)) == .encryptedServerName)
        #expect(ProxyRequest.clientHello(Self.hello(nil, extra: Self.ech)) == .encryptedServerName)
        #expect(ProxyRequest.clientHello(Self.hello("allowed.test", extra: [0xFF, 0xCE, 0, 1, 0])) == .encryptedServerName)
        // Other extensions after the name change nothing (the control).
        #expect(ProxyRequest.clientHello(Self.hello("allowed.test", extra: [0x00, 0x2B, 0, 3, 2, 3, 4])) == .serverName("allowed.test"))
        // The other hello's server_name extension: after the record and handshake headers (9 bytes), the
        // version, random, session, suites and compression (41), the extensions' length (2) and the first one (4).
        let offset = 56
        let second = Array(Self.hello("other.test")[offset...])
        #expect(ProxyRequest.clientHello(Self.hello("allowed.test", extra: second)) == .malformed)
    }
}

@Suite("finding the end of a proxy request head")
struct HeadScannerTests {
    @Test("fed a byte at a time or all at once, the end is the first blank line; long heads and lines overflow")
    func scans() {
        let head = Array("CONNECT a.test:443 HTTP/1.1\r\nX: y\r\n\r\nrest".utf8)
        var whole = ProxyRequest.HeadScanner()
        #expect(whole.scan(head) == .complete(head.count - 4))
        var trickled = ProxyRequest.HeadScanner()
        var seen: [UInt8] = []
        var states: [ProxyRequest.HeadScanner.State] = []
        for b in head {
            seen.append(b)
            states.append(trickled.scan(seen))
        }
        #expect(states.firstIndex { $0 != .incomplete } == head.count - 5)
        #expect(states[head.count - 5] == .complete(head.count - 4))
        var bare = ProxyRequest.HeadScanner()
        #expect(bare.scan(Array("GET / HTTP/1.1\n\n\r\n".utf8)) == .incomplete, "bare LFs never end a head")
        var longLine = ProxyRequest.HeadScanner()
        #expect(longLine.scan([UInt8](repeating: 65, count: ProxyRequest.maxLine + 2)) == .overflow)
        // A line of exactly maxLine bytes is one parseHTTP takes: its CR does not count.
        let full = Array("GET http://a.test/ HTTP/1.1\r\nX: ".utf8)
        let line = full + [UInt8](repeating: 65, count: ProxyRequest.maxLine - (full.count - 29)) + Array("\r\n\r\n".utf8)
        var fits = ProxyRequest.HeadScanner()
        #expect(fits.scan(line) == .complete(line.count))
        if case .success = ProxyRequest.parseHTTP(ArraySlice(line)) {} else { Issue.record("parseHTTP refused a line of maxLine bytes") }
        var longHead = ProxyRequest.HeadScanner()
        let lines = [UInt8](Array("X: \(String(repeating: "y", count: 1000))\r\n".utf8))
        var many: [UInt8] = []
        while many.count <= ProxyRequest.maxHead { many += lines }
        #expect(longHead.scan(many) == .overflow)
    }
}

extension EgressProxyTests {
    /// A loopback upstream that, like one ignoring `Connection: close`, reads a connection until it
    /// has been quiet for 800 ms, keeps every byte it got, then answers and closes.
    final class Collector: @unchecked Sendable {
        let fd: Int32
        let received = Mutex<[String]>([])
        let accepted = Mutex(0)
        /// Every byte received so far, counted as each read returns (not when a connection ends).
        let bytes = Mutex(0)

        init(address: UInt32, port: UInt16) throws {
            let sock = try EgressProxyTests.listener(address, port).fd
            fd = sock
            EgressProxyTests.Thread { [self] in
                let fd = sock
                while true {
                    let c = accept(fd, nil, nil)
                    if c < 0 { return }
                    accepted.withLock { $0 += 1 }
                    var got: [UInt8] = []
                    var chunk = [UInt8](repeating: 0, count: 4096)
                    while true {
                        var p = pollfd(fd: c, events: Int16(POLLIN), revents: 0)
                        guard poll(&p, 1, 800) > 0 else { break }
                        let n = recv(c, &chunk, chunk.count, 0)
                        if n <= 0 { break }
                        got += chunk[0..<n]
                        bytes.withLock { $0 += n }
                    }
                    received.withLock { $0.append(String(decoding: got, as: UTF8.self)) }
                    let answer = Array("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".utf8)
                    _ = answer.withUnsafeBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                    close(c)
                }
            }.start()
        }

        func stop() {
            shutdown(fd, Int32(SHUT_RDWR))
            close(fd)
        }
    }

    static func dotted(_ address: UInt32) -> String {
        "\(address >> 24).\((address >> 16) & 0xFF).\((address >> 8) & 0xFF).\(address & 0xFF)"
    }

    @Test("plain HTTP: a request pipelined behind the first, at once or later, never reaches an upstream that would serve it; the first one's body does", .timeLimit(.minutes(1)))
    func pipelinedRequestsStop() throws {
        let address = Self.loopback443()
        let upstream = try Collector(address: address, port: 8080)
        defer { upstream.stop() }
        let first = "POST http://web.test:8080/first HTTP/1.1\r\nHost: web.test\r\nContent-Length:  5 \r\n\r\nhello"
        let second = "GET http://evil.test/second HTTP/1.1\r\nHost: evil.test\r\n\r\n"
        // Positive control: sent to the upstream directly, both requests reach it.
        let direct = try Self.connect(8080, address: address)
        _ = Array((first + second).utf8).withUnsafeBytes { send(direct, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var scratch = [UInt8](repeating: 0, count: 256)
        _ = recv(direct, &scratch, scratch.count, 0)
        close(direct)
        #expect(upstream.received.withLock { $0.first?.contains("evil.test") } == true, "the control did not reach the upstream")

        let recorder = Recorder()
        let proxy = try Self.start(allow: ["web.test:8080"], hosts: ["web.test": Self.dotted(address)], recorder: recorder)
        // The same bytes written at once and split at each place that matters: after the head, inside
        // the body, and after the body (the second request a moment later, to a relay already running).
        let head = String(first.dropLast(5))
        let writes = [[first + second], [head, "hello" + second], [head + "he", "llo" + second], [first, second]]
        for parts in writes {
            let answer = try Self.exchange(proxy.port, parts: parts.map { Array($0.utf8) })
            #expect(answer.hasSuffix("ok"), "\(parts): \(answer)")
        }
        proxy.stop()
        let got = upstream.received.withLock { Array($0.dropFirst()) }
        #expect(got.count == writes.count, "\(got)")
        for request in got {
            #expect(request.hasPrefix("POST /first HTTP/1.1\r\nHost: web.test:8080\r\n") && request.hasSuffix("\r\n\r\nhello"), "\(request)")
            #expect(!request.contains("evil") && !request.contains("second"), "the pipelined request was forwarded: \(request)")
        }
        let events = recorder.events.withLock { $0 }
        #expect(events.map(\.allowed) == Array(repeating: true, count: writes.count), "\(events.map(\.reason))")
        #expect(events.map(\.bytesDropped) == Array(repeating: Int64(second.utf8.count), count: writes.count), "\(events.map(\.bytesDropped))")
        // What was forwarded is the rewritten head and the body; the dropped bytes are not in it.
        #expect(events.allSatisfy { $0.bytesOut == Int64(got[0].utf8.count) }, "\(events.map(\.bytesOut)) against \(got[0].utf8.count)")
    }

    @Test("a tunnel to port 80 (CONNECT or SOCKS5) is refused before any lookup or connection; plain HTTP to the same name goes through", .timeLimit(.minutes(1)))
    func noTunnelToPort80() throws {
        let address = Self.loopback443()
        let upstream = try Collector(address: address, port: 80)
        defer { upstream.stop() }
        let recorder = Recorder()
        let proxy = try Self.start(allow: ["web.test"], hosts: [:], recorder: recorder)
        let connect = try Self.exchange(proxy.port, Array("CONNECT web.test:80 HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHost: evil.test\r\n\r\n".utf8))
        #expect(connect.hasPrefix("HTTP/1.1 403") && connect.contains("tunnel-to-http-port"), "\(connect)")
        let socks = try Self.exchange(proxy.port, [5, 1, 0, 5, 1, 0, 3, 8] + Array("web.test".utf8) + [0, 80])
        #expect(Array(socks.utf8).prefix(4) == [5, 0, 5, 2], "\(Array(socks.utf8))")
        #expect(recorder.lookups.withLock { $0 } == [] && upstream.accepted.withLock { $0 } == 0)
        // Positive control: the absolute form reaches the upstream (the injected resolver answers 127.0.0.1,
        // so the name is pinned to the collector's address for this request).
        proxy.stop()
        let pinned = try Self.start(allow: ["web.test"], hosts: ["web.test": Self.dotted(address)], recorder: recorder)
        defer { pinned.stop() }
        let plain = try Self.exchange(pinned.port, Array("GET http://web.test/x HTTP/1.1\r\n\r\n".utf8))
        #expect(plain.hasSuffix("ok"), "\(plain)")
        #expect(upstream.received.withLock { $0 }.first?.hasPrefix("GET /x HTTP/1.1\r\nHost: web.test\r\n") == true)
        #expect(recorder.events.withLock { $0.map { $0.reason ?? "ok" } }.prefix(2) == ["tunnel-to-http-port", "tunnel-to-http-port"])
    }

    @Test("plain HTTP's body framing: a Content-Length or Transfer-Encoding: chunked alone; another coding is refused (411), lengths that disagree or do not parse and both framings at once are refused (400)")
    func bodyFraming() throws {
        func parse(_ headers: String, version: String = "HTTP/1.1") -> Result<ProxyRequest, ProxyRequest.Failure> {
            ProxyRequest.parseHTTP(ArraySlice(Array("POST http://a.test/ \(version)\r\n\(headers)\r\n".utf8)))
        }
        #expect(try parse("").get().bodyLength == 0)
        #expect(try parse("Content-Length: 12\r\n").get().bodyLength == 12)
        #expect(try parse("Content-Length: 7\r\ncontent-length:7 \r\n").get().bodyLength == 7)
        for headers in ["Transfer-Encoding: chunked\r\n", "transfer-encoding:  ChUnKeD \r\n"] {
            let request = try parse(headers).get()
            #expect(request.chunked && request.bodyLength == 0, "\(headers.debugDescription)")
            // The upstream is told how the body is framed, in the proxy's words, not the client's.
            let head = String(decoding: request.upstreamHead, as: UTF8.self)
            #expect(head.components(separatedBy: "Transfer-Encoding: chunked\r\n").count == 2 && !head.contains("ChUnKeD"), "\(head)")
        }
        #expect(try parse("Content-Length: 3\r\n").get().chunked == false)
        for (headers, status) in [("Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", 400), ("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", 400),
                                  ("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", 400),
                                  ("Transfer-Encoding: gzip, chunked\r\n", 411), ("Transfer-Encoding: chunked, chunked\r\n", 411),
                                  ("Transfer-Encoding: \r\n", 411), ("Transfer-Encoding: xchunked\r\n", 411),
                                  ("Content-Length: 3\r\nContent-Length: 4\r\n", 400), ("Content-Length: 3, 3\r\n", 400),
                                  ("Content-Length: -1\r\n", 400), ("Content-Length: \r\n", 400), ("Content-Length: +5\r\n", 400),
                                  ("Content-Length: 1234567890123456789\r\n", 400), ("TRANSFER-ENCODING: identity\r\n", 411),
                                  ("Content-Length : 5\r\n", 400), ("Content-Length: 5\r\n 5\r\n", 400),
                                  // A look-alike a Unicode case mapping would take for chunked (K, KELVIN SIGN).
                                  ("Transfer-Encoding: chun\u{212A}ed\r\n", 411), ("Transfer-Encoding: chunke\u{0}\r\n", 431),
                                  // Names an upstream reading headers as CGI variables takes for the framing headers.
                                  ("Transfer_Encoding: chunked\r\n", 400), ("Content_Length: 5\r\n", 400),
                                  ("Content-Length: 5\r\ncontent_length: 9\r\n", 400)] {
            switch parse(headers) {
            case .success: Issue.record("accepted: \(headers.debugDescription)")
            case .failure(let f): #expect(f.status == status, "\(headers.debugDescription): \(f)")
            }
        }
        switch parse("Transfer-Encoding: chunked\r\n", version: "HTTP/1.0") {
        case .success: Issue.record("a chunked HTTP/1.0 request accepted")
        case .failure(let f): #expect(f.status == 400, "\(f)")
        }
    }

    /// The data of a chunked body at `offset` of `bytes` if it is framed as the proxy frames one (sizes
    /// in lowercase hexadecimal without leading zeros, no extension, no trailer, then the end); nil otherwise.
    static func plainChunks(_ bytes: [UInt8], after offset: Int) -> String? {
        var i = offset
        var data: [UInt8] = []
        while true {
            guard let lineEnd = (i..<max(i, bytes.count - 1)).first(where: { bytes[$0] == 13 && bytes[$0 + 1] == 10 }) else { return nil }
            let line = String(decoding: bytes[i..<lineEnd], as: UTF8.self)
            guard let size = Int(line, radix: 16), line == String(size, radix: 16) else { return nil }
            i = lineEnd + 2
            if size == 0 { return i + 2 == bytes.count && bytes[i] == 13 && bytes[i + 1] == 10 ? String(decoding: data, as: UTF8.self) : nil }
            guard i + size + 2 <= bytes.count, bytes[i + size] == 13, bytes[i + size + 1] == 10 else { return nil }
            data += bytes[i..<(i + size)]
            i += size + 2
        }
    }

    @Test("plain HTTP with a chunked body: the body reaches the upstream whole and re-chunked, split anywhere; a request pipelined behind it never does; a malformed body stops before its first bad byte", .timeLimit(.minutes(1)))
    func chunkedBodyRelayed() throws {
        let address = Self.loopback443()
        let upstream = try Collector(address: address, port: 8082)
        defer { upstream.stop() }
        let head = "POST http://web.test:8082/up HTTP/1.1\r\nHost: web.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        let body = "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Check: yes\r\n\r\n"
        let second = "GET http://evil.test/second HTTP/1.1\r\nHost: evil.test\r\n\r\n"
        // Positive control: sent to the upstream directly, the pipelined request reaches it.
        let direct = try Self.connect(8082, address: address)
        _ = Array((head + body + second).utf8).withUnsafeBytes { send(direct, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var scratch = [UInt8](repeating: 0, count: 256)
        _ = recv(direct, &scratch, scratch.count, 0)
        close(direct)
        #expect(upstream.received.withLock { $0.first?.contains("evil.test") } == true, "the control did not reach the upstream")

        let recorder = Recorder()
        let proxy = try Self.start(allow: ["web.test:8082"], hosts: ["web.test": Self.dotted(address)], recorder: recorder)
        // At once; with the head alone first; cut inside a size line, inside a chunk's data, inside the
        // trailers; and the second request a moment after the whole body.
        let all = Array((body + second).utf8)
        func cut(_ n: Int) -> [String] { [String(decoding: all[..<n], as: UTF8.self), String(decoding: all[n...], as: UTF8.self)] }
        let whole = String(decoding: all, as: UTF8.self)
        // Cut after "5;e", between a size line's CR and LF, inside the first chunk's data, inside the trailers.
        let writes = [[head + whole], [head, whole], [head] + cut(3), [head] + cut(8), [head] + cut(12), [head] + cut(body.utf8.count - 6),
                      [head + body, second]]
        for parts in writes {
            let answer = try Self.exchange(proxy.port, parts: parts.map { Array($0.utf8) })
            #expect(answer.hasSuffix("ok"), "\(parts): \(answer)")
        }
        // A body malformed in the first read is answered 400 with no upstream connection; one malformed
        // later is cut before the read that holds the bad byte.
        let accepted = upstream.accepted.withLock { $0 }
        let early = try Self.exchange(proxy.port, Array((head + "5\nhello\r\n0\r\n\r\n").utf8))
        #expect(early.hasPrefix("HTTP/1.1 400") && early.contains("malformed chunked body"), "\(early)")
        #expect(upstream.accepted.withLock { $0 } == accepted, "the upstream was connected for a malformed body")
        _ = try Self.exchange(proxy.port, parts: [Array((head + "5\r\nhel").utf8), Array(("loX\r\n" + second).utf8)])
        proxy.stop()
        for _ in 0..<100 where upstream.received.withLock({ $0.count }) < writes.count + 2 { usleep(50_000) }
        let got = upstream.received.withLock { Array($0.dropFirst()) }
        #expect(got.count == writes.count + 1, "\(got)")
        for request in got.prefix(writes.count) {
            #expect(request.hasPrefix("POST /up HTTP/1.1\r\nHost: web.test:8082\r\n"), "\(request)")
            #expect(!request.contains("evil") && !request.contains("second"), "the pipelined request was forwarded: \(request)")
            // The body as the proxy frames it: the client's data, in plain chunks, no extension, no trailer.
            let parts = request.components(separatedBy: "\r\n\r\n")
            #expect(parts.count >= 2 && parts[0].components(separatedBy: "\r\nTransfer-Encoding: chunked\r\n").count == 2, "\(request)")
            let decoded = Self.plainChunks(Array(request.utf8), after: parts[0].utf8.count + 4)
            #expect(decoded == "hello world", "\(request)")
        }
        // The late one: its head and the chunk of valid data that came with it, nothing after.
        #expect(got.last.map { $0.hasSuffix("\r\nConnection: close\r\n\r\n3\r\nhel\r\n") && !$0.contains("evil") } == true, "\(got)")
        let events = recorder.events.withLock { $0 }
        #expect(events.prefix(writes.count).map(\.allowed) == Array(repeating: true, count: writes.count), "\(events.map(\.reason))")
        #expect(events.prefix(writes.count).map(\.bytesDropped) == Array(repeating: Int64(second.utf8.count), count: writes.count),
                "\(events.map(\.bytesDropped))")
        #expect(events.dropFirst(writes.count).map(\.reason) == ["malformed-body", "malformed-body"], "\(events.map(\.reason))")
    }
}

extension EgressProxyTests {
    @Test("a relayed connection is put on record before its first byte moves, numbered as the proxy took it; one that cannot be is not relayed", .timeLimit(.minutes(1)))
    func openedBeforeRelay() throws {
        let address = Self.loopback443()
        let upstream = try Collector(address: address, port: 8081)
        defer { upstream.stop() }
        let recorder = Recorder()
        final class OpenLog: Sendable {
            let rows = Mutex<[(EgressProxy.Event, Int)]>([])
            let refuse = Mutex(false)
        }
        let log = OpenLog()
        let proxy = try Self.start(allow: ["web.test:8081"], hosts: ["web.test": Self.dotted(address)], onOpen: { event in
            // The bytes the upstream has received a moment after the row is written: none of this connection's.
            usleep(150_000)
            let seen = upstream.bytes.withLock { $0 }
            log.rows.withLock { $0.append((event, seen)) }
            return !log.refuse.withLock { $0 }
        }, recorder: recorder)
        _ = try Self.exchange(proxy.port, Array("CONNECT other.test:8081 HTTP/1.1\r\n\r\n".utf8))
        let ok = try Self.exchange(proxy.port, Array("GET http://web.test:8081/a HTTP/1.1\r\n\r\n".utf8))
        #expect(ok.hasSuffix("ok"), "\(ok)")
        log.refuse.withLock { $0 = true }
        let unrecorded = try Self.exchange(proxy.port, Array("GET http://web.test:8081/b HTTP/1.1\r\n\r\n".utf8))
        #expect(!unrecorded.contains("ok"), "relayed though it could not be recorded: \(unrecorded)")
        proxy.stop()
        let rows = log.rows.withLock { $0 }
        #expect(rows.map { $0.0.connection } == [2, 3] && rows.map { $0.0.host } == ["web.test", "web.test"], "\(rows.map { $0.0 })")
        #expect(rows.first?.0.address == Self.dotted(address) && rows.first?.0.rule == "web.test:8081")
        for _ in 0..<100 where upstream.received.withLock({ $0.count }) < 2 { usleep(50_000) }
        // The positive control's request reached the upstream, after its row; the unrecorded one's bytes never did.
        let got = upstream.received.withLock { $0 }
        #expect(rows.map(\.1) == [0, got.first?.utf8.count ?? -1], "bytes at the upstream when each row was written: \(rows.map(\.1))")
        #expect(upstream.bytes.withLock { $0 } == got.first?.utf8.count)
        #expect(got.first?.hasPrefix("GET /a HTTP/1.1") == true && got.dropFirst().allSatisfy { !$0.contains("GET /b") }, "\(got)")
        let ends = recorder.events.withLock { $0 }
        #expect(ends.map(\.connection) == [1, 2, 3] && ends.map { $0.reason ?? "ok" } == ["not-allowed", "ok", "not-recorded"], "\(ends.map(\.reason))")
    }
}

extension EgressProxyTests {
    /// Runs `argv` and returns its wait status.
    static func spawnHere(_ argv: [String]) -> Int32 {
        var pid: pid_t = 0
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { cArgs.forEach { free($0) } }
        guard posix_spawn(&pid, argv[0], nil, nil, cArgs, environ) == 0 else { return -1 }
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        return status
    }

    @Test("an address made local only by a `local` route (AnyIP, on no interface), IPv4 or IPv6, is refused as the host's own unless allowPrivate, with ip_nonlocal_bind off and on; the control connects to it directly",
          .timeLimit(.minutes(1)), arguments: [false, true])
    func localRoute(nonlocalBind: Bool) throws {
        final class Outcome: @unchecked Sendable {
            let finished = Atomic<Bool>(false)
            var own: [Bool] = []
            var notes: [String] = []
            var control = false
            var refused = ""
            var allowed = ""
            var reasons: [String] = []
        }
        let outcome = Outcome()
        // All of it in a thread of its own, in a network namespace of its own: the route and the
        // proxy's threads (made from this thread) are there, and nothing leaves it (only `lo`).
        let name = "stk-anyip-\(getpid())-\(nonlocalBind ? 1 : 0)"
        try #require(Self.spawnHere(["/sbin/ip", "netns", "add", name]) == 0)
        defer { _ = Self.spawnHere(["/sbin/ip", "netns", "delete", name]) }
        try #require(Self.spawnHere(["/sbin/ip", "-n", name, "link", "set", "lo", "up"]) == 0)
        try #require(Self.spawnHere(["/sbin/ip", "-n", name, "route", "add", "local", "11.0.0.0/24", "dev", "lo"]) == 0)
        // Public-looking ranges, in this namespace only (nothing leaves it): a local one for IPv6; for
        // each family one routed as any other network is (unicast: not the host's); and one local
        // only in a table that a rule gives TCP to port 8443 alone.
        for route in [["-6", "route", "add", "local", "2a00:11::/64", "dev", "lo"], ["route", "add", "12.0.0.0/8", "dev", "lo"],
                      ["-6", "route", "add", "2a00:12::/64", "dev", "lo"], ["-6", "route", "add", "local", "2a00:13::/64", "dev", "lo", "table", "100"],
                      ["-6", "rule", "add", "ipproto", "tcp", "dport", "8443", "lookup", "100"],
                      // And one local only for connections from the address a connection there is given.
                      ["link", "add", "d0", "type", "veth", "peer", "name", "d1"], ["link", "set", "d0", "up"], ["link", "set", "d1", "up"],
                      ["-6", "addr", "add", "2a00:1::5/64", "dev", "d0", "nodad"],
                      ["-6", "rule", "add", "from", "2a00:1::5", "lookup", "101"], ["-6", "route", "add", "local", "2a00:14::/64", "dev", "lo", "table", "101"]] {
            try #require(Self.spawnHere(["/sbin/ip", "-n", name] + route) == 0, "ip \(route)")
        }
        if nonlocalBind {
            // Any address binds now, so a socket's bind can no longer tell the host's own apart.
            for knob in ["net.ipv4.ip_nonlocal_bind=1", "net.ipv6.ip_nonlocal_bind=1"] {
                try #require(Self.spawnHere(["/sbin/ip", "netns", "exec", name, "/sbin/sysctl", "-q", "-w", knob]) == 0)
            }
        }
        let namespace = open("/run/netns/" + name, O_RDONLY | O_CLOEXEC)
        try #require(namespace >= 0)
        defer { close(namespace) }
        let thread = Thread {
            defer { outcome.finished.store(true, ordering: .releasing) }
            guard stk_setns_net(namespace) == 0 else { outcome.notes.append("setns: errno \(errno)"); return }
            // This thread's id (its /proc entry names its namespace, not the process's).
            var link = [CChar](repeating: 0, count: 64)
            let n = readlink("/proc/thread-self", &link, link.count - 1)
            guard n > 0, let tid = Int32(String(decoding: link.prefix(n).map { UInt8(bitPattern: $0) }, as: UTF8.self).split(separator: "/").last ?? "") else {
                outcome.notes.append("no thread id")
                return
            }
            // A service bound to every address answers on the whole range.
            guard let upstream = try? Upstream(body: Array("host service".utf8), address: 0) else { outcome.notes.append("no upstream"); return }
            defer { upstream.stop() }
            // Positive control: the range's address reaches it directly.
            let direct = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = upstream.port.bigEndian
            a.sin_addr.s_addr = UInt32(0x0B00_0007).bigEndian
            outcome.control = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(direct, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } } == 0
            close(direct)
            func v6(_ net: UInt8) -> [UInt8] { [0x2a, 0x00, 0x00, net] + [UInt8](repeating: 0, count: 11) + [7] }
            var v6Beside = v6(0x11)
            v6Beside[7] = 1
            outcome.own = [EgressProxy.isOwnAddress([11, 0, 0, 7], port: 443), EgressProxy.isOwnAddress([11, 0, 1, 7], port: 443),
                           EgressProxy.isOwnAddress(v6(0x11), port: 443), EgressProxy.isOwnAddress(v6Beside, port: 443),
                           EgressProxy.isOwnAddress([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 11, 0, 0, 7], port: 443),
                           EgressProxy.isOwnAddress([12, 0, 0, 7], port: 443), EgressProxy.isOwnAddress(v6(0x12), port: 443),
                           EgressProxy.isOwnAddress(v6(0x13), port: 8443), EgressProxy.isOwnAddress(v6(0x13), port: 8444),
                           EgressProxy.isOwnAddress(v6(0x14), port: 8080)]
            for allowPrivate in [false, true] {
                let recorder = Recorder()
                guard let proxy = try? Self.start(allow: ["anyip.test:\(upstream.port)"], hosts: ["anyip.test": "11.0.0.7"], allowPrivate: allowPrivate,
                                                  namespaceOf: tid, recorder: recorder),
                      let answer = try? Self.exchange(proxy.port, Array("CONNECT anyip.test:\(upstream.port) HTTP/1.1\r\n\r\nping".utf8)) else {
                    outcome.notes.append("no proxy")
                    return
                }
                // The connection's end is recorded once the proxy has seen the client go.
                for _ in 0..<200 where recorder.events.withLock({ $0.isEmpty }) { usleep(10_000) }
                proxy.stop()
                if allowPrivate { outcome.allowed = answer } else { outcome.refused = answer }
                outcome.reasons += recorder.events.withLock { $0.map { $0.reason ?? "ok" } }
            }
            // The NAT64 form of the routed address: judged as the IPv4 address it carries, which a
            // translator on this host would connect to.
            let recorder = Recorder()
            if let proxy = try? Self.start(allow: ["nat64.test:\(upstream.port)"], hosts: ["nat64.test": "64:ff9b::b00:7"], allowPrivate: false,
                                           namespaceOf: tid, recorder: recorder),
               let answer = try? Self.exchange(proxy.port, Array("CONNECT nat64.test:\(upstream.port) HTTP/1.1\r\n\r\nping".utf8)) {
                for _ in 0..<200 where recorder.events.withLock({ $0.isEmpty }) { usleep(10_000) }
                proxy.stop()
                outcome.reasons += recorder.events.withLock { $0.map { ($0.reason ?? "ok") + " " + answer.prefix(12) } }
            } else {
                outcome.notes.append("no NAT64 proxy")
            }
        }
        thread.start()
        for _ in 0..<600 where !outcome.finished.load(ordering: .acquiring) { usleep(50_000) }
        let finished = outcome.finished.load(ordering: .acquiring)
        #expect(finished)
        #expect(outcome.notes.isEmpty, "\(outcome.notes)")
        #expect(outcome.own == [true, false, true, false, true, false, false, true, false, true],
                "the kernel's routes: each address a local route covers is the host's (IPv4, IPv6, IPv4-mapped; through a rule on the port only for that port; through a rule on the source address), one beside it or on a unicast route is not")
        #expect(outcome.control, "the control did not reach the service through the local route")
        #expect(outcome.refused.hasPrefix("HTTP/1.1 403") && outcome.refused.contains("local-address") && !outcome.refused.contains("host service"),
                "\(outcome.refused)")
        #expect(outcome.allowed.hasSuffix("host service"), "allowPrivate admits it: \(outcome.allowed)")
        #expect(outcome.reasons == ["local-address", "ok", "local-address HTTP/1.1 403"], "\(outcome.reasons)")
    }

    @Test("out of descriptors, the accept loop waits instead of spinning on a core, and serves the queued connection once it can",
          .timeLimit(.minutes(1)))
    func outOfDescriptors() throws {
        let recorder = Recorder()
        let proxy = try Self.start(allow: ["allowed.test"], recorder: recorder)
        defer { proxy.stop() }
        // The client's socket is made before the limit is lowered; connecting needs no new descriptor.
        let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        try #require(client >= 0)
        defer { close(client) }
        var tv = timeval(tv_sec: 20, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        // The lowest free descriptor number as the soft limit: nothing more can be opened.
        let lowest = dup(0)
        try #require(lowest >= 0)
        close(lowest)
        let resource = __rlimit_resource_t(RLIMIT_NOFILE.rawValue)
        var saved = rlimit()
        try #require(getrlimit(resource, &saved) == 0)
        var lowered = saved
        lowered.rlim_cur = rlim_t(lowest)
        var before = rusage(), after = rusage()
        try #require(setrlimit(resource, &lowered) == 0)
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = proxy.port.bigEndian
        a.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let connected = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(client, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        let refused = dup(0)  // the control: this process can open no descriptor now
        getrusage(RUSAGE_SELF.rawValue, &before)
        usleep(600_000)
        getrusage(RUSAGE_SELF.rawValue, &after)
        var restored = saved
        let put = setrlimit(resource, &restored)
        try #require(put == 0 && connected == 0)
        #expect(refused < 0 && errno == EMFILE)
        func seconds(_ r: rusage) -> Double {
            Double(r.ru_utime.tv_sec + r.ru_stime.tv_sec) + Double(r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6
        }
        // A loop that retried at once would take the whole 0.6 s of one core.
        let used = seconds(after) - seconds(before)
        #expect(used < 0.2, "the process used \(used) s of CPU in 0.6 s while accept failed with EMFILE")
        // Once descriptors can be opened again, the queued connection is taken and answered.
        let request = Array("CONNECT denied.test:443 HTTP/1.1\r\n\r\n".utf8)
        _ = request.withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var answer = [UInt8](repeating: 0, count: 512)
        let got = recv(client, &answer, answer.count, 0)
        #expect(got > 0 && String(decoding: answer[..<max(got, 0)], as: UTF8.self).hasPrefix("HTTP/1.1 403"))
    }
}
