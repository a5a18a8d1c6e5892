import Glibc

/// An HTTP/1.1 response's status line and header fields.
public struct ResponseHead: Sendable {
    public var status: Int
    /// Field names lowercased, in the order received.
    public var fields: [(name: String, value: String)]

    public func field(_ name: String) -> String? {
        fields.first { $0.name == name }?.value
    }
}

/// Reads one response from the service, treating it as hostile input: the head, each line and the
/// body are bounded; the body is framed by `Content-Length`, `Transfer-Encoding: chunked`, or the
/// end of the connection, and nothing else.
struct ResponseReader {
    static let maxHeadBytes = 64 << 10
    static let maxFields = 100
    static let maxChunkLine = 1024

    private let connection: ServiceConnection
    private var buffer: [UInt8] = []
    private var start = 0
    private var framing: Framing = .none
    /// The answer said `Connection: close`, or its body ends with the connection, or it is not an
    /// HTTP/1.1 answer with one framing header: the connection carries no further request.
    private var closes = false
    /// Whether any byte of an answer came: a kept connection the service had closed since gives none.
    private(set) var receivedAny = false
    /// Set for an event stream's body, which is quiet for as long as nothing happens: no stall limit.
    var streaming = false

    /// How long the rest of an answer may take to come once its first byte has: the service writes
    /// an answer whole (a wait's too: its head comes with the report), so a pause this long in one
    /// is a broken or hostile service, which would otherwise hold the client for ever. The wait for
    /// the first byte has no limit (a wait lasts as long as its run). `$STOCKADE_ANSWER_STALL_SECONDS`
    /// sets it (1 to 3600; 30 otherwise).
    static let stallLimitMillis: Int32 = {
        if let text = getenv("STOCKADE_ANSWER_STALL_SECONDS").map({ String(cString: $0) }), let seconds = Int32(text),
           (1...3600).contains(seconds) {
            return seconds * 1000
        }
        return 30_000
    }()

    enum Framing {
        case none
        case length(remaining: Int)
        /// `remaining` data bytes of the current chunk; 0 between chunks.
        case chunked(remaining: Int)
        case untilClose
        case done
    }

    init(_ connection: ServiceConnection) {
        self.connection = connection
    }

    private func broken(_ reason: String) -> ClientError {
        ClientError(.protocolViolation, "the service at \(connection.address) answered something that is not HTTP this client accepts: \(reason)")
    }

