/// One request a worker sent to the egress proxy, parsed from hostile bytes:
/// an HTTP `CONNECT host:port`, an absolute-URI request for plain HTTP
/// (`GET http://host[:port]/path`), or a SOCKS5 CONNECT. Everything is bounded
/// (`maxHead`, `maxLine`, `maxHeaders`) and strict: CRLF line ends only, no
/// header folding, no user info in the URI, tokens of the RFC 9110 characters.
public struct ProxyRequest: Sendable, Equatable {
    public enum Kind: String, Sendable, Equatable {
        case connect
        case http
        case socks5
    }

    public var kind: Kind
    public var host: String
    public var port: UInt16
    /// For `http`: the request head to send upstream (origin-form target, our Host, `Connection: close`).
    public var upstreamHead: [UInt8] = []
    /// For `http`: the request body's length (its `Content-Length`; 0 without one). Only that many
    /// bytes after the head are forwarded: a second request pipelined behind the first, which an
    /// upstream that ignores `Connection: close` would serve, never leaves the host unchecked.
    public var bodyLength: Int64 = 0
    /// For `http`: the body is `Transfer-Encoding: chunked` (`bodyLength` is then 0); what is forwarded
    /// ends where `ChunkedBody` finds its end.
    public var chunked = false

    public static let maxHead = 16 << 10
    public static let maxLine = 8 << 10
    public static let maxHeaders = 100

    public struct Failure: Error, Sendable, Equatable {
        public var status: Int
        public var reason: String
    }

    /// Finds the end of a request head as its bytes arrive, looking at each byte once (a head sent
    /// a byte at a time would otherwise be scanned again from its start at every read).
    public struct HeadScanner: Sendable {
        public enum State: Equatable, Sendable {
            case incomplete
            /// It can never become a valid head: over `maxHead`, or a line over `maxLine`.
            case overflow
            /// The index just past the head's blank line.
            case complete(Int)
        }

        private var next = 0
        private var lineLength = 0

        public init() {}

        /// Looks at the bytes of `bytes` (the head so far, only ever grown) not seen before.
        public mutating func scan(_ bytes: [UInt8]) -> State {
            while next < bytes.count {
                let b = bytes[next]
                next += 1
                if b == 10 {
                    if next >= 4 && bytes[next - 2] == 13 && bytes[next - 3] == 10 && bytes[next - 4] == 13 { return .complete(next) }
                    lineLength = 0
                } else {
                    // A line's CR counts here but not in `maxLine`, as `parseHTTP` measures it.
                    lineLength += 1
                    if lineLength > maxLine + 1 { return .overflow }
                }
                if next > maxHead { return .overflow }
            }
            return .incomplete
        }
    }

