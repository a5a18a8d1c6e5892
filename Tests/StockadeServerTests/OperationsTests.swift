import Crypto
import Foundation
import Glibc
import StockadeTestSupport
import Synchronization
import Testing

/// Helpers for the operations suites: free loopback ports, certificates, raw sockets, /proc.
enum Ops {
    /// A TCP port on 127.0.0.1 nobody listens on right now.
    static func freePort() -> UInt16 { freeLoopbackPort() }

    /// A self-signed P-256 certificate for IP 127.0.0.1 and its key (mode 0600), made by the openssl CLI.
    static func certificate(in directory: String, name: String = "server") throws -> (cert: String, key: String) {
        let cert = "\(directory)/\(name).crt", key = "\(directory)/\(name).key"
        let made = try ServerHarness.exec("/usr/bin/openssl", [
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
            "-subj", "/CN=stockade-test", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert,
        ])
        try #require(made.status == 0, "openssl req: \(made.stderr)")
        chmod(key, 0o600)
        return (cert, key)
    }

    static func curl(_ arguments: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        try ServerHarness.exec("/usr/bin/curl", ["-sS", "--max-time", "20"] + arguments)
    }

    /// Whether the peer closed the connection within `seconds` (read returns 0 or the connection is
    /// reset), and the bytes it sent before that.
    static func closedByPeer(_ fd: Int32, within seconds: Int) -> (closed: Bool, received: [UInt8]) {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var received: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n > 0 { received += chunk[0..<n]; continue }
            if n < 0 && errno == EINTR { continue }
            return (n == 0 || errno == ECONNRESET, received)
        }
    }

    /// A field of /proc/PID/status in kB (VmRSS, ...).
    static func status(_ pid: Int32, _ field: String) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
            return Int(line.dropFirst(field.count + 1).trimmingCharacters(in: .whitespaces).split(separator: " ").first ?? "")
        }
        return nil
    }

    static func openDescriptors(_ pid: Int32) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? 0
    }

    static func limit(_ pid: Int32, _ name: String) -> String? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8) else { return nil }
        return text.split(separator: "\n").first { $0.hasPrefix(name) }.map(String.init)
    }
}

