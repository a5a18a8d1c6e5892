/// A `Transfer-Encoding: chunked` request body (RFC 9112 7.1) decoded as its bytes go by, each looked
/// at once, for the egress proxy: it forwards a plain-HTTP request's body up to its end and not a byte
/// beyond it, so a request pipelined behind the body never reaches the upstream; and it forwards the
/// body re-chunked (`encode`), never the client's own framing: minimal hexadecimal sizes, no
/// extensions, no trailers, `0\r\n\r\n` at the end. An upstream whose chunk parser reads a size line's
/// extension or a trailer another way (some read any byte of a size line as a digit, or skip two
/// bytes after the last chunk and take its trailers for the next request) then sees only what every
/// parser reads alike, and ends the body where the proxy did.
///
/// Hand-written rather than taken from an HTTP library: the bytes are a worker's (hostile). The grammar
/// read is a strict subset of the RFC's: a chunk size is hexadecimal digits (at most 15 significant
/// ones), then optional spaces or tabs before a `;` and extensions of visible characters, spaces and
/// tabs; every line ends in CRLF (a bare CR or LF, a NUL, is malformed); each chunk's data is followed
/// by CRLF; the last chunk (size 0) is followed by trailer field lines (`name: value`, name a token)
/// and an empty line. A size line is bounded by `ProxyRequest.maxLine`, the trailer section by
/// `ProxyRequest.maxHead`.
public struct ChunkedBody: Sendable, Equatable {
    public enum Outcome: Sendable, Equatable {
        /// Every byte given belongs to the body, which goes on.
        case more
        /// The body ended after this many of the bytes given; the rest is not part of it.
        case ended(Int)
        /// The bytes given are the body's up to this many; the next one cannot be part of a chunked
        /// body, for the reason given.
        case malformed(Int, String)
    }

    private enum SizePhase: Sendable, Equatable {
        case digits
        /// Spaces or tabs after the digits: only a `;` may follow them.
        case blank
        case chunkExtension
    }

    private enum State: Sendable, Equatable {
        /// In a size line: its value, its significant digits so far (leading zeros not counted),
        /// whether it had a digit, what part of the line this is, its length.
        case size(value: Int64, digits: Int, sawDigit: Bool, phase: SizePhase, length: Int)
        /// After the CR that ends a size line.
        case sizeLF(value: Int64)
        case data(remaining: Int64)
        case dataCR
        case dataLF
        /// At the start of a trailer line (or of the final empty line).
        case trailerStart
        /// In a trailer field line: whether its name ended (the colon seen), its length.
        case trailer(nameEnded: Bool, length: Int)
        case trailerLF
        case finalLF
        case ended
        case failed
    }

    private static let sizeLine = State.size(value: 0, digits: 0, sawDigit: false, phase: .digits, length: 0)
    private var state = ChunkedBody.sizeLine
    private var trailerBytes = 0

    public init() {}

    /// Whether the body's end was read.
    public var ended: Bool { state == .ended }

    /// Reads `bytes`, the body's next ones.
    public mutating func scan(_ bytes: ArraySlice<UInt8>) -> Outcome {
        var data: [UInt8] = []
        return scan(bytes, data: &data)
    }