    /// Reads more bytes; false at the end of the stream.
    private mutating func fill() throws(ClientError) -> Bool {
        if start > 0 && start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        } else if start > 65536 {
            buffer.removeFirst(start)
            start = 0
        }
        if receivedAny && !streaming, try !connection.waitReadable(millis: Self.stallLimitMillis) {
            throw ClientError(.stalled, "the service at \(connection.address) began an answer and sent nothing more of it for \(Self.stallLimitMillis / 1000) s: it is broken or stuck (its log may say why)")
        }
        let n = try connection.receive(into: &buffer, count: 65536)
        if n > 0 { receivedAny = true }
        return n > 0
    }

    /// After the whole body: whether the connection may carry the next request (HTTP/1.1
    /// keep-alive): the body was framed by its length or chunks, the service did not say
    /// `Connection: close`, and nothing beyond the answer arrived.
    var reusable: Bool {
        if case .done = framing { return !closes && start == buffer.count }
        return false
    }

    /// The connection, for the next request when `reusable`.
    var kept: ServiceConnection { connection }

    /// One line without its CRLF (a bare LF is taken too), at most `limit` bytes.
    private mutating func line(limit: Int, what: String) throws(ClientError) -> [UInt8] {
        // Bytes after `start` already searched for the LF (fill() may move `start`).
        var searched = 0
        while true {
            if let lf = buffer[(start + searched)...].firstIndex(of: 0x0A) {
                var end = lf
                if end > start && buffer[end - 1] == 0x0D { end -= 1 }
                guard end - start <= limit else { throw broken("\(what) longer than \(limit) bytes") }
                let line = Array(buffer[start..<end])
                start = lf + 1
                return line
            }
            // One more byte for the CR of the CRLF.
            guard buffer.count - start <= limit + 1 else { throw broken("\(what) longer than \(limit) bytes") }
            searched = buffer.count - start
            guard try fill() else { throw broken("the connection ended inside the \(what)") }
        }
    }

    /// The status line and header fields (informational 1xx answers are skipped), and the body's framing.
    mutating func head() throws(ClientError) -> ResponseHead {
        while true {
            var total = 0
            let statusLine = try line(limit: 8192, what: "status line")
            total += statusLine.count
            let parts = statusLine.split(separator: 0x20, maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count >= 2, parts[0].elementsEqual("HTTP/1.1".utf8) || parts[0].elementsEqual("HTTP/1.0".utf8),
                  parts[1].count == 3, parts[1].allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                  let status = Int(String(decoding: parts[1], as: UTF8.self)), status >= 100 else {
                throw broken("a bad status line (\(Self.printable(statusLine)))")
            }
            var fields: [(name: String, value: String)] = []
            while true {
                let field = try line(limit: Self.maxHeadBytes, what: "header")
                if field.isEmpty { break }
                total += field.count
                guard total <= Self.maxHeadBytes else { throw broken("a head longer than \(Self.maxHeadBytes) bytes") }
                guard fields.count < Self.maxFields else { throw broken("more than \(Self.maxFields) header fields") }
                guard let colon = field.firstIndex(of: 0x3A), colon > 0,
                      field[..<colon].allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
                    throw broken("a bad header field (\(Self.printable(field)))")
                }
                let value = field[(colon + 1)...].drop { $0 == 0x20 || $0 == 0x09 }
                fields.append((String(decoding: field[..<colon], as: UTF8.self).lowercased(),
                               String(decoding: value, as: UTF8.self).trimmingSuffix { $0 == " " || $0 == "\t" }))
            }
            if (100...199).contains(status) { continue }
            let head = ResponseHead(status: status, fields: fields)
            try frame(head)
            if !parts[0].elementsEqual("HTTP/1.1".utf8) { closes = true }
            return head
        }
    }

    private mutating func frame(_ head: ResponseHead) throws(ClientError) {
        closes = head.fields.contains { field in
            field.name == "connection" && field.value.lowercased().split(separator: ",").contains { $0.filter { $0 != " " && $0 != "\t" } == "close" }
        } || head.fields.filter { $0.name == "transfer-encoding" || $0.name == "content-length" }.count > 1
        if head.status == 204 || head.status == 304 {
            framing = .done
            return
        }
        if let encoding = head.field("transfer-encoding") {
            guard encoding.lowercased() == "chunked" else { throw broken("Transfer-Encoding \(encoding) (only chunked is accepted)") }
            framing = .chunked(remaining: 0)
            return
        }
        let lengths = head.fields.filter { $0.name == "content-length" }.map(\.value)
        if let first = lengths.first {
            guard lengths.allSatisfy({ $0 == first }), !first.isEmpty, first.utf8.count <= 18,
                  first.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let length = Int(first) else {
                throw broken("a bad Content-Length (\(lengths.joined(separator: ", ")))")
            }
            framing = length == 0 ? .done : .length(remaining: length)
            return
        }
        framing = .untilClose
        closes = true
    }

    /// The next bytes of the body, or nil at its end.
    mutating func bodyBytes() throws(ClientError) -> ArraySlice<UInt8>? {
        while true {
            switch framing {
            case .none, .done:
                return nil
            case .untilClose:
                if start == buffer.count, try !fill() {
                    framing = .done
                    return nil
                }
                let out = buffer[start...]
                start = buffer.count
                return out
            case .length(let remaining):
                if start == buffer.count, try !fill() {
                    throw broken("the connection ended \(remaining) bytes before the end of the body its Content-Length announced")
                }
                let take = min(remaining, buffer.count - start)
                let out = buffer[start..<(start + take)]
                start += take
                framing = remaining == take ? .done : .length(remaining: remaining - take)
                return out
            case .chunked(let remaining) where remaining > 0:
                if start == buffer.count, try !fill() { throw broken("the connection ended inside a chunk") }
                let take = min(remaining, buffer.count - start)
                let out = buffer[start..<(start + take)]
                start += take
                if remaining == take {
                    // The chunk's data ends with CRLF.
                    guard try line(limit: 0, what: "chunk's end").isEmpty else { throw broken("a chunk longer than its size") }
                    framing = .chunked(remaining: 0)
                } else {
                    framing = .chunked(remaining: remaining - take)
                }
                return out
            case .chunked:
                let sizeLine = try line(limit: Self.maxChunkLine, what: "chunk size line")
                let digits = sizeLine.prefix { $0 != 0x3B && $0 != 0x20 && $0 != 0x09 }
                guard !digits.isEmpty, digits.count <= 15, let size = Int(String(decoding: digits, as: UTF8.self), radix: 16) else {
                    throw broken("a bad chunk size (\(Self.printable(sizeLine)))")
                }
                if size == 0 {
                    // Trailer fields, bounded like the head, are read and ignored.
                    var total = 0
                    while true {
                        let trailer = try line(limit: Self.maxHeadBytes, what: "trailer")
                        if trailer.isEmpty { break }
                        total += trailer.count
                        guard total <= Self.maxHeadBytes else { throw broken("trailers longer than \(Self.maxHeadBytes) bytes") }
                    }
                    framing = .done
                    return nil
                }
                framing = .chunked(remaining: size)
            }
        }
    }

    /// The whole body, at most `limit` bytes.
    mutating func body(limit: Int) throws(ClientError) -> [UInt8] {
        var out: [UInt8] = []
        while let bytes = try bodyBytes() {
            guard out.count + bytes.count <= limit else { throw broken("a body longer than \(limit) bytes") }
            out += bytes
        }
        return out
    }

    /// At most 200 characters of a line, control characters escaped, for an error message.
    static func printable(_ bytes: [UInt8]) -> String {
        var out = ""
        for b in bytes.prefix(200) {
            if b >= 0x20 && b < 0x7F { out.append(Character(Unicode.Scalar(b))) } else { out += "\\x" + String(b, radix: 16) }
        }
        return bytes.count > 200 ? out + "…" : out
    }
}

extension String {
    func trimmingSuffix(while predicate: (Character) -> Bool) -> String {
        var s = Substring(self)
        while let last = s.last, predicate(last) { s = s.dropLast() }
        return String(s)
    }
}