    /// Parses a complete HTTP request head (through its blank line).
    public static func parseHTTP(_ head: ArraySlice<UInt8>) -> Result<ProxyRequest, Failure> {
        guard head.count <= maxHead else { return .failure(Failure(status: 431, reason: "request head too large")) }
        var lines: [ArraySlice<UInt8>] = []
        var start = head.startIndex
        var i = head.startIndex
        while i < head.endIndex {
            if head[i] == 10 {
                guard i > start, head[i - 1] == 13 else { return .failure(Failure(status: 400, reason: "bare LF in the request head")) }
                lines.append(head[start..<(i - 1)])
                start = i + 1
            }
            i += 1
        }
        guard start == head.endIndex, lines.count >= 2, lines.last?.isEmpty == true else {
            return .failure(Failure(status: 400, reason: "incomplete request head"))
        }
        lines.removeLast()
        guard lines.count - 1 <= maxHeaders else { return .failure(Failure(status: 431, reason: "too many header lines")) }
        for line in lines where line.count > maxLine || line.contains(13) || line.contains(0) {
            return .failure(Failure(status: 431, reason: "header line too long or with CR/NUL"))
        }
        let parts = lines[0].split(separator: 32, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, parts[0].allSatisfy({ (65...90).contains($0) }),
              parts[2].elementsEqual("HTTP/1.1".utf8) || parts[2].elementsEqual("HTTP/1.0".utf8) else {
            return .failure(Failure(status: 400, reason: "malformed request line"))
        }
        let method = String(decoding: parts[0], as: UTF8.self)
        let target = String(decoding: parts[1], as: UTF8.self)
        guard target.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) else { return .failure(Failure(status: 400, reason: "malformed request target")) }
        var headers: [(String, ArraySlice<UInt8>)] = []
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: 58), colon > line.startIndex,
                  line[line.startIndex..<colon].allSatisfy(isTokenByte) else {
                return .failure(Failure(status: 400, reason: "malformed header line"))
            }
            headers.append((String(decoding: line[line.startIndex..<colon], as: UTF8.self).lowercased(), line[(colon + 1)...]))
        }
        // The body's framing decides where the checked request ends: a `Content-Length`, or
        // `Transfer-Encoding: chunked` alone (HTTP/1.1), which `ChunkedBody` follows. Anything that could
        // be read two ways is refused: both framings at once, another coding, lengths that disagree, and
        // a name an upstream reading headers as CGI variables takes for one of them (`Content_Length`).
        for (name, _) in headers where name.contains("_") {
            let dashed = String(name.map { $0 == "_" ? "-" : $0 })
            if dashed == "content-length" || dashed == "transfer-encoding" {
                return .failure(Failure(status: 400, reason: "a header named \(name), which some upstreams read as \(dashed)"))
            }
        }
        let encodings = headers.filter { $0.0 == "transfer-encoding" }
        var chunked = false
        if !encodings.isEmpty {
            guard encodings.count == 1, headers.allSatisfy({ $0.0 != "content-length" }) else {
                return .failure(Failure(status: 400, reason: "a Transfer-Encoding with a Content-Length or a second Transfer-Encoding: the body could be read two ways"))
            }
            var value = encodings[0].1.drop { $0 == 32 || $0 == 9 }
            while let last = value.last, last == 32 || last == 9 { value.removeLast() }
            // Compared as ASCII bytes: a Unicode case mapping would take a look-alike (K, U+212A) for a `k`.
            guard value.count == 7, zip(value, "chunked".utf8).allSatisfy({ ($0 | 0x20) == $1 }) else {
                return .failure(Failure(status: 411, reason: "a Transfer-Encoding other than chunked alone is not proxied: send chunked or a Content-Length"))
            }
            guard parts[2].elementsEqual("HTTP/1.1".utf8) else {
                return .failure(Failure(status: 400, reason: "a Transfer-Encoding in an HTTP/1.0 request"))
            }
            chunked = true
        }
        var bodyLength: Int64 = 0
        let lengths = headers.filter { $0.0 == "content-length" }.map { $0.1.drop { $0 == 32 || $0 == 9 } }
        if let first = lengths.first {
            var value = first
            while let last = value.last, last == 32 || last == 9 { value.removeLast() }
            guard !value.isEmpty, value.count <= 18, value.allSatisfy({ (48...57).contains($0) }),
                  lengths.allSatisfy({ Array($0.prefix(value.count)) == Array(value) && $0.dropFirst(value.count).allSatisfy { $0 == 32 || $0 == 9 } }) else {
                return .failure(Failure(status: 400, reason: "malformed or conflicting Content-Length"))
            }
            bodyLength = value.reduce(0) { $0 * 10 + Int64($1 - 48) }
        }
        if method == "CONNECT" {
            guard let (host, port) = authority(target, defaultPort: nil) else {
                return .failure(Failure(status: 400, reason: "CONNECT needs host:port"))
            }
            return .success(ProxyRequest(kind: .connect, host: host, port: port))
        }
        guard target.utf8.count > 7, target.prefix(7).lowercased() == "http://" else {
            return .failure(Failure(status: 400, reason: "only CONNECT and absolute http:// requests are proxied"))
        }
        let rest = target.dropFirst(7)
        let cut = rest.firstIndex { $0 == "/" || $0 == "?" } ?? rest.endIndex
        let authorityText = String(rest[..<cut])
        guard !authorityText.contains("@"), let (host, port) = authority(authorityText, defaultPort: 80) else {
            return .failure(Failure(status: 400, reason: "malformed host in the request URI"))
        }
        var path = String(rest[cut...])
        if path.isEmpty { path = "/" } else if path.hasPrefix("?") { path = "/" + path }
        // Hop-by-hop and proxy headers stop here; the Host is the one that was checked.
        // So are the headers some front ends route by instead of the Host (`Forwarded: host=`,
        // `X-Forwarded-Host`, IIS's `X-Original-URL`).
        // A chunked body's framing header is the proxy's own, as its chunks are (`ChunkedBody.encode`).
        let dropped: Set = ["host", "connection", "proxy-connection", "keep-alive", "proxy-authorization", "te", "upgrade",
                            "forwarded", "x-forwarded-host", "x-forwarded-server", "x-host", "x-original-url", "x-rewrite-url",
                            "transfer-encoding"]
        var out = Array("\(method) \(path) \(String(decoding: parts[2], as: UTF8.self))\r\nHost: \(authorityText)\r\n".utf8)
        // Compared with `_` read as `-`: an upstream that reads headers as CGI variables takes
        // `X_Forwarded_Host` for `X-Forwarded-Host`.
        for (name, line) in zip(headers.map(\.0), lines.dropFirst()) where !dropped.contains(name.contains("_") ? String(name.map { $0 == "_" ? "-" : $0 }) : name) {
            out += line
            out += [13, 10]
        }
        if chunked { out += Array("Transfer-Encoding: chunked\r\n".utf8) }
        out += Array("Connection: close\r\n\r\n".utf8)
        return .success(ProxyRequest(kind: .http, host: host, port: port, upstreamHead: out, bodyLength: bodyLength, chunked: chunked))
    }

    /// `host:port`, `[v6]:port`, or a host alone when `defaultPort` is given.
    static func authority(_ text: String, defaultPort: UInt16?) -> (String, UInt16)? {
        var host: Substring
        var portText: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.startIndex...close]
            let rest = text[text.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":") else { return nil }
                portText = rest.dropFirst()
            }
        } else if let colon = text.lastIndex(of: ":") {
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        } else {
            host = Substring(text)
        }
        guard !host.isEmpty, host.utf8.count <= 255 else { return nil }
        let port: UInt16
        if let portText {
            guard !portText.isEmpty, portText.utf8.count <= 5, portText.utf8.allSatisfy({ (48...57).contains($0) }),
                  let p = UInt16(portText), p > 0 else { return nil }
            port = p
        } else {
            guard let defaultPort else { return nil }
            port = defaultPort
        }
        return (String(host), port)
    }

    static func isTokenByte(_ b: UInt8) -> Bool {
        (48...57).contains(b) || (65...90).contains(b) || (97...122).contains(b) || Array("!#$%&'*+-.^_`|~".utf8).contains(b)
    }

    /// What the first bytes a client sends through a tunnel say about TLS.
    public enum ClientHello: Sendable, Equatable {
        /// Not all of the first TLS record yet.
        case incomplete
        /// Not a TLS handshake record.
        case notTLS
        /// A handshake record that is not a ClientHello that parses.
        case malformed
        /// A ClientHello without a server name.
        case noServerName
        case serverName(String)
        /// A ClientHello carrying an encrypted one (ECH, or the draft ESNI): the name the server will
        /// serve is not the one in the clear, so it cannot be checked.
        case encryptedServerName
    }

    /// The largest first record read: a TLS record holds at most 16 KiB plus its header.
    public static let maxClientHello = 5 + 16384

    /// The server name (SNI) of the ClientHello that `bytes` begin with (RFC 8446 4.1.2, RFC 6066 3).
    public static func clientHello(_ bytes: [UInt8]) -> ClientHello {
        guard let first = bytes.first else { return .incomplete }
        guard first == 0x16 else { return .notTLS }
        guard bytes.count >= 5 else { return .incomplete }
        let length = Int(bytes[3]) << 8 | Int(bytes[4])
        guard length >= 4, length <= 16384 else { return .malformed }
        guard bytes.count >= 5 + length else { return .incomplete }
        let r = bytes[5..<(5 + length)]
        var i = r.startIndex
        func take(_ n: Int) -> ArraySlice<UInt8>? {
            guard n >= 0, i + n <= r.endIndex else { return nil }
            defer { i += n }
            return r[i..<(i + n)]
        }
        func number(_ n: Int) -> Int? { take(n).map { $0.reduce(0) { $0 << 8 | Int($1) } } }
        guard take(1) == [1], let bodyLength = number(3), bodyLength <= r.endIndex - i,
              take(2 + 32) != nil, let session = number(1), take(session) != nil,
              let suites = number(2), take(suites) != nil, let compressions = number(1), take(compressions) != nil else {
            return .malformed
        }
        guard let extensionsLength = number(2) else { return .noServerName }
        let end = min(r.endIndex, i + extensionsLength)
        var serverName: String?
        var encrypted = false
        // Every extension is read: an encrypted name may come after the one in the clear.
        while i + 4 <= end {
            guard let type = number(2), let size = number(2), i + size <= end else { return .malformed }
            let next = i + size
            defer { i = next }
            // encrypted_client_hello (RFC 9849, 0xfe0d) and the draft ESNI (0xffce).
            if type == 0xFE0D || type == 0xFFCE { encrypted = true }
            guard type == 0 else { continue }
            // One server_name extension (RFC 8446 4.2 allows no second), one name in it.
            guard serverName == nil, let listLength = number(2), listLength + 2 == size, take(1) == [0],
                  let nameLength = number(2), nameLength > 0, nameLength + 3 == listLength, let name = take(nameLength) else { return .malformed }
            serverName = String(decoding: name, as: UTF8.self)
        }
        if encrypted { return .encryptedServerName }
        return serverName.map { .serverName($0) } ?? .noServerName
    }

    /// A plain-text refusal the worker's client shows its user.
    public static func response(status: Int, reason: String) -> [UInt8] {
        let phrase = [400: "Bad Request", 403: "Forbidden", 408: "Request Timeout", 411: "Length Required", 429: "Too Many Requests",
                      431: "Request Header Fields Too Large", 502: "Bad Gateway", 504: "Gateway Timeout"][status] ?? "Error"
        let body = "stockade egress: \(reason)\n"
        return Array("HTTP/1.1 \(status) \(phrase)\r\nContent-Type: text/plain\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\nX-Stockade-Egress: \(reason)\r\n\r\n\(body)".utf8)
    }
}
