import CStockade
import Glibc
import StockadePolicy
import Synchronization

extension LinuxError.Code {
    /// The egress proxy could not be set up.
    public static let egress = LinuxError.Code(rawValue: "egress")
}

/// The worker's only way out in `network.mode: "proxy"`: an HTTP proxy (CONNECT,
/// and absolute-URI requests for plain HTTP) and a SOCKS5 proxy (CONNECT only) on
/// one listener at 127.0.0.1:`port` inside the worker's network namespace (made
/// there as the port forwarder makes its sockets: setns(2) on one thread, and back).
/// Every outbound connection is made by the supervisor, from the host's namespace,
/// to the one address it checked.
///
/// A request is judged by `EgressPolicy.decide` before anything is resolved: a name
/// no rule admits never reaches a resolver. An admitted name is resolved from the
/// pinned hosts, else by `resolve`; each address is checked (private classes) and the
/// first acceptable one is connected to (no second lookup).
///
/// Hostile input is bounded: the request head (`ProxyRequest.maxHead`, lines
/// `maxLine`), the time to send it (`headTimeout`), connections in flight
/// (`maxConcurrent`, each one thread and two 64 KiB buffers), connections per run
/// and bytes per run (the profile's limits), idle relays (`idleTimeout`).
public final class EgressProxy: Sendable {
    public static let port: UInt16 = 3128
    public static let maxConcurrent = 64

    /// One connection's end, for the audit trail.
    public struct Event: Sendable {
        /// The connection's number in the run, in the order the proxy accepted them (from 1).
        public var connection: Int = 0
        public var allowed: Bool
        public var kind: ProxyRequest.Kind?
        public var host: String?
        public var port: UInt16?
        public var address: String?
        public var rule: String?
        /// The TLS server name the tunnel asked for, when it was refused for naming another host
        /// (printable ASCII, at most 255 characters; anything else shown as `?`).
        public var serverName: String?
        /// Why it was refused or ended early (nil: relayed to the end).
        public var reason: String?
        /// A refusal the policy made (not a lookup or connect failure upstream).
        public var policy: Bool
        public var bytesOut: Int64 = 0
        public var bytesIn: Int64 = 0
        /// Bytes a plain-HTTP client sent after its request's body, never forwarded.
        public var bytesDropped: Int64 = 0
        public var durationMs: Int64 = 0
    }

    public struct Configuration: Sendable {
        public var policy: EgressPolicy
        public var headTimeoutMs: Int32 = 10_000
        public var connectTimeoutMs: Int32 = 10_000
        public var idleTimeoutMs: Int32 = 300_000
        /// Addresses for an admitted name without a pinned one. Called only for names the policy admitted.
        public var resolve: @Sendable (String) -> [[UInt8]] = EgressProxy.systemResolve
        /// Each connection's end (called on the connection's thread).
        public var onEvent: @Sendable (Event) -> Void = { _ in }
        /// An admitted connection about to be relayed (its upstream connected, a tunnel to 443's
        /// server name checked): false when it cannot be put on record, and then nothing is relayed.
        public var onOpen: @Sendable (Event) -> Bool = { _ in true }
        /// A per-run limit reached for the first time: "egress.connections" or "egress.bytes".
        public var onLimit: @Sendable (String) -> Void = { _ in }

        public init(policy: EgressPolicy) {
            self.policy = policy
        }
    }

    public struct Totals: Sendable, Equatable {
        public var connections = 0
        public var allowed = 0
        public var denied = 0
        public var bytesOut: Int64 = 0
        public var bytesIn: Int64 = 0
    }

    private struct State {
        var stopped = false
        var active = 0
        var totals = Totals()
        var bytesUsed: Int64 = 0
        var limitsHit: Set<String> = []
    }

    private let configuration: Configuration
    /// The port it listens on (the one asked for, or the one the kernel chose for 0).
    public let port: UInt16
    private let listener: Int32
    private let threads: ServiceThreads
    /// Readable once `stop()` ran: it wakes every poll.
    private var stopEvent: Int32 { threads.stopEvent }
    private let state = Mutex(State())