    /// Reads `bytes`, the body's next ones, and appends the chunk data among them to `data`.
    public mutating func scan(_ bytes: ArraySlice<UInt8>, data: inout [UInt8]) -> Outcome {
        var i = bytes.startIndex
        func fail(_ reason: String) -> Outcome {
            state = .failed
            return .malformed(i - bytes.startIndex, reason)
        }
        switch state {
        case .ended: return .ended(0)
        case .failed: return .malformed(0, "the chunked body was already malformed")
        default: break
        }
        while i < bytes.endIndex {
            let b = bytes[i]
            switch state {
            case .trailerStart, .trailer, .trailerLF, .finalLF:
                trailerBytes += 1
                guard trailerBytes <= ProxyRequest.maxHead else { return fail("trailers over \(ProxyRequest.maxHead) bytes") }
            default:
                break
            }
            switch state {
            case .ended, .failed:
                preconditionFailure("left the loop at the end or the failure")
            case .size(let value, let digits, let sawDigit, let phase, let length):
                guard length < ProxyRequest.maxLine else { return fail("a chunk size line longer than \(ProxyRequest.maxLine) bytes") }
                if b == 13 {
                    guard sawDigit else { return fail("a chunk size line without a size") }
                    guard phase != .blank else { return fail("a chunk size followed by a space and no extension") }
                    state = .sizeLF(value: value)
                    break
                }
                switch phase {
                case .chunkExtension:
                    guard b == 9 || (b >= 32 && b < 127) else { return fail("a control byte in a chunk extension") }
                    state = .size(value: value, digits: digits, sawDigit: true, phase: .chunkExtension, length: length + 1)
                case .digits:
                    if let digit = Self.hexValue(b) {
                        let significant = value == 0 && digit == 0 ? digits : digits + 1
                        guard significant <= 15 else { return fail("a chunk size over 15 hexadecimal digits") }
                        state = .size(value: value << 4 | Int64(digit), digits: significant, sawDigit: true, phase: .digits, length: length + 1)
                    } else if sawDigit && (b == 32 || b == 9) {
                        state = .size(value: value, digits: digits, sawDigit: true, phase: .blank, length: length + 1)
                    } else if sawDigit && b == 59 {
                        state = .size(value: value, digits: digits, sawDigit: true, phase: .chunkExtension, length: length + 1)
                    } else {
                        return fail(sawDigit ? "a chunk size followed by something other than an extension" : "a chunk size that is not hexadecimal")
                    }
                case .blank:
                    if b == 32 || b == 9 {
                        state = .size(value: value, digits: digits, sawDigit: true, phase: .blank, length: length + 1)
                    } else if b == 59 {
                        state = .size(value: value, digits: digits, sawDigit: true, phase: .chunkExtension, length: length + 1)
                    } else {
                        return fail("a chunk size followed by something other than an extension")
                    }
                }
            case .sizeLF(let value):
                guard b == 10 else { return fail("a chunk size line not ended by CRLF") }
                state = value == 0 ? .trailerStart : .data(remaining: value)
            case .data(let remaining):
                // As much of the chunk's data as is here, at once.
                let take = Int(min(remaining, Int64(bytes.endIndex - i)))
                data.append(contentsOf: bytes[i..<(i + take)])
                i += take
                state = remaining == Int64(take) ? .dataCR : .data(remaining: remaining - Int64(take))
                continue
            case .dataCR:
                guard b == 13 else { return fail("a chunk's data not followed by CRLF") }
                state = .dataLF
            case .dataLF:
                guard b == 10 else { return fail("a chunk's data not followed by CRLF") }
                state = Self.sizeLine
            case .trailerStart:
                if b == 13 {
                    state = .finalLF
                } else {
                    guard ProxyRequest.isTokenByte(b) else { return fail("a trailer line that is not a header field") }
                    state = .trailer(nameEnded: false, length: 1)
                }
            case .trailer(let nameEnded, let length):
                guard length < ProxyRequest.maxLine else { return fail("a trailer line longer than \(ProxyRequest.maxLine) bytes") }
                if b == 13 {
                    guard nameEnded else { return fail("a trailer line without a colon") }
                    state = .trailerLF
                } else if nameEnded {
                    guard b == 9 || (b >= 32 && b != 127) else { return fail("a control byte in a trailer field") }
                    state = .trailer(nameEnded: true, length: length + 1)
                } else if b == 58 {
                    state = .trailer(nameEnded: true, length: length + 1)
                } else {
                    guard ProxyRequest.isTokenByte(b) else { return fail("a trailer field name that is not a token") }
                    state = .trailer(nameEnded: false, length: length + 1)
                }
            case .trailerLF:
                guard b == 10 else { return fail("a trailer line not ended by CRLF") }
                state = .trailerStart
            case .finalLF:
                guard b == 10 else { return fail("the chunked body's last line not ended by CRLF") }
                state = .ended
                return .ended(i + 1 - bytes.startIndex)
            }
            i += 1
        }
        return .more
    }

    /// `data` as the proxy forwards it: one chunk (none when `data` is empty), then the last chunk and
    /// the end of the body when `last`. At most 14 bytes longer than `data` for data under 1 MiB.
    public static func encode(_ data: ArraySlice<UInt8>, last: Bool) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(data.count + 16)
        if !data.isEmpty {
            out += Array(String(data.count, radix: 16).utf8)
            out += [13, 10]
            out += data
            out += [13, 10]
        }
        if last { out += Array("0\r\n\r\n".utf8) }
        return out
    }

    private static func hexValue(_ b: UInt8) -> UInt8? {
        switch b {
        case 48...57: b - 48
        case 65...70: b - 55
        case 97...102: b - 87
        default: nil
        }
    }
}
