import Glibc

/// Where `stockade serve` listens, from `--host URL` or `$STOCKADE_HOST`: a Unix socket, plaintext
/// HTTP on a numeric loopback address, or HTTPS anywhere (`stockade serve --tls-cert/--tls-key`).
public enum ServiceAddress: Sendable, Equatable, CustomStringConvertible {
    case unix(path: String)
    /// A numeric loopback address (127.0.0.0/8 or ::1) and a port.
    case loopback(host: String, port: UInt16)
    /// A host name or address and a port, over TLS (`TLSBridge`).
    case tls(host: String, port: UInt16)

    static let forms = "unix:///PATH, http://127.0.0.1:PORT, http://[::1]:PORT or https://HOST[:PORT]"

    /// Parses `unix:///PATH`, `http://127.0.0.1:PORT`, `http://[::1]:PORT` (`tcp://` as `stockade serve
    /// --listen` spells it is taken as `http://`). `field` names the flag or variable in errors.
    public init(parsing text: String, field: String) throws(ClientError) {
        func fail(_ reason: String) -> ClientError { ClientError(.usage, "\(field): \(reason)") }
        if text.isEmpty { throw fail("expected \(Self.forms), found an empty value") }
        if text.hasPrefix("unix://") {
            let path = String(text.dropFirst("unix://".count))
            guard path.hasPrefix("/") else { throw fail("a unix socket needs an absolute path (unix:///run/stockade/stockade.sock), found \(text)") }
            // sockaddr_un holds 108 bytes with the terminating NUL.
            guard path.utf8.count < 108 else { throw fail("the socket path is \(path.utf8.count) bytes; a Unix socket path holds at most 107") }
            guard !path.utf8.contains(0) else { throw fail("the socket path holds a NUL byte") }
            self = .unix(path: path)
            return
        }
        let rest: Substring
        let secure = text.hasPrefix("https://")
        if secure {
            rest = text.dropFirst("https://".count)
        } else if text.hasPrefix("http://") {
            rest = text.dropFirst("http://".count)
        } else if text.hasPrefix("tcp://") {
            rest = text.dropFirst("tcp://".count)
        } else {
            throw fail("expected \(Self.forms), found \(text)")
        }
        var authority = rest
        if authority.hasSuffix("/") { authority = authority.dropLast() }
        if authority.contains("/") || authority.contains("?") || authority.contains("#") || authority.contains("@") {
            throw fail("expected only an address and a port (\(Self.forms)), found \(text)")
        }
        let host: String, portText: Substring
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw fail("an IPv6 address needs a closing ], found \(text)") }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            if secure && after.isEmpty {
                portText = "443"
            } else {
                guard after.hasPrefix(":") else { throw fail("a port is required (http://[::1]:PORT), found \(text)") }
                portText = after.dropFirst()
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = String(authority[..<colon])
            portText = authority[authority.index(after: colon)...]
        } else {
            guard secure else { throw fail("a port is required (http://127.0.0.1:PORT), found \(text)") }
            host = String(authority)
            portText = "443"
        }
        guard let port = UInt16(portText), port > 0 else { throw fail("the port must be 1 to 65535, found \(portText.isEmpty ? "nothing" : String(portText))") }
        if secure {
            // A name is resolved by the system and checked against the certificate: TLS makes any host safe to reach.
            guard !host.isEmpty, host.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2E || $0 == 0x2D || $0 == 0x3A }) else {
                throw fail("expected a host name or address in https://HOST[:PORT], found \(host.isEmpty ? "nothing" : host)")
            }
            self = .tls(host: host, port: port)
            return
        }
        guard Self.isLoopback(host) else {
            if Self.isNumeric(host) {
                throw fail("plaintext http:// is allowed on loopback only (127.0.0.0/8 or [::1]), found \(host): the API's bearer token and runs must not cross a network in the clear; use https://\(host):PORT (stockade serve --tls-cert/--tls-key), or an SSH tunnel to the socket (ssh -L 127.0.0.1:8700:/run/stockade/stockade.sock HOST, then --host http://127.0.0.1:8700)")
            }
            throw fail("host names are not resolved (a name may resolve beyond loopback): write the numeric loopback address, 127.0.0.1 or [::1], found \(host)")
        }
        self = .loopback(host: host, port: port)
    }

    public static func isNumeric(_ host: String) -> Bool {
        var v4 = in_addr(), v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }

    /// 127.0.0.0/8 in dotted-quad form, or ::1.
    static func isLoopback(_ host: String) -> Bool {
        var v4 = in_addr()
        // inet_pton takes only the four-part decimal form: no "127.1", no octal.
        if inet_pton(AF_INET, host, &v4) == 1 { return UInt32(bigEndian: v4.s_addr) >> 24 == 127 }
        var v6 = in6_addr()
        guard inet_pton(AF_INET6, host, &v6) == 1 else { return false }
        return withUnsafeBytes(of: &v6) { Array($0) } == Array(repeating: 0, count: 15) + [1]
    }

    public var description: String {
        switch self {
        case .unix(let path): "unix://\(path)"
        case .loopback(let host, let port): host.contains(":") ? "http://[\(host)]:\(port)" : "http://\(host):\(port)"
        case .tls(let host, let port): host.contains(":") ? "https://[\(host)]:\(port)" : "https://\(host):\(port)"
        }
    }
}