    private init(configuration: Configuration, listener: Int32, threads: ServiceThreads) {
        self.configuration = configuration
        self.listener = listener
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
        }
        self.port = UInt16(bigEndian: address.sin_port)
        self.threads = threads
    }

    /// Serves on `listener` (the spawn made it in the worker's network namespace,
    /// `SandboxSpec.listenPort`) until `stop()`; takes ownership of it.
    public static func start(listener: Int32, configuration: Configuration) throws(LinuxError) -> EgressProxy {
        // getaddrinfo (with its NSS modules) and the relay need little stack: 512 KiB bounds a
        // run's 64 threads to 32 MiB of address space, touched only as used.
        let threads: ServiceThreads
        do {
            threads = try ServiceThreads(stackSize: 512 << 10) { rc in
                LinuxError(.egress, stage: .egress, errno: rc, "cannot start the egress proxy (a thread or its stop pipe)")
            }
        } catch {
            close(listener)
            throw error
        }
        let proxy = EgressProxy(configuration: configuration, listener: listener, threads: threads)
        do {
            try threads.start { [proxy] in proxy.acceptLoop() }
        } catch {
            proxy.stop()
            throw error
        }
        return proxy
    }

    /// Listens on 127.0.0.1:`port` (0: any) in the network namespace of process `pid` and serves until `stop()`.
    public static func start(inNamespaceOf pid: Int32, port: UInt16, configuration: Configuration) throws(LinuxError) -> EgressProxy {
        let listener = stk_listen_in_netns(pid, port)
        guard listener >= 0 else {
            throw LinuxError(.egress, stage: .egress, errno: errno, "cannot listen on 127.0.0.1:\(port) in the network namespace of \(pid)")
        }
        return try start(listener: listener, configuration: configuration)
    }

    /// Closes the listener and every connection and waits for every thread. Connections
    /// end with their events delivered before this returns.
    public func stop() {
        let first = state.withLock { s -> Bool in
            defer { s.stopped = true }
            return !s.stopped
        }
        guard first else { return }
        threads.stopAndJoin()
        close(listener)
    }

    deinit {
        stop()
    }

    public var totals: Totals { state.withLock { $0.totals } }

    private func limitHit(_ name: String) {
        let first = state.withLock { $0.limitsHit.insert(name).inserted }
        if first { configuration.onLimit(name) }
    }

    private func acceptLoop() {
        var fds = [pollfd(fd: listener, events: Int16(POLLIN), revents: 0), pollfd(fd: stopEvent, events: Int16(POLLIN), revents: 0)]
        while true {
            threads.joinFinished()
            let n = poll(&fds, 2, -1)
            if n < 0 && errno == EINTR { continue }
            if n < 0 || fds[1].revents != 0 { return }
            guard fds[0].revents & Int16(POLLIN) != 0 else { continue }
            var stopped = false
            guard let client = WorkerListener.accept(listener, stopEvent: stopEvent, stopped: &stopped) else {
                if stopped { return }
                continue
            }
            enum Admission { case stopped, overLimit(first: Bool, number: Int), busy(Int), admitted(Int) }
            let admission = state.withLock { s -> Admission in
                if s.stopped { return .stopped }
                s.totals.connections += 1
                if s.totals.connections > configuration.policy.egress.maxConnections {
                    s.totals.denied += 1
                    return .overLimit(first: !s.limitsHit.contains("egress.connections"), number: s.totals.connections)
                }
                if s.active >= EgressProxy.maxConcurrent {
                    s.totals.denied += 1
                    return .busy(s.totals.connections)
                }
                s.active += 1
                return .admitted(s.totals.connections)
            }
            switch admission {
            case .stopped:
                close(client)
                return
            case .overLimit(let first, let number):
                // Only the first refusal is a row of its own: a worker must not flood the audit trail.
                refuseAtOnce(client, ProxyRequest.response(status: 429, reason: "connection limit"))
                if first {
                    limitHit("egress.connections")
                    configuration.onEvent(Event(connection: number, allowed: false, reason: "connection-limit", policy: true))
                }
            case .busy(let number):
                // A row each: these count against maxConnections, which bounds them.
                refuseAtOnce(client, ProxyRequest.response(status: 429, reason: "too many connections at once"))
                configuration.onEvent(Event(connection: number, allowed: false, reason: "concurrent-limit", policy: true))
            case .admitted(let number):
                do {
                    try threads.start(connection: true) { [self] in
                        serve(client, connection: number)
                        close(client)
                        state.withLock { $0.active -= 1 }
                    }
                } catch {
                    close(client)
                    state.withLock { $0.active -= 1 }
                }
            }
        }
    }

    /// Answers and closes without a thread. What the client already sent is read first, so
    /// that the close is a FIN after the answer rather than a reset that may discard it.
    private func refuseAtOnce(_ client: Int32, _ response: [UInt8]) {
        var scratch = [UInt8](repeating: 0, count: 4096)
        _ = recv(client, &scratch, scratch.count, Int32(MSG_DONTWAIT))
        _ = response.withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
        _ = shutdown(client, Int32(SHUT_WR))
        close(client)
    }

    // MARK: one connection

    private func serve(_ client: Int32, connection: Int) {
        _ = fcntl(client, F_SETFL, fcntl(client, F_GETFL) | O_NONBLOCK)
        Self.noDelay(client)
        let started = Self.nowMs()
        var event = Event(connection: connection, allowed: false, policy: true)
        defer {
            event.durationMs = Self.nowMs() - started
            state.withLock { s in
                if event.allowed { s.totals.allowed += 1 } else { s.totals.denied += 1 }
                s.totals.bytesOut += event.bytesOut
                s.totals.bytesIn += event.bytesIn
            }
            configuration.onEvent(event)
        }
        let deadline = started + Int64(configuration.headTimeoutMs)
        var buffer: [UInt8] = []
        guard read(client, into: &buffer, atLeast: 1, deadline: deadline) else {
            event.reason = readFailure(deadline)
            return
        }
        let request: ProxyRequest
        if buffer[0] == 5 {
            guard let r = socksRequest(client, &buffer, deadline: deadline, event: &event) else { return }
            request = r
        } else {
            var scanner = ProxyRequest.HeadScanner()
            var end = 0
            scanning: while true {
                switch scanner.scan(buffer) {
                case .complete(let at):
                    end = at
                    break scanning
                case .overflow:
                    event.reason = "request-too-large"
                    reply(client, ProxyRequest.response(status: 431, reason: "request head too large"))
                    return
                case .incomplete:
                    guard read(client, into: &buffer, atLeast: buffer.count + 1, deadline: deadline) else {
                        event.reason = readFailure(deadline)
                        if event.reason == "request-timeout" { reply(client, ProxyRequest.response(status: 408, reason: "request timeout")) }
                        return
                    }
                }
            }
            switch ProxyRequest.parseHTTP(buffer[..<end]) {
            case .success(let r): request = r
            case .failure(let f):
                event.reason = "bad-request"
                reply(client, ProxyRequest.response(status: f.status, reason: f.reason))
                return
            }
            buffer.removeFirst(end)
        }
        event.kind = request.kind
        event.host = request.host
        event.port = request.port
        // A chunked body's bytes that came with the head, decoded before anything is asked of the
        // policy or the upstream: a malformed one is refused here.
        var chunkedBody = ChunkedBody()
        var chunkedData: [UInt8] = []
        var chunkedEnd: Int?
        if request.chunked {
            switch chunkedBody.scan(buffer[...], data: &chunkedData) {
            case .more: break
            case .ended(let length): chunkedEnd = length
            case .malformed(_, let reason):
                event.reason = "malformed-body"
                reply(client, ProxyRequest.response(status: 400, reason: "malformed chunked body: \(reason)"))
                return
            }
        }
        let refuse = { (status: Int, socks: UInt8, reason: String) in
            if request.kind == .socks5 { self.reply(client, Self.socksReply(socks)) } else {
                self.reply(client, ProxyRequest.response(status: status, reason: reason))
            }
        }

        let policy = configuration.policy
        let candidates: [[UInt8]]
        switch policy.decide(host: request.host, port: request.port) {
        case .deny(let reason, let rule):
            event.reason = reason
            event.rule = rule
            refuse(403, 2, "denied: \(reason)")
            return
        case .allow(let rule, let pinned):
            event.rule = rule
            // A tunnel is opaque: one to port 80 could carry a request for any site the address
            // serves. Plain HTTP goes through the absolute form, whose Host is the name checked.
            if request.kind != .http && request.port == 80 {
                event.reason = "tunnel-to-http-port"
                refuse(403, 2, "denied: tunnel-to-http-port (send plain HTTP as an absolute-URI request: http_proxy)")
                return
            }
            candidates = pinned.map { [$0] } ?? configuration.resolve(EgressHost.parse(request.host)?.description ?? request.host)
        }
        guard !candidates.isEmpty else {
            event.reason = "resolve-failed"
            event.policy = false
            refuse(502, 4, "cannot resolve the name")
            return
        }
        // The host's own addresses now (interfaces come and go), looked up only for a public address;
        // when they cannot be listed nothing is connected to (a local one could not be told apart).
        var local: [[UInt8]] = []
        if !policy.egress.allowPrivate, candidates.contains(where: { IPAddress.specialKind($0) == nil }) {
            guard let listed = Self.localAddresses() else {
                event.reason = "local-addresses-unknown"
                event.policy = false
                refuse(502, 1, "cannot list the host's own addresses")
                return
            }
            local = listed
        }
        // An address the kernel takes as this host's own is local too though no interface carries it:
        // a `local` route (AnyIP) makes a whole range answer as the host.
        let localByKernel = !policy.egress.allowPrivate
        func refusal(_ candidate: [UInt8]) -> (reason: String, rule: String?)? {
            if let refused = policy.refusal(for: candidate, port: request.port, local: local) { return refused }
            // The IPv4 address an IPv6 form carries (mapped, NAT64, 6to4) is judged too: a translator
            // on this host would take the connection there.
            return localByKernel && IPAddress.forms(candidate).contains(where: { Self.isOwnAddress($0, port: request.port) })
                ? ("local-address", nil) : nil
        }
        guard let address = candidates.first(where: { refusal($0) == nil }) else {
            let refusal = refusal(candidates[0])
            event.address = IPAddress.format(candidates[0])
            event.reason = refusal?.reason
            if let rule = refusal?.rule { event.rule = rule }
            refuse(403, 2, "denied: \(event.reason ?? "address")")
            return
        }
        event.address = IPAddress.format(address)
        let upstream = connect(to: address, port: request.port)
        guard upstream >= 0 else {
            event.reason = upstream == -ETIMEDOUT ? "connect-timeout" : "connect-failed"
            event.policy = false
            refuse(502, 5, "cannot connect upstream")
            return
        }
        defer { close(upstream) }
        Self.noDelay(upstream)
        event.allowed = true
        event.reason = nil
        switch request.kind {
        case .connect: reply(client, Array("HTTP/1.1 200 Connection established\r\n\r\n".utf8))
        case .socks5: reply(client, Self.socksReply(0))
        case .http:
            // Only the checked request's body follows its head; anything after it is not forwarded.
            if request.chunked {
                // The body as the proxy frames it (ChunkedBody.encode), never the client's framing.
                event.bytesDropped = Int64(buffer.count - (chunkedEnd ?? buffer.count))
                buffer = request.upstreamHead + ChunkedBody.encode(chunkedData[...], last: chunkedEnd != nil)
            } else {
                let body = Int(min(Int64(buffer.count), request.bodyLength))
                event.bytesDropped = Int64(buffer.count - body)
                buffer = request.upstreamHead + buffer[..<body]
            }
        }
        if request.kind != .http && request.port == 443 {
            // Domain fronting: a tunnel to an admitted name must not carry TLS for another one.
            guard checkServerName(client, &buffer, host: request.host, deadline: Self.nowMs() + Int64(configuration.headTimeoutMs),
                                  event: &event) else {
                event.allowed = false
                return
            }
        }
        // On record before a byte is relayed: a supervisor killed mid-connection leaves this row.
        guard configuration.onOpen(event) else {
            event.allowed = false
            event.policy = false
            event.reason = "not-recorded"
            return
        }
        let forwardLimit: Int64? = switch request.kind {
        case .http where request.chunked: chunkedEnd != nil ? 0 : nil
        case .http: request.bodyLength - Int64(buffer.count - request.upstreamHead.count)
        default: nil
        }
        relay(client: client, upstream: upstream, pending: buffer, forwardLimit: forwardLimit,
              chunked: request.chunked && forwardLimit == nil ? chunkedBody : nil, event: &event)
    }

    /// Reads the tunnel's first TLS record; false (and the reason set) when its server name
    /// differs from `host`, or when the tunnel does not begin with a handshake record that parses
    /// by the deadline (fail closed: the rest could name another host). That includes a first record
    /// of another TLS type: some servers skip a warning alert and then take the ClientHello after it,
    /// which this check would never have read.
    private func checkServerName(_ client: Int32, _ buffer: inout [UInt8], host: String, deadline: Int64, event: inout Event) -> Bool {
        while true {
            switch ProxyRequest.clientHello(buffer) {
            case .noServerName:
                return true
            case .notTLS, .malformed:
                event.reason = "bad-tls"
                return false
            case .encryptedServerName:
                // The name in the clear is the front end's; the one served is sealed (fail closed).
                event.reason = "ech"
                return false
            case .serverName(let name):
                guard EgressHost.parse(name) == EgressHost.parse(host) else {
                    event.reason = "sni-mismatch"
                    event.rule = nil
                    event.host = host
                    event.serverName = String(name.unicodeScalars.prefix(255).map { $0.isASCII && $0.value >= 0x20 && $0.value < 0x7F ? Character($0) : "?" })
                    return false
                }
                return true
            case .incomplete:
                // Nothing by the deadline is refused too: a client that waited could then name another host.
                guard buffer.count < ProxyRequest.maxClientHello,
                      read(client, into: &buffer, atLeast: buffer.count + 1, deadline: deadline, cap: ProxyRequest.maxClientHello) else {
                    event.reason = buffer.isEmpty ? "tls-timeout" : "bad-tls"
                    return false
                }
            }
        }
    }

    /// A SOCKS5 greeting and CONNECT request (RFC 1928), no authentication. nil after replying with a refusal.
    private func socksRequest(_ client: Int32, _ buffer: inout [UInt8], deadline: Int64, event: inout Event) -> ProxyRequest? {
        event.kind = .socks5
        func need(_ n: Int) -> Bool {
            guard n <= 600, read(client, into: &buffer, atLeast: n, deadline: deadline) else {
                event.reason = readFailure(deadline)
                return false
            }
            return true
        }
        guard need(2), need(2 + Int(buffer[1])) else { return nil }
        let methods = buffer[2..<(2 + Int(buffer[1]))]
        guard methods.contains(0) else {
            event.reason = "bad-request"
            reply(client, [5, 0xFF])
            return nil
        }
        buffer.removeFirst(2 + Int(buffer[1]))
        reply(client, [5, 0])
        guard need(5) else { return nil }
        guard buffer[0] == 5, buffer[1] == 1, buffer[2] == 0 else {
            event.reason = buffer[1] == 1 ? "bad-request" : "socks-command-not-supported"
            reply(client, Self.socksReply(buffer[1] == 1 ? 1 : 7))
            return nil
        }
        let host: String
        let length: Int
        switch buffer[3] {
        case 1:
            guard need(10) else { return nil }
            host = IPAddress.format(Array(buffer[4..<8]))
            length = 10
        case 3:
            let n = Int(buffer[4])
            guard n > 0, need(7 + n) else { return nil }
            // Printable ASCII only: the name is recorded and may be shown on an operator's terminal.
            guard buffer[5..<(5 + n)].allSatisfy({ $0 > 32 && $0 < 127 }) else {
                event.reason = "bad-request"
                reply(client, Self.socksReply(8))
                return nil
            }
            host = String(decoding: buffer[5..<(5 + n)], as: UTF8.self)
            length = 7 + n
        case 4:
            guard need(22) else { return nil }
            host = IPAddress.format(Array(buffer[4..<20]))
            length = 22
        default:
            event.reason = "bad-request"
            reply(client, Self.socksReply(8))
            return nil
        }
        let port = UInt16(buffer[length - 2]) << 8 | UInt16(buffer[length - 1])
        buffer.removeFirst(length)
        return ProxyRequest(kind: .socks5, host: host, port: port)
    }

    static func socksReply(_ code: UInt8) -> [UInt8] { [5, code, 0, 1, 0, 0, 0, 0, 0, 0] }

    /// Reads until `buffer` holds at least `count` bytes; false on end of file, error, deadline or stop.
    private func read(_ fd: Int32, into buffer: inout [UInt8], atLeast count: Int, deadline: Int64,
                      cap: Int = ProxyRequest.maxHead + 1) -> Bool {
        var chunk = [UInt8](repeating: 0, count: 4096)
        while buffer.count < count {
            let left = deadline - Self.nowMs()
            guard left > 0 else { return false }
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: stopEvent, events: Int16(POLLIN), revents: 0)]
            let n = poll(&fds, 2, Int32(min(left, 60_000)))
            if n < 0 && errno == EINTR { continue }
            if n < 0 || fds[1].revents != 0 { return false }
            if n == 0 { continue }
            // Never more than the head may hold: a 1 MB line is refused after 16 KiB.
            let room = min(chunk.count, cap - buffer.count)
            guard room > 0 else { return true }
            let got = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, room, Int32(MSG_DONTWAIT)) }
            if got < 0 && (errno == EAGAIN || errno == EINTR) { continue }
            if got <= 0 { return false }
            buffer += chunk[0..<got]
        }
        return true
    }

    /// Why a read of the request ended early: the deadline, the proxy stopping, or the client.
    private func readFailure(_ deadline: Int64) -> String {
        if state.withLock({ $0.stopped }) { return "stopped" }
        return Self.nowMs() >= deadline ? "request-timeout" : "client-closed"
    }

    /// Best effort: a refusal the client may read before the connection closes.
    private func reply(_ fd: Int32, _ bytes: [UInt8]) {
        var offset = 0
        let deadline = Self.nowMs() + 2_000
        while offset < bytes.count && Self.nowMs() < deadline {
            let n = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
            if n > 0 { offset += n; continue }
            if n < 0 && errno != EAGAIN && errno != EINTR { return }
            var fds = [pollfd(fd: fd, events: Int16(POLLOUT), revents: 0), pollfd(fd: stopEvent, events: Int16(POLLIN), revents: 0)]
            if poll(&fds, 2, 500) < 0 && errno != EINTR { return }
            if fds[1].revents != 0 { return }
        }
    }

    /// A non-blocking TCP connection from the host's namespace to exactly `address`; -errno on failure.
    private func connect(to address: [UInt8], port: UInt16) -> Int32 {
        let family = address.count == 16 ? AF_INET6 : AF_INET
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { return -errno }
        var storage = sockaddr_storage()
        let length: socklen_t
        if address.count == 16 {
            var a = sockaddr_in6()
            a.sin6_family = sa_family_t(AF_INET6)
            a.sin6_port = port.bigEndian
            withUnsafeMutableBytes(of: &a.sin6_addr) { $0.copyBytes(from: address) }
            withUnsafeMutableBytes(of: &storage) { s in withUnsafeBytes(of: a) { s.copyMemory(from: $0) } }
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        } else {
            var a = sockaddr_in()
            a.sin_family = sa_family_t(AF_INET)
            a.sin_port = port.bigEndian
            withUnsafeMutableBytes(of: &a.sin_addr) { $0.copyBytes(from: address) }
            withUnsafeMutableBytes(of: &storage) { s in withUnsafeBytes(of: a) { s.copyMemory(from: $0) } }
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
        }
        let rc = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, length) }
        }
        if rc == 0 { return fd }
        guard errno == EINPROGRESS else {
            let e = errno
            close(fd)
            return -e
        }
        let deadline = Self.nowMs() + Int64(configuration.connectTimeoutMs)
        var fds = [pollfd(fd: fd, events: Int16(POLLOUT), revents: 0), pollfd(fd: stopEvent, events: Int16(POLLIN), revents: 0)]
        while true {
            let left = deadline - Self.nowMs()
            guard left > 0 else { close(fd); return -ETIMEDOUT }
            let n = poll(&fds, 2, Int32(left))
            if n < 0 && errno == EINTR { continue }
            if n < 0 || fds[1].revents != 0 { close(fd); return -ECANCELED }
            if fds[0].revents != 0 { break }
        }
        var error: Int32 = 0
        var size = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &size) == 0, error == 0 else {
            close(fd)
            return -(error == 0 ? ECONNREFUSED : error)
        }
        return fd
    }

    /// Takes `n` bytes from the run's budget; false (and the limit recorded) when it is spent.
    private func spend(_ n: Int) -> Bool {
        let ok = state.withLock { s -> Bool in
            guard s.bytesUsed + Int64(n) <= configuration.policy.egress.maxBytes else { return false }
            s.bytesUsed += Int64(n)
            return true
        }
        if !ok { limitHit("egress.bytes") }
        return ok
    }

    /// Both directions until both ended, the byte budget is spent, the relay idles too long, or stop.
    private func relay(client: Int32, upstream: Int32, pending: [UInt8], forwardLimit: Int64?, chunked: ChunkedBody?, event: inout Event) {
        var out = RelayDirection(from: client, to: upstream)
        out.forwardLimit = forwardLimit
        out.chunked = chunked
        var back = RelayDirection(from: upstream, to: client)
        defer { event.bytesDropped += out.dropped }
        // Bytes dropped after a plain-HTTP request end the upstream's side once the request is out:
        // an upstream that kept the connection open (ignoring `Connection: close`) then finishes and
        // closes, so a client that sent a second request sees the end and retries on a new connection
        // instead of waiting for the idle timeout.
        var upstreamEnded = false
        if !pending.isEmpty || event.bytesDropped > 0 {
            guard spend(pending.count + Int(event.bytesDropped)) else { event.reason = "byte-limit"; return }
            out.buffer.replaceSubrange(0..<pending.count, with: pending)
            out.end = pending.count
            event.bytesOut += Int64(pending.count)
        }
        while !(out.done && back.done) {
            var fds = [
                RelayDirection.watch(client, out.readInterest | back.writeInterest),
                RelayDirection.watch(upstream, back.readInterest | out.writeInterest),
                pollfd(fd: stopEvent, events: Int16(POLLIN), revents: 0),
            ]
            let n = poll(&fds, 3, configuration.idleTimeoutMs)
            if n < 0 && errno == EINTR { continue }
            if n == 0 { event.reason = "idle-timeout"; return }
            if n < 0 || fds[2].revents != 0 { event.reason = "stopped"; return }
            if (fds[0].revents | fds[1].revents) & Int16(POLLERR | POLLNVAL) != 0 { event.reason = "reset"; return }
            for outward in [true, false] {
                switch outward ? out.step(spend) : back.step(spend) {
                case .failed: event.reason = "reset"; return
                case .malformed:
                    // Nothing of the read that held the bad byte goes out: the upstream sees a body cut short.
                    event.reason = "malformed-body"
                    return
                case .overBudget: event.reason = "byte-limit"; return
                case .moved(let bytes):
                    if outward { event.bytesOut += Int64(bytes) } else { event.bytesIn += Int64(bytes) }
                }
            }
            if !upstreamEnded, !out.done, out.forwardLimit == 0, out.start == out.end, event.bytesDropped + out.dropped > 0 {
                _ = shutdown(upstream, Int32(SHUT_WR))
                upstreamEnded = true
            }
        }
    }

    /// A relay forwards what each side wrote as it arrives: Nagle's wait on top of the
    /// sender's own would add a delayed-ACK round (tens of ms) to small exchanges.
    static func noDelay(_ fd: Int32) {
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Whether a TCP connection to `address` (IPv4-mapped: its IPv4 address) on `port` would reach
    /// this host itself. Two of the kernel's own tests, either enough: the route that connection's
    /// flow takes here is of type `local` (`stk_route_is_local`: an interface's address, a `local`
    /// route's range, IPv4 or IPv6, whatever `ip_nonlocal_bind` says, policy rules on the protocol
    /// or the port taken as for the connection), or a socket binds to the address (an address of the
    /// local table, whatever the rules say), trusted only while an address that cannot be local
    /// (TEST-NET-1, 2001:db8::1) does not bind too, as it would with `ip_nonlocal_bind`. When
    /// neither can be asked, the address is taken as the host's own: refused, never guessed open.
    static func isOwnAddress(_ address: [UInt8], port: UInt16) -> Bool {
        let plain = IPAddress.unmapped(address)
        let routed = routesHere(plain, port: port)
        if routed == true { return true }
        switch bindsAsLocal(plain) {
        case true?: return true
        case false?: return false
        case nil: return routed == nil
        }
    }

    /// true when the route a TCP connection to `address` (4 or 16 bytes) and `port` takes is
    /// `local`, false when it is another or there is none, nil when the kernel's routes cannot be asked.
    static func routesHere(_ address: [UInt8], port: UInt16) -> Bool? {
        guard address.count == 4 || address.count == 16 else { return nil }
        switch stk_route_is_local(address.count == 4 ? AF_INET : AF_INET6, address, port) {
        case 1: return true
        case 0: return false
        default: return nil
        }
    }

    /// The bind test: true when a socket binds to `address` and not to one that cannot be local,
    /// false when it does not bind, nil when that cannot be asked or not be trusted.
    static func bindsAsLocal(_ address: [UInt8]) -> Bool? {
        guard let own = binds(address) else { return nil }
        guard own else { return false }
        let control: [UInt8] = address.count == 4 ? [192, 0, 2, 1] : [0x20, 0x01, 0x0D, 0xB8] + [UInt8](repeating: 0, count: 11) + [1]
        return binds(control) == false ? true : nil
    }

    /// true when a datagram socket binds to `address` (port 0), false when the address is not
    /// available here, nil when that cannot be asked.
    static func binds(_ address: [UInt8]) -> Bool? {
        let v4 = address.count == 4
        let fd = socket(v4 ? AF_INET : AF_INET6, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        let rc: Int32
        if v4 {
            var sa = sockaddr_in()
            sa.sin_family = sa_family_t(AF_INET)
            withUnsafeMutableBytes(of: &sa.sin_addr) { $0.copyBytes(from: address) }
            rc = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        } else {
            var sa = sockaddr_in6()
            sa.sin6_family = sa_family_t(AF_INET6)
            withUnsafeMutableBytes(of: &sa.sin6_addr) { $0.copyBytes(from: address) }
            rc = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
        }
        if rc == 0 { return true }
        return errno == EADDRNOTAVAIL ? false : nil
    }

    static func nowMs() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }

    /// The addresses of this namespace's interfaces (the host's, where the supervisor runs): what
    /// a connection from here reaches as a local one. Nil when they cannot be listed.
    static func localAddresses() -> [[UInt8]]? {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { return nil }
        guard let first = list else { return [] }
        defer { freeifaddrs(first) }
        var out: [[UInt8]] = []
        var node: UnsafeMutablePointer<ifaddrs>? = first
        while let n = node {
            if let sa = n.pointee.ifa_addr, let a = addressBytes(sa) { out.append(a) }
            node = n.pointee.ifa_next
        }
        return out
    }

    /// The 4 or 16 address bytes of an AF_INET or AF_INET6 socket address; nil for other families.
    static func addressBytes(_ sa: UnsafeMutablePointer<sockaddr>) -> [UInt8]? {
        switch Int32(sa.pointee.sa_family) {
        case AF_INET:
            let a = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr }
            return withUnsafeBytes(of: a) { Array($0) }
        case AF_INET6:
            let a = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_addr }
            return withUnsafeBytes(of: a) { Array($0) }
        default:
            return nil
        }
    }

    /// getaddrinfo(3) for TCP, addresses in the order it gives them (IPv4 and IPv6).
    public static func systemResolve(_ name: String) -> [[UInt8]] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(name, nil, &hints, &list) == 0, let first = list else { return [] }
        defer { freeaddrinfo(first) }
        var out: [[UInt8]] = []
        var node: UnsafeMutablePointer<addrinfo>? = first
        while let n = node, out.count < 16 {
            if let sa = n.pointee.ai_addr, let a = addressBytes(sa) { out.append(a) }
            node = n.pointee.ai_next
        }
        return out
    }
}