@Suite("stockade serve: TLS on TCP", .serialized,
       .enabled(if: ServerHarness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct TLSListenerTests {
    @Test("with --tls-cert/--tls-key loopback TCP answers HTTPS only: curl --cacert gets /v1/health, plain HTTP gets no HTTP answer")
    func httpsOnLoopback() throws {
        let server = try ServerHarness(start: false)
        let (cert, key) = try Ops.certificate(in: server.directory)
        let port = Ops.freePort()
        try server.start(["--tls-cert", cert, "--tls-key", key], listen: "tcp://127.0.0.1:\(port)")
        #expect(server.log.contains("scheme=https"), "\(server.log)")

        let health = try Ops.curl(["--cacert", cert, "https://127.0.0.1:\(port)/v1/health"])
        #expect(health.status == 0, "curl https: \(health.stderr)")
        #expect(health.stdout.contains(#""status":"ok""#), "\(health.stdout)")
        // The certificate is checked: without the CA, curl refuses the unknown issuer.
        let untrusted = try Ops.curl(["https://127.0.0.1:\(port)/v1/health"])
        #expect(untrusted.status != 0 && !untrusted.stdout.contains("status"))

        // TLS 1.2 at least: a client that offers only TLS 1.1 (allowed on its side) gets no session.
        let handshake = { (version: String) in
            try ServerHarness.exec("/usr/bin/openssl", ["s_client", "-connect", "127.0.0.1:\(port)", version,
                                                        "-cipher", "DEFAULT@SECLEVEL=0", "-CAfile", cert])
        }
        let modern = try handshake("-tls1_2")
        #expect(modern.status == 0 && modern.stdout.contains("New, TLSv1.2"), "a TLS 1.2 client is served: \(modern.stdout) \(modern.stderr)")
        let old = try handshake("-tls1_1")
        #expect(old.status != 0 && old.stdout.contains("Cipher is (NONE)"), "a TLS 1.1 client is refused: \(old.stdout)")

        // Plain HTTP on the same port: the server speaks TLS only, so no HTTP answer ever comes.
        let fd = try HTTPClient(address: .tcp(port: port)).connect(timeoutSeconds: 10)
        defer { close(fd) }
        try HTTPClient.send(fd, HTTPClient.head("GET", "/v1/health", token: nil, headers: [:], bodyCount: nil))
        let (closed, received) = Ops.closedByPeer(fd, within: 10)
        #expect(closed, "the server closes a connection that does not speak TLS")
        #expect(!String(decoding: received, as: UTF8.self).contains("HTTP/1.1"), "no HTTP answer in the clear: \(received.prefix(64))")
        let plainCurl = try Ops.curl(["http://127.0.0.1:\(port)/v1/health"])
        #expect(plainCurl.status != 0 && !plainCurl.stdout.contains("status"), "curl http: \(plainCurl.status) \(plainCurl.stdout)")

        // Requests go through the same API: a token works over HTTPS.
        let token = try server.token("engine", scopes: "run:read")
        let listed = try Ops.curl(["--cacert", cert, "-H", "Authorization: Bearer \(token)", "https://127.0.0.1:\(port)/v1/runs"])
        #expect(listed.status == 0 && listed.stdout.contains(#""runs":[]"#), "\(listed.stdout) \(listed.stderr)")
        #expect(server.terminate() == 0)
    }

    @Test("beyond loopback: 0.0.0.0 served with TLS (reached via 127.0.0.1), refused without; TLS flags on a Unix socket, a missing key, a mismatched key refused naming the flag")
    func beyondLoopback() throws {
        let server = try ServerHarness(start: false)
        let (cert, key) = try Ops.certificate(in: server.directory)
        let port = Ops.freePort()
        try server.start(["--tls-cert", cert, "--tls-key", key], listen: "tcp://0.0.0.0:\(port)")
        let health = try Ops.curl(["--cacert", cert, "https://127.0.0.1:\(port)/v1/health"])
        #expect(health.status == 0 && health.stdout.contains(#""status":"ok""#), "\(health.stdout) \(health.stderr)")
        #expect(server.terminate() == 0)

        let state = ["--state-dir", server.stateDirectory]
        let other = Ops.freePort()
        let clear = try ServerHarness.exec(ServerHarness.stockade, ["serve", "--listen", "tcp://0.0.0.0:\(other)"] + state)
        #expect(clear.status == 2)
        #expect(clear.stderr.contains("requires TLS") && clear.stderr.contains("--tls-cert"), "\(clear.stderr)")

        let unix = try ServerHarness.exec(ServerHarness.stockade, ["serve", "--listen", "unix://\(server.socketPath)", "--tls-cert", cert, "--tls-key", key] + state)
        #expect(unix.status == 2)
        #expect(unix.stderr.contains("tcp://"), "\(unix.stderr)")

        let alone = try ServerHarness.exec(ServerHarness.stockade, ["serve", "--listen", "tcp://127.0.0.1:\(other)", "--tls-cert", cert] + state)
        #expect(alone.status == 2 && alone.stderr.contains("--tls-key"), "\(alone.stderr)")

        let missing = server.directory + "/no-such.key"
        let noKey = try ServerHarness.exec(ServerHarness.stockade, ["serve", "--listen", "tcp://127.0.0.1:\(other)", "--tls-cert", cert, "--tls-key", missing] + state)
        #expect(noKey.status == 2)
        #expect(noKey.stderr.contains("--tls-key \(missing)") && noKey.stderr.contains("no such file"), "\(noKey.stderr)")

        let notPEM = try ServerHarness.exec(ServerHarness.stockade, ["serve", "--listen", "tcp://127.0.0.1:\(other)", "--tls-cert", key, "--tls-key", key] + state)
        #expect(notPEM.status == 2 && notPEM.stderr.contains("--tls-cert \(key)"), "\(notPEM.stderr)")

        let (_, otherKey) = try Ops.certificate(in: server.directory, name: "other")
        let mismatch = try ServerHarness.exec(ServerHarness.stockade, ["serve", "--listen", "tcp://127.0.0.1:\(other)", "--tls-cert", cert, "--tls-key", otherKey] + state)
        #expect(mismatch.status == 2 && mismatch.stderr.contains("--tls-key \(otherKey)"), "\(mismatch.stderr)")

        chmod(key, 0o644)
        let exposed = try ServerHarness.exec(ServerHarness.stockade, ["serve", "--listen", "tcp://127.0.0.1:\(other)", "--tls-cert", cert, "--tls-key", key] + state)
        #expect(exposed.status == 2 && exposed.stderr.contains("readable by other users"), "\(exposed.stderr)")
    }
}

@Suite("stockade serve: hostile clients", .serialized,
       .enabled(if: ServerHarness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(5)))
struct HostileClientTests {
    @Test("half a request head, then silence: closed by --header-timeout; a body that trickles: cut by --body-timeout; neither answered")
    func stalledRequests() throws {
        // The idle timeout is far away: only the header and body deadlines can close these.
        let server = try ServerHarness(arguments: ["--idle-timeout", "120s", "--header-timeout", "2s", "--body-timeout", "2s"])
        let token = try server.token("engine", scopes: "run:write")

        let half = try server.client.connect(timeoutSeconds: 30)
        defer { close(half) }
        try HTTPClient.send(half, Array("GET /v1/health HTTP/1.1\r\nHost: stockade\r\n".utf8))
        let stalled = Ops.closedByPeer(half, within: 30)
        #expect(stalled.closed, "a half-sent head is closed within 30 s")
        #expect(stalled.received.isEmpty, "and never answered: \(String(decoding: stalled.received, as: UTF8.self))")

        // A complete head, then one byte of a 200-byte body every 300 ms: it would take a minute.
        let trickle = try server.client.connect(timeoutSeconds: 30)
        defer { close(trickle) }
        try HTTPClient.send(trickle, HTTPClient.head("POST", "/v1/runs", token: token, headers: [:], bodyCount: 200))
        var sent = 0
        var cut = false
        while sent < 200 {
            var byte: UInt8 = 0x20
            if Glibc.send(trickle, &byte, 1, Int32(MSG_NOSIGNAL)) != 1 { cut = true; break }
            sent += 1
            var probe: UInt8 = 0
            let n = recv(trickle, &probe, 1, Int32(MSG_DONTWAIT))
            if n == 0 || (n < 0 && errno == ECONNRESET) { cut = true; break }
            #expect(n < 0, "no answer to a request whose body has not arrived")
            usleep(300_000)
        }
        #expect(cut, "the trickling body was cut off after \(sent) of 200 bytes")
        #expect(sent < 100, "cut long before the body could complete: \(sent) bytes")

        // A well-behaved client is still served.
        #expect(try server.client.request("GET", "/v1/health").status == 200)
        #expect(server.terminate() == 0)
    }

    @Test("an idle keep-alive connection is closed after --idle-timeout; a connection that never sends is closed too")
    func idleConnections() throws {
        let server = try ServerHarness(arguments: ["--idle-timeout", "2s", "--header-timeout", "60s", "--body-timeout", "60s"])
        let fd = try server.client.connect(timeoutSeconds: 30)
        defer { close(fd) }
        var head = HTTPClient.head("GET", "/v1/health", token: nil, headers: [:], bodyCount: nil)
        // Keep-alive: the harness's head says Connection: close; this one must not.
        head = Array(String(decoding: head, as: UTF8.self).replacingOccurrences(of: "Connection: close\r\n", with: "").utf8)
        try HTTPClient.send(fd, head)
        let (closed, received) = Ops.closedByPeer(fd, within: 30)
        let text = String(decoding: received, as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 200"), "the request was answered: \(text)")
        #expect(closed, "then the idle connection was closed within 30 s")

        let silent = try server.client.connect(timeoutSeconds: 30)
        defer { close(silent) }
        let quiet = Ops.closedByPeer(silent, within: 30)
        #expect(quiet.closed && quiet.received.isEmpty, "a connection that sends nothing is closed")
        #expect(server.terminate() == 0)
    }

    @Test("1000 idle connections: another client's submit, run and wait still succeed; RSS grows < 64 MiB; RLIMIT_NOFILE raised to the hard limit")
    func manyIdleConnections() throws {
        // This process holds the 1000 client ends: raise its own soft limit too.
        var limit = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        let saved = limit
        limit.rlim_cur = limit.rlim_max
        setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        defer {
            var restore = saved
            setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &restore)
        }
        try #require(limit.rlim_max >= 1200, "the hard RLIMIT_NOFILE (\(limit.rlim_max)) leaves room for 1000 connections")

        // Start the service with a low soft limit, as a service manager might: it raises it itself.
        var low = limit
        low.rlim_cur = 256
        setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &low)
        let server: ServerHarness
        do {
            server = try ServerHarness()
        } catch {
            setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
            throw error
        }
        setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        let pid = server.process.processIdentifier
        let limits = try #require(Ops.limit(pid, "Max open files"))
        let fields = limits.split(separator: " ").filter { !$0.isEmpty }
        #expect(fields.count >= 5 && fields[3] == fields[4], "soft == hard in the service: \(limits)")
        #expect(fields[3] != "256", "the inherited soft limit was raised: \(limits)")

        let token = try server.token("engine", scopes: "run:read,run:write")
        // Warm up the paths a run takes, then measure.
        let warm = try server.client.request("POST", "/v1/runs", token: token, json: #"{"command":["/bin/true"]}"#)
        let warmId = try #require(try warm.json()["id"] as? String)
        #expect(try server.client.request("GET", "/v1/runs/\(warmId)/wait", token: token).status == 200)
        let rssBefore = try #require(Ops.status(pid, "VmRSS"))
        let descriptorsBefore = Ops.openDescriptors(pid)

        var idle: [Int32] = []
        defer { for fd in idle { close(fd) } }
        for _ in 0..<1000 { idle.append(try server.client.connect(timeoutSeconds: 60)) }
        // Wait until the service has accepted them all (each is a descriptor of its own). The
        // warm-up's own connections may still have been open at the first count: allow for them.
        var accepted = 0
        for _ in 0..<600 {
            accepted = Ops.openDescriptors(pid) - descriptorsBefore
            if accepted >= 995 { break }
            usleep(50_000)
        }
        #expect(accepted >= 995, "the service accepted the 1000 connections (\(accepted) new descriptors)")

        let submitted = try server.client.request("POST", "/v1/runs", token: token, json: #"{"command":["/bin/sh","-c","echo through"]}"#)
        #expect(submitted.status == 202, "\(submitted.text)")
        let id = try #require(try submitted.json()["id"] as? String)
        let waited = try server.client.request("GET", "/v1/runs/\(id)/wait", token: token)
        #expect(waited.status == 200)
        let report = try #require(try waited.json()["report"] as? [String: Any])
        #expect(report["outcome"] as? String == "exited" && report["stdout"] as? String == "through\n", "\(report)")

        let rssAfter = try #require(Ops.status(pid, "VmRSS"))
        let growth = rssAfter - rssBefore
        print("stockade serve RSS with 1000 idle connections: before \(rssBefore) kB, after \(rssAfter) kB, growth \(growth) kB")
        #expect(growth < 64 * 1024, "RSS grew by \(growth) kB with 1000 idle connections")
        // The idle connections are still open (not refused or dropped to make room).
        var probe: UInt8 = 0
        let open = idle.prefix(50).filter { recv($0, &probe, 1, Int32(MSG_DONTWAIT)) < 0 && errno == EAGAIN }.count
        #expect(open == 50, "idle connections still open: \(open) of 50 looked at")
        for fd in idle { close(fd) }
        idle.removeAll()
        #expect(server.terminate() == 0)
    }
}

extension HostileClientTests {
    @Test("--max-connections: one past the limit is closed unanswered while those open are still served; a freed place is taken again; the flag is checked")
    func connectionLimit() throws {
        let server = try ServerHarness(arguments: ["--max-connections", "16"])
        let pid = server.process.processIdentifier
        let before = Ops.openDescriptors(pid)
        var held: [Int32] = []
        defer { held.forEach { close($0) } }
        for _ in 0..<16 { held.append(try server.client.connect(timeoutSeconds: 10)) }
        // The harness's own start-up connection may still have been open at the first count: allow for it.
        for _ in 0..<200 where Ops.openDescriptors(pid) - before < 15 { usleep(25_000) }
        #expect(Ops.openDescriptors(pid) - before >= 15, "the service accepted the 16 connections")
        usleep(100_000)
        let extra = try server.client.connect(timeoutSeconds: 10)
        defer { close(extra) }
        _ = try? HTTPClient.send(extra, HTTPClient.head("GET", "/v1/health", token: nil, headers: [:], bodyCount: nil))
        var byte: UInt8 = 0
        #expect(recv(extra, &byte, 1, 0) <= 0, "the 17th connection is closed without an answer")
        // Those already open are served.
        try HTTPClient.send(held[0], HTTPClient.head("GET", "/v1/health", token: nil, headers: [:], bodyCount: nil))
        var answer = [UInt8](repeating: 0, count: 4096)
        let n = recv(held[0], &answer, answer.count, 0)
        #expect(n > 0 && String(decoding: answer[0..<max(n, 0)], as: UTF8.self).hasPrefix("HTTP/1.1 200"), "an open connection is answered")
        for fd in held { close(fd) }
        held = []
        var again: Int?
        for _ in 0..<100 {
            if let r = try? server.client.request("GET", "/v1/health"), r.status == 200 { again = r.status; break }
            usleep(50_000)
        }
        #expect(again == 200, "once connections close, new ones are served")
        #expect(server.terminate() == 0)
        let state = ["--state-dir", server.stateDirectory, "--listen", "unix://\(server.socketPath)"]
        let bad = try ServerHarness.exec(ServerHarness.stockade, ["serve", "--max-connections", "3"] + state)
        #expect(bad.status == 2 && bad.stderr.contains("--max-connections"), "\(bad.status) \(bad.stderr)")
        let tooMany = try ServerHarness.exec(ServerHarness.stockade, ["serve", "--max-connections", "1000000"] + state)
        #expect(tooMany.status != 0 && tooMany.stderr.contains("RLIMIT_NOFILE"), "\(tooMany.status) \(tooMany.stderr)")
    }
}

@Suite("stockade serve: per-principal quota", .serialized,
       .enabled(if: ServerHarness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct QuotaTests {
    @Test("a queued run cancelled through the API ends at once: its wait answers cancelled while the running one still runs, and its place in the queue is free again")
    func cancelledWhileQueued() throws {
        let server = try ServerHarness(arguments: ["--max-running", "1", "--max-queued", "1"])
        let token = try server.token("engine", scopes: "run:read,run:write")
        let long = try #require(try server.client.request("POST", "/v1/runs", token: token, json: #"{"command":["/bin/sh","-c","sleep 30"]}"#).json()["id"] as? String)
        let queued = try #require(try server.client.request("POST", "/v1/runs", token: token,
                                                             json: #"{"command":["/bin/true"]}"#).json()["id"] as? String)
        // Positive control: the queue is full.
        let full = try server.client.request("POST", "/v1/runs", token: token, json: #"{"command":["/bin/true"]}"#)
        #expect(full.status == 429 && (try? full.error().code) == "queue-full", "\(full.text)")
        #expect(try server.client.request("POST", "/v1/runs/\(queued)/cancel", token: token).status == 202)
        let waited = try server.client.request("GET", "/v1/runs/\(queued)/wait", token: token)
        let report = try waited.json()["report"] as? [String: Any]
        #expect(waited.status == 200 && report?["outcome"] as? String == "cancelled", "\(waited.text)")
        let running = try server.client.request("GET", "/v1/runs/\(long)", token: token)
        let state = try running.json()["state"] as? String
        #expect(state == "running", "the wait lasted until the running run's end: \(running.text)")
        var again = try server.client.request("POST", "/v1/runs", token: token, json: #"{"command":["/bin/true"]}"#)
        for _ in 0..<50 where again.status == 429 {
            usleep(100_000)
            again = try server.client.request("POST", "/v1/runs", token: token, json: #"{"command":["/bin/true"]}"#)
        }
        #expect(again.status == 202, "the cancelled run's place was not given back: \(again.text)")
        _ = try? server.client.request("POST", "/v1/runs/\(long)/cancel", token: token)
        #expect(server.terminate() == 0)
    }

    @Test("--max-per-principal 1: a token's second run is 429 quota-exceeded with Retry-After; another token still submits; the place frees when the run ends")
    func perPrincipal() throws {
        let server = try ServerHarness(arguments: ["--max-per-principal", "1", "--max-running", "4"])
        let alice = try server.token("alice", scopes: "run:read,run:write")
        let bob = try server.token("bob", scopes: "run:read,run:write")
        let long = #"{"command":["/bin/sh","-c","sleep 30"]}"#

        let first = try server.client.request("POST", "/v1/runs", token: alice, json: long)
        #expect(first.status == 202, "\(first.text)")
        let firstId = try #require(try first.json()["id"] as? String)
        let second = try server.client.request("POST", "/v1/runs", token: alice, json: long)
        #expect(second.status == 429, "\(second.text)")
        #expect(try second.error().code == "quota-exceeded")
        #expect(try second.error().field == nil)
        #expect(second.headers["retry-after"] != nil)

        let other = try server.client.request("POST", "/v1/runs", token: bob, json: #"{"command":["/bin/true"]}"#)
        #expect(other.status == 202, "another principal is not limited by alice's runs: \(other.text)")
        let otherId = try #require(try other.json()["id"] as? String)
        #expect(try server.client.request("GET", "/v1/runs/\(otherId)/wait", token: bob).status == 200)

        #expect(try server.client.request("POST", "/v1/runs/\(firstId)/cancel", token: alice).status == 202)
        #expect(try server.client.request("GET", "/v1/runs/\(firstId)/wait", token: alice).status == 200)
        // The report exists, so the place is free again (the registry releases it right after).
        var again = try server.client.request("POST", "/v1/runs", token: alice, json: #"{"command":["/bin/true"]}"#)
        for _ in 0..<50 where again.status == 429 {
            usleep(100_000)
            again = try server.client.request("POST", "/v1/runs", token: alice, json: #"{"command":["/bin/true"]}"#)
        }
        #expect(again.status == 202, "alice submits again once her run ended: \(again.text)")
        let refused = try server.stockade(["audit", "events", "--kind", "api.request", "--json"]).stdout
        #expect(refused.contains(#""principal":"alice""#) && refused.contains(#""status":429"#))
        let bad = try ServerHarness.exec(ServerHarness.stockade, ["serve", "--max-per-principal", "-1", "--state-dir", server.stateDirectory])
        #expect(bad.status == 2 && bad.stderr.contains("--max-per-principal"), "\(bad.stderr)")
        #expect(server.terminate() == 0)
    }

    @Test("--max-calls-per-token 1: past 1 call at once and 1 a second a token is answered 429 rate-limited with Retry-After, not recorded call by call but counted in api.throttled rows naming it; another token is served; run --host waits refused submissions, waits and cancels out, and an interrupt during its submission ends it with nothing admitted; a bound out of range is refused at start")
    func callsPerToken() throws {
        let server = try ServerHarness(arguments: ["--max-calls-per-token", "1"])
        let alice = try server.token("alice", scopes: "run:read")
        let bob = try server.token("bob", scopes: "run:read")
        let carol = try server.token("carol", scopes: "run:read,run:write")
        let dave = try server.token("dave", scopes: "run:read,run:write")
        let started = Date()
        var served = 0
        var refusals: [HTTPClient.Response] = []
        for _ in 0..<20 {
            let answer = try server.client.request("GET", "/v1/runs", token: alice)
            if answer.status == 200 { served += 1 } else { refusals.append(answer) }
        }
        let elapsed = Date().timeIntervalSince(started)
        // The burst, then the rate: never more than 1 at once and 1 a second over the time taken.
        #expect(served >= 1 && Double(served) <= 1 + elapsed + 1, "\(served) served in \(elapsed) s")
        #expect(elapsed > 15 || !refusals.isEmpty, "\(refusals.count) refused in \(elapsed) s")
        for refusal in refusals {
            #expect(refusal.status == 429, "\(refusal.status) \(refusal.text)")
            #expect(try refusal.error().code == "rate-limited")
            #expect(refusal.text.contains("--max-calls-per-token"), "\(refusal.text)")
            #expect(refusal.headers["retry-after"].flatMap { Int($0) }.map { $0 >= 1 } == true, "\(refusal.headers)")
        }
        // Another token has a bucket of its own.
        #expect(try server.client.request("GET", "/v1/runs", token: bob).status == 200)

        // `stockade run --host` as a process of its own, given at most `seconds` to end (a client
        // that retried for ever would otherwise hold the suite).
        func client(_ token: String, _ command: [String]) throws -> Process {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: ServerHarness.stockade)
            process.arguments = ["run", "--"] + command
            process.environment = ProcessInfo.processInfo.environment.merging([
                "STOCKADE_HOST": "unix://\(server.socketPath)", "STOCKADE_TOKEN": token, "STOCKADE_STATE_DIR": server.directory + "/client-state",
            ]) { $1 }
            process.standardInput = FileHandle.nullDevice
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            return process
        }
        func status(_ process: Process, within seconds: Double) -> Int32? {
            let deadline = Date().addingTimeInterval(seconds)
            while process.isRunning && Date() < deadline { usleep(20_000) }
            guard !process.isRunning else {
                kill(process.processIdentifier, SIGKILL)
                process.waitUntilExit()
                return nil
            }
            return process.terminationStatus
        }
        // Keeps a token's bucket empty for `seconds` from another thread, so that whatever the client
        // sends meanwhile is refused; counts its own refusals.
        let socket = server.socketPath
        final class Drained: Sendable {
            let group = DispatchGroup()
            let refusals = Atomic<Int>(0)
            var refused: Int { refusals.load(ordering: .relaxed) }
        }
        // Returns once the bucket is empty (the drain's first refusal), and holds it so for `seconds` more.
        func drain(_ token: String, for seconds: Double) -> Drained {
            let drained = Drained()
            DispatchQueue.global().async(group: drained.group) {
                let http = HTTPClient(address: .unix(socket))
                var until = Date().addingTimeInterval(30)
                while Date() < until {
                    if (try? http.request("GET", "/v1/runs", token: token))?.status == 429 {
                        if drained.refusals.add(1, ordering: .relaxed).newValue == 1 { until = Date().addingTimeInterval(seconds) }
                    }
                    usleep(5_000)
                }
            }
            for _ in 0..<1000 where drained.refused == 0 { usleep(5_000) }
            return drained
        }

        // A submission made while the token's bucket is empty is refused; the client waits each
        // Retry-After out and the run goes through (its wait, right after, is refused too).
        let drained = drain(carol, for: 2)
        let run = try client(carol, ["/bin/true"])
        #expect(status(run, within: 30) == 0, "run --host did not wait the refused submission out")
        drained.group.wait()

        // An interrupt while the bucket is empty: the cancel is refused, sent again after the
        // Retry-After, and the run ends cancelled (exit 130) instead of running its 30 s.
        let long = try client(dave, ["/bin/sh", "-c", "sleep 30"])
        var running = false
        // Looked at once a second: bob stays within his own bound.
        for _ in 0..<20 where !running {
            usleep(1_050_000)
            let listed = try server.client.request("GET", "/v1/runs?state=running", token: bob)
            #expect(listed.status == 200, "\(listed.text)")
            running = ((try? listed.json()["runs"] as? [[String: Any]]) ?? []).count == 1
        }
        #expect(running, "the long run did not start")
        let drainedAgain = drain(dave, for: 2)
        kill(long.processIdentifier, SIGINT)
        #expect(status(long, within: 20) == 130, "the interrupt's cancel was not sent again after its refusal")
        drainedAgain.group.wait()

        // An interrupt while the submission itself waits out a refusal: the submission stops there
        // (exit 130) and nothing is admitted, rather than the client ending and a run going on without it.
        func runCount() throws -> Int {
            usleep(1_050_000)  // bob stays within his own bound
            let listed = try server.client.request("GET", "/v1/runs", token: bob)
            return ((try? listed.json()["runs"] as? [[String: Any]]) ?? []).count
        }
        let before = try runCount()
        let drainedOnceMore = drain(dave, for: 2)
        let early = try client(dave, ["/bin/sh", "-c", "sleep 30"])
        usleep(500_000)
        kill(early.processIdentifier, SIGINT)
        #expect(status(early, within: 25) == 130, "an interrupt during the submission did not end it")
        drainedOnceMore.group.wait()
        #expect(try runCount() == before, "a run was admitted after the interrupt")

        let bad = try ServerHarness.exec(ServerHarness.stockade, ["serve", "--max-calls-per-token", "100001", "--state-dir", server.stateDirectory])
        #expect(bad.status == 2 && bad.stderr.contains("--max-calls-per-token: expected 0 (no limit) to 100000, found 100001"), "\(bad.stderr)")
        #expect(server.terminate() == 0)

        // Each refusal was counted rather than recorded: alice's rows are her served calls, and the
        // api.throttled rows (written at the stop at the latest) add up to her refusals.
        func details(_ kind: String) throws -> [[String: Any]] {
            try server.stockade(["audit", "events", "--kind", kind, "--json"]).stdout.split(separator: "\n").compactMap { line in
                (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["detail"] as? [String: Any]
            }
        }
        let rows = try details("api.request")
        #expect(rows.filter { $0["principal"] as? String == "alice" }.count == served, "\(served) served")
        #expect(!rows.contains { $0["status"] as? Int == 429 }, "a rate-limited call has no row of its own")
        let throttled = try details("api.throttled")
        func counted(_ name: String) -> Int {
            throttled.filter { $0["principal"] as? String == name }.compactMap { ($0["calls"] as? NSNumber)?.intValue }.reduce(0, +)
        }
        #expect(counted("alice") == refusals.count, "\(throttled)")
        // More refused than the drains' own: the clients' calls made while a drain held the bucket
        // (carol's submission, dave's cancel) were refused too.
        #expect(counted("carol") > drained.refused && counted("dave") > drainedAgain.refused,
                "carol \(counted("carol")) against the drain's \(drained.refused), dave \(counted("dave")) against \(drainedAgain.refused): \(throttled)")
        #expect(counted("bob") == 0)
        #expect(throttled.filter { $0["principal"] != nil }.allSatisfy { $0["perSecond"] as? Int == 1 && $0["burst"] as? Int == 1 && $0["peer"] == nil },
                "\(throttled)")
    }
}

@Suite("stockade token: administration in the audit trail", .serialized,
       .enabled(if: ServerHarness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(2)))
struct TokenAuditTests {
    @Test("token create and revoke are recorded as token.created and token.revoked, never with the token or its hash")
    func recorded() throws {
        let server = try ServerHarness(start: false)
        let token = try server.token("ci-bot", scopes: "run:read,audit:read", ttl: "2h")
        #expect(token.hasPrefix("stk_"))
        #expect(try server.stockade(["token", "revoke", "ci-bot"]).status == 0)
        #expect(try server.stockade(["token", "revoke", "ci-bot"]).status == 1, "a second revoke records nothing")

        let events = try server.stockade(["audit", "events", "--json"])
        #expect(events.status == 0, "\(events.stderr)")
        let objects = events.stdout.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        let created = objects.filter { $0["kind"] as? String == "token.created" }
        let revoked = objects.filter { $0["kind"] as? String == "token.revoked" }
        #expect(created.count == 1 && revoked.count == 1, "\(events.stdout)")
        let detail = try #require(created.first?["detail"] as? [String: Any])
        #expect(detail["name"] as? String == "ci-bot")
        #expect(detail["scopes"] as? [String] == ["run:read", "audit:read"])
        #expect((detail["expiresAt"] as? String)?.hasSuffix("Z") == true, "\(detail)")
        #expect((detail["createdBy"] as? String)?.isEmpty == false, "\(detail)")
        #expect(created.first?["runId"] is NSNull)
        #expect((revoked.first?["detail"] as? [String: Any])?["name"] as? String == "ci-bot")
        #expect((created.first?["seq"] as? Int ?? 0) < (revoked.first?["seq"] as? Int ?? 0))

        let hash = SHA256.hash(data: Data(token.utf8)).map { String(format: "%02x", $0) }.joined()
        #expect(!events.stdout.contains(token) && !events.stdout.contains("stk_"), "no token in the trail")
        #expect(!events.stdout.contains(hash), "no token hash in the trail")
        let byKind = try server.stockade(["audit", "events", "--kind", "token.revoked"])
        #expect(byKind.status == 0 && byKind.stdout.contains("token.revoked"), "\(byKind.stdout) \(byKind.stderr)")
        #expect(try server.stockade(["audit", "verify"]).status == 0)
    }
}

@Suite("stockade serve: /metrics", .serialized,
       .enabled(if: ServerHarness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct MetricsTests {
    /// The value of one sample line (`name{labels} value`), nil when absent.
    static func sample(_ text: String, _ series: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1).trimmingCharacters(in: .whitespaces))
        }
        return nil
    }

    @Test("after an ok run, a timed-out run and a seccomp kill: runs by outcome, durations, violations by kind, API requests, audit write latency")
    func fullSet() throws {
        let server = try ServerHarness()
        let token = try server.token("ops", scopes: "run:read,run:write,audit:read")
        let bodies = [
            #"{"command":["/bin/true"]}"#,
            #"{"command":["/bin/sh","-c","sleep 30"],"timeout":1}"#,
            #"{"command":["/bin/sh","-c","unshare -U true"],"profile":"strict"}"#,
        ]
        var ids: [String] = []
        for body in bodies {
            let submitted = try server.client.request("POST", "/v1/runs", token: token, json: body)
            #expect(submitted.status == 202, "\(submitted.text)")
            ids.append(try #require(try submitted.json()["id"] as? String))
        }
        var outcomes: [String] = []
        for id in ids {
            let waited = try server.client.request("GET", "/v1/runs/\(id)/wait", token: token)
            outcomes.append((try waited.json()["report"] as? [String: Any])?["outcome"] as? String ?? "")
        }
        #expect(outcomes == ["exited", "timeout", "seccomp"], "\(outcomes)")
        #expect(try server.client.request("GET", "/v1/runs/not-a-run", token: token).status == 404)

        // The registry counts a run right after its report exists: scrape until all three are in.
        var text = ""
        for _ in 0..<50 {
            let scraped = try server.client.request("GET", "/metrics", token: token)
            #expect(scraped.status == 200)
            text = scraped.text
            if Self.sample(text, #"stockade_run_duration_seconds_count"#) == 3 { break }
            usleep(100_000)
        }
        #expect(text.contains("stockade_runs_running 0") && text.contains("stockade_runs_queued 0"), "the gauges stay")
        #expect(Self.sample(text, #"stockade_runs_total{outcome="exited"}"#) == 1, "\(text)")
        #expect(Self.sample(text, #"stockade_runs_total{outcome="timeout"}"#) == 1)
        #expect(Self.sample(text, #"stockade_runs_total{outcome="seccomp"}"#) == 1)
        #expect(text.contains("# TYPE stockade_runs_total counter"))
        #expect(Self.sample(text, "stockade_run_duration_seconds_count") == 3)
        #expect((Self.sample(text, "stockade_run_duration_seconds_sum") ?? 0) >= 1, "the timed-out run alone lasted a second: \(text)")
        #expect(text.contains("# TYPE stockade_run_duration_seconds histogram"))
        #expect((Self.sample(text, #"stockade_violations_total{kind="seccomp"}"#) ?? 0) >= 1, "\(text)")
        #expect(Self.sample(text, #"stockade_api_requests_total{route="/v1/runs",method="POST",status="202"}"#) == 3, "\(text)")
        #expect(Self.sample(text, #"stockade_api_requests_total{route="/v1/runs/{id}",method="GET",status="404"}"#) == 1)
        #expect((Self.sample(text, #"stockade_api_requests_total{route="/v1/runs/{id}/wait",method="GET",status="200"}"#) ?? 0) == 3)
        // Every ledger write of the service: its runs' events and each api.request.
        let writes = try #require(Self.sample(text, "stockade_audit_write_seconds_count"))
        #expect(writes >= 10, "run events and api.request appends were timed: \(writes)")
        #expect(text.contains("# TYPE stockade_audit_write_seconds histogram"))
        #expect(text.contains(#"stockade_audit_write_seconds_bucket{le="+Inf"}"#))
        #expect(server.terminate() == 0)
    }
}

@Suite("stockade serve: SIGHUP re-reads the profiles", .serialized,
       .enabled(if: ServerHarness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(3)))
struct ProfileReloadTests {
    @Test("at start and on SIGHUP every profile is checked and logged; a broken edit is named; runs use the edited file; the service goes on")
    func sighup() throws {
        let profiles = "/tmp/stk-profiles-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: profiles, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: profiles) }
        let good = #"{"name":"tight","extends":"default","limits":{"memory":"64m","pids":16}}"#
        try good.write(toFile: profiles + "/tight.json", atomically: true, encoding: .utf8)
        let server = try ServerHarness(environment: ["STOCKADE_PROFILES_DIR": profiles])
        func lines(_ name: String) -> [String] { server.log.split(separator: "\n").map(String.init).filter { $0.contains(name) } }
        var reloaded = lines("profiles.reloaded")
        #expect(reloaded.count == 1 && reloaded[0].contains("invalid=0"), "\(server.log)")

        // Break the profile; SIGHUP names it, with the field, and the service still answers.
        try #"{"name":"tight","extends":"default","limits":{"memory":"lots"}}"#.write(toFile: profiles + "/tight.json", atomically: true, encoding: .utf8)
        kill(server.process.processIdentifier, SIGHUP)
        for _ in 0..<200 where lines("profiles.reloaded").count < 2 { usleep(25_000) }
        reloaded = lines("profiles.reloaded")
        #expect(reloaded.count == 2 && reloaded.last?.contains("invalid=1") == true, "\(server.log)")
        let invalid = lines("profile.invalid")
        #expect(invalid.count == 1 && invalid[0].contains("profile=tight") && invalid[0].contains("limits.memory"), "\(invalid)")
        #expect(try server.client.request("GET", "/v1/health").status == 200)
        #expect(server.process.isRunning)

        // Mended: the next SIGHUP says so, and a run under the profile gets the edited limit.
        try #"{"name":"tight","extends":"default","limits":{"memory":"48m","pids":16}}"#.write(toFile: profiles + "/tight.json", atomically: true, encoding: .utf8)
        kill(server.process.processIdentifier, SIGHUP)
        for _ in 0..<200 where lines("profiles.reloaded").count < 3 { usleep(25_000) }
        #expect(lines("profiles.reloaded").last?.contains("invalid=0") == true, "\(server.log)")
        let token = try server.token("engine", scopes: "run:read,run:write")
        let submitted = try server.client.request("POST", "/v1/runs", token: token,
                                                  json: #"{"profile":"tight","command":["/bin/true"]}"#)
        let id = try #require(try submitted.json()["id"] as? String, "\(submitted.text)")
        let report = try #require(try server.client.request("GET", "/v1/runs/\(id)/wait", token: token).json()["report"] as? [String: Any])
        #expect(report["outcome"] as? String == "exited", "\(report)")
        let created = try server.stockade(["audit", "events", "--run", id, "--kind", "run.created", "--json"]).stdout
        #expect(created.contains(#""memory":\#(48 << 20)"#), "run.created: \(created)")
        #expect(server.terminate() == 0)
    }
}

extension HostileClientTests {
    @Test("calls without a valid token have rows within a bound: from four threads at once every call is answered as usual, the rows stay within the bound, and they and the api.throttled counts add up to the calls; a token is served meanwhile")
    func anonymousCallsAreBounded() throws {
        let server = try ServerHarness()
        let token = try server.token("reader", scopes: "run:read,audit:read")
        func anonymousRows() throws -> Int {
            let listed: (status: Int32, stdout: String, stderr: String) = try server.stockade(["audit", "events", "--kind", "api.request", "--json"])
            return listed.stdout.split(separator: "\n").filter { !$0.contains(#""principal":"reader""#) }.count
        }
        let before = try anonymousRows()
        final class Tally: @unchecked Sendable {
            let lock = NSLock()
            var statuses: [Int: Int] = [:]
        }
        let tally = Tally()
        let address = server.socketPath
        let started = Date()
        DispatchQueue.concurrentPerform(iterations: 4) { thread in
            let client = HTTPClient(address: .unix(address))
            for i in 0..<75 {
                // Health checks, unknown routes and refused tokens alike.
                let answer: HTTPClient.Response?
                switch (thread * 75 + i) % 3 {
                case 0: answer = try? client.request("GET", "/v1/health")
                case 1: answer = try? client.request("GET", "/v1/no-such-route")
                default: answer = try? client.request("GET", "/v1/runs", token: "stk_not_a_token")
                }
                tally.lock.lock()
                tally.statuses[answer?.status ?? -1, default: 0] += 1
                tally.lock.unlock()
            }
        }
        let elapsed = Date().timeIntervalSince(started)
        let statuses = tally.statuses
        // Every call answered as it would be without the bound: a health check is never turned away.
        #expect(statuses == [200: 100, 404: 100, 401: 100], "\(statuses)")
        // A caller with a valid token is recorded as always.
        let served = try server.client.request("GET", "/v1/runs", token: token)
        #expect(served.status == 200, "\(served.status) \(served.text)")
        let rows = try anonymousRows() - before
        // At most the burst and the rate over the time taken (the harness's start-up checks took a few).
        #expect(rows <= 60 + Int(20 * elapsed) + 1, "\(rows) rows in \(elapsed) s")
        // Positive control: the first calls were recorded one by one.
        #expect(rows >= 50, "\(rows)")
        #expect(server.terminate() == 0)
        // The rest were counted, and the counts written by the stop at the latest.
        let throttled = try server.stockade(["audit", "events", "--kind", "api.throttled", "--json"]).stdout.split(separator: "\n")
        let counted = throttled.compactMap { line -> Int? in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let detail = object["detail"] as? [String: Any] else { return nil }
            #expect(detail["peer"] as? String == "unix", "\(detail)")
            return (detail["calls"] as? NSNumber)?.intValue
        }.reduce(0, +)
        #expect(counted > 0 && rows + counted == 300, "\(rows) rows and \(counted) counted of 300: \(throttled)")
    }
}

extension HostileClientTests {
    @Test("one token holds at most 32 streams open (or --max-streams-per-token): the next event stream or followed log is 429 too-many-streams, another token's is served, and a closed stream frees its slot; a bound out of range is refused at start",
          arguments: [nil, 3])
    func streamsPerToken(flag: Int?) throws {
        let bound = flag ?? 32
        let server = try ServerHarness(arguments: flag.map { ["--max-streams-per-token", "\($0)"] } ?? [])
        let token = try server.token("watcher", scopes: "audit:read,run:read,run:write")
        let other = try server.token("other", scopes: "audit:read")
        func open(_ path: String, _ token: String) throws -> (fd: Int32, status: Int, text: String) {
            let fd = try server.client.connect(timeoutSeconds: 10)
            var head = HTTPClient.head("GET", path, token: token, headers: [:], bodyCount: nil)
            // Kept open: the harness's head says Connection: close, which ends the stream only when it ends.
            head = Array(String(decoding: head, as: UTF8.self).replacingOccurrences(of: "Connection: close\r\n", with: "").utf8)
            try HTTPClient.send(fd, head)
            var got: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 4096)
            while !got.contains(13) || String(decoding: got, as: UTF8.self).range(of: "\r\n\r\n") == nil {
                let n = recv(fd, &chunk, chunk.count, 0)
                if n <= 0 { break }
                got += chunk[0..<n]
            }
            let text = String(decoding: got, as: UTF8.self)
            let status = Int(text.split(separator: " ").dropFirst().first ?? "") ?? 0
            return (fd, status, text)
        }
        var held: [Int32] = []
        defer { held.forEach { close($0) } }
        // Positive control: the first `bound` are served, events and a followed log alike.
        let run = try #require(try server.client.request("POST", "/v1/runs", token: token, json: #"{"command":["/bin/sleep","30"]}"#).json()["id"] as? String)
        for i in 0..<bound {
            let stream = try open(i % 2 == 0 ? "/v1/events" : "/v1/runs/\(run)/logs?follow=true", token)
            held.append(stream.fd)
            #expect(stream.status == 200, "stream \(i): \(stream.text)")
        }
        let refused = try open("/v1/events", token)
        close(refused.fd)
        #expect(refused.status == 429 && refused.text.contains("too-many-streams") && refused.text.contains("holds \(bound) streams"), "\(refused.text)")
        let log = try open("/v1/runs/\(run)/logs?follow=true", token)
        close(log.fd)
        #expect(log.status == 429, "\(log.text)")
        let others = try open("/v1/events", other)
        close(others.fd)
        #expect(others.status == 200, "another token is not held back: \(others.text)")
        // A closed stream gives its slot back.
        close(held.removeFirst())
        var again = 0
        for _ in 0..<100 where again != 200 {
            usleep(50_000)
            let retry = try open("/v1/events", token)
            again = retry.status
            if again == 200 { held.append(retry.fd) } else { close(retry.fd) }
        }
        #expect(again == 200, "a slot came back once a stream closed")
        _ = try? server.client.request("POST", "/v1/runs/\(run)/cancel", token: token)
        if flag != nil {
            for wrong in ["0", "1025"] {
                let bad = try ServerHarness.exec(ServerHarness.stockade, ["serve", "--max-streams-per-token", wrong, "--state-dir", server.stateDirectory])
                #expect(bad.status == 2 && bad.stderr.contains("--max-streams-per-token: expected 1 to 1024, found \(wrong)"), "\(bad.stderr)")
            }
        }
        #expect(server.terminate() == 0)
    }
}
