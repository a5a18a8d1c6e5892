import Foundation
import Glibc

/// Where the service listens: a Unix socket (the default) or TCP on a numeric address. TCP beyond
/// loopback is served only with TLS (`--tls-cert`/`--tls-key`), never in the clear: see `requireTLS`.
public enum Listen: Sendable, Equatable, CustomStringConvertible {
    case unix(path: String)
    case tcp(host: String, port: Int)

    public static let defaultSocket = "/run/stockade/stockade.sock"

    public struct Invalid: Error, CustomStringConvertible {
        public let description: String
    }

    public var description: String {
        switch self {
        case .unix(let path): "unix://\(path)"
        case .tcp(let host, let port): host.contains(":") ? "tcp://[\(host)]:\(port)" : "tcp://\(host):\(port)"
        }
    }

    public static func parse(_ text: String) throws(Invalid) -> Listen {
        if text.hasPrefix("unix://") {
            let path = String(text.dropFirst("unix://".count))
            guard path.hasPrefix("/"), !path.utf8.contains(0) else {
                throw Invalid(description: "--listen: a Unix socket needs an absolute path, as in unix:///run/stockade/stockade.sock; found \(text)")
            }
            // sockaddr_un.sun_path holds 108 bytes with the terminating NUL.
            guard path.utf8.count < 108 else { throw Invalid(description: "--listen: the socket path is longer than 107 bytes: \(path)") }
            return .unix(path: path)
        }
        if text.hasPrefix("tcp://") {
            let rest = String(text.dropFirst("tcp://".count))
            let host: String, portText: String
            if rest.hasPrefix("["), let close = rest.firstIndex(of: "]") {
                host = String(rest[rest.index(after: rest.startIndex)..<close])
                let after = rest[rest.index(after: close)...]
                guard after.hasPrefix(":") else { throw Invalid(description: "--listen: expected tcp://[::1]:PORT, found \(text)") }
                portText = String(after.dropFirst())
            } else {
                guard let colon = rest.lastIndex(of: ":") else { throw Invalid(description: "--listen: expected tcp://127.0.0.1:PORT, found \(text)") }
                host = String(rest[..<colon])
                portText = String(rest[rest.index(after: colon)...])
            }
            guard let port = Int(portText), (1...65535).contains(port) else {
                throw Invalid(description: "--listen: the port must be 1 to 65535, found \(portText.isEmpty ? "none" : portText) in \(text)")
            }
            guard isNumeric(host) else {
                throw Invalid(description: "--listen: \(host) is not a numeric IPv4 or IPv6 address (a host name could resolve anywhere): use tcp://127.0.0.1:PORT, tcp://[::1]:PORT or the address of one interface")
            }
            return .tcp(host: host, port: port)
        }
        throw Invalid(description: "--listen: expected unix:///path or tcp://127.0.0.1:PORT, found \(text)")
    }

    /// A TCP listener beyond loopback without TLS is refused: the API carries bearer tokens and run
    /// requests that are as powerful as root on the host.
    public func requireTLS(_ hasTLS: Bool) throws(Invalid) {
        guard case .tcp(let host, _) = self, !hasTLS, !Self.isLoopback(host) else { return }
        throw Invalid(description: "--listen: \(self) is not a loopback address: TCP beyond 127.0.0.0/8 and ::1 requires TLS: pass --tls-cert FILE and --tls-key FILE (PEM), or listen on a Unix socket (unix:///path) or on 127.0.0.1 / [::1]")
    }

    static func isNumeric(_ host: String) -> Bool {
        var v4 = in_addr(), v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }

    /// Only numeric loopback addresses: a name could resolve anywhere.
    static func isLoopback(_ host: String) -> Bool {
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 {
            return UInt32(bigEndian: v4.s_addr) >> 24 == 127
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { bytes in bytes.prefix(15).allSatisfy { $0 == 0 } && bytes[15] == 1 }
        }
        return false
    }
}

/// The socket file: its directory, a stale file from a crashed service, and its mode and group.
enum SocketFile {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// Before binding: creates the directory (0750) if missing; removes a socket file nobody
    /// listens on; refuses one a live service holds, and any path that is not a socket.
    static func prepare(_ path: String) throws(Failure) {
        let directory = (path as NSString).deletingLastPathComponent
        var st = stat()
        if stat(directory, &st) != 0 {
            guard mkdir(directory, 0o750) == 0 || errno == EEXIST else {
                throw Failure(description: "cannot create the socket's directory \(directory): \(String(cString: strerror(errno)))")
            }
            if let gid = stockadeGroup() { _ = chown(directory, 0, gid) }
        }
        guard lstat(path, &st) == 0 else { return }
        guard (st.st_mode & S_IFMT) == S_IFSOCK else {
            throw Failure(description: "\(path) exists and is not a socket: remove it or choose another --listen path")
        }
        if isListening(path) {
            throw Failure(description: "another process is listening on \(path) (is stockade serve already running?)")
        }
        guard unlink(path) == 0 else {
            throw Failure(description: "cannot remove the stale socket \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// After binding: mode 0660, group `stockade` when that group exists.
    static func secure(_ path: String) throws(Failure) {
        if let gid = stockadeGroup(), chown(path, 0, gid) != 0 {
            throw Failure(description: "cannot give \(path) to group stockade: \(String(cString: strerror(errno)))")
        }
        guard chmod(path, 0o660) == 0 else {
            throw Failure(description: "cannot set mode 0660 on \(path): \(String(cString: strerror(errno)))")
        }
    }

    static func stockadeGroup() -> gid_t? {
        guard let group = getgrnam("stockade") else { return nil }
        return group.pointee.gr_gid
    }

    static func isListening(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            let bytes = Array(path.utf8.prefix(raw.count - 1))
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        return rc == 0
    }
}
