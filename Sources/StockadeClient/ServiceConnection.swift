import Glibc

/// One HTTP/1.1 exchange with the service on a connection of its own (`Connection: close`): the
/// request written whole, then the answer read through `ResponseReader` with its bounds.
final class ServiceConnection {
    let fd: Int32
    let address: ServiceAddress

    init(_ address: ServiceAddress) throws(ClientError) {
        self.address = address
        switch address {
        case .unix(let path):
            var sa = sockaddr_un()
            sa.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &sa.sun_path) { raw in
                let bytes = Array(path.utf8)
                raw.copyBytes(from: bytes)
                raw[bytes.count] = 0
            }
            fd = try Self.connect(AF_UNIX, &sa, address)
        case .loopback(let host, let port):
            var v4 = sockaddr_in()
            if inet_pton(AF_INET, host, &v4.sin_addr) == 1 {
                v4.sin_family = sa_family_t(AF_INET)
                v4.sin_port = port.bigEndian
                fd = try Self.connect(AF_INET, &v4, address)
            } else {
                var v6 = sockaddr_in6()
                guard inet_pton(AF_INET6, host, &v6.sin6_addr) == 1 else {
                    throw ClientError(.usage, "--host: not a numeric address: \(host)")
                }
                v6.sin6_family = sa_family_t(AF_INET6)
                v6.sin6_port = port.bigEndian
                fd = try Self.connect(AF_INET6, &v6, address)
            }
        case .tls(let host, let port):
            fd = try ServiceTLS.connect(host: host, port: port, description: address.description, caFile: getenv("STOCKADE_CA_FILE").map { String(cString: $0) })
        }
    }

    deinit { close(fd) }

    private static func connect<Address>(_ family: Int32, _ sa: inout Address, _ address: ServiceAddress) throws(ClientError) -> Int32 {
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ClientError(.connect, "cannot make a socket: \(String(cString: strerror(errno)))") }
        var rc: Int32
        repeat {
            rc = withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<Address>.size)) }
            }
        } while rc != 0 && errno == EINTR
        guard rc == 0 else {
            let err = errno
            close(fd)
            throw ClientError(.connect, connectFailure(address, err))
        }
        return fd
    }

    /// What failed and what to do: the service is not running, or the socket is not ours to use.
    static func connectFailure(_ address: ServiceAddress, _ err: Int32) -> String {
        let why = String(cString: strerror(err))
        switch (address, err) {
        case (.unix(let path), ENOENT), (.unix(let path), ECONNREFUSED):
            return "cannot reach the service at \(path): \(why): is it running? start it with stockade serve --listen unix://\(path)"
        case (.unix(let path), EACCES), (.unix(let path), EPERM):
            return "cannot reach the service at \(path): \(why): the socket is for root and the group stockade (add this user to that group)"
        case (.unix(let path), _):
            return "cannot reach the service at \(path): \(why)"
        case (.loopback, ECONNREFUSED):
            return "cannot reach the service at \(address): \(why): is it running? start it with stockade serve --listen \(address.description.replacingFirst("http://", with: "tcp://"))"
        case (.loopback, _), (.tls, _):
            return "cannot reach the service at \(address): \(why)"
        }
    }

    func send(_ bytes: [UInt8]) throws(ClientError) {
        var offset = 0
        while offset < bytes.count {
            // MSG_NOSIGNAL: a closed connection is EPIPE, not a SIGPIPE that ends the CLI.
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            // The service may answer (413) and close before it read the whole body: read its answer.
            if n < 0 && (errno == EPIPE || errno == ECONNRESET) { return }
            guard n > 0 else { throw ClientError(.protocolViolation, "cannot send to the service at \(address): \(String(cString: strerror(errno)))") }
            offset += n
        }
    }

    /// Whether a byte (or the end of the stream) is there to read within `millis`.
    func waitReadable(millis: Int32) throws(ClientError) -> Bool {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let deadline = Self.monotonicMillis() + Int64(millis)
        while true {
            let left = max(0, deadline - Self.monotonicMillis())
            let rc = poll(&entry, 1, Int32(left))
            if rc > 0 { return true }
            if rc == 0 { return false }
            guard errno == EINTR else {
                throw ClientError(.protocolViolation, "the connection to the service at \(address) failed: \(String(cString: strerror(errno)))")
            }
        }
    }

    private static func monotonicMillis() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }

    /// Reads at most `count` bytes; 0 at the end of the stream.
    func receive(into buffer: inout [UInt8], count: Int) throws(ClientError) -> Int {
        let start = buffer.count
        buffer.append(contentsOf: repeatElement(0, count: count))
        var n: Int
        repeat {
            n = buffer[start...].withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, count, 0) }
        } while n < 0 && errno == EINTR
        buffer.removeLast(count - max(n, 0))
        guard n >= 0 else { throw ClientError(.protocolViolation, "the connection to the service at \(address) failed: \(String(cString: strerror(errno)))") }
        return n
    }
}

extension String {
    func replacingFirst(_ prefix: String, with replacement: String) -> String {
        hasPrefix(prefix) ? replacement + dropFirst(prefix.count) : self
    }
}

