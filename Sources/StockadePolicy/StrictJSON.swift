/// A byte-level JSON parser for hostile input (RFC 8259, plus refusals ordinary parsers skip).
///
/// It refuses what a worker could use to make two readers disagree or to exhaust the supervisor:
/// documents over `maxBytes`, nesting deeper than `maxDepth`, duplicate object keys (after
/// unescaping; keys that Swift compares equal, i.e. canonically equivalent, count as duplicates),
/// invalid UTF-8 (overlong forms, UTF-16 surrogates encoded in UTF-8, lead bytes above 0xF4,
/// truncated sequences, stray continuation bytes), unpaired `\u` surrogate escapes, unescaped
/// control characters in strings, leading zeros, a `-` without digits, anything after the value,
/// and a byte order mark.
///
/// It is iterative (an explicit stack of open containers), so hostile nesting cannot overflow
/// the thread's stack, and works on the raw bytes without Foundation. Numbers keep their literal
/// text; callers decide how exact they must be.
public enum StrictJSON {
    public struct Limits: Sendable {
        public var maxBytes: Int
        /// Most containers (arrays and objects) open at once: 1 allows `[1]` but not `[[1]]`.
        public var maxDepth: Int
        public init(maxBytes: Int, maxDepth: Int) {
            self.maxBytes = maxBytes
            self.maxDepth = maxDepth
        }
    }

    /// Why and where a document was refused.
    public struct Failure: Error, Sendable, Equatable, CustomStringConvertible {
        public enum Reason: String, Sendable, CaseIterable {
            case tooLarge = "too_large"
            case tooDeep = "too_deep"
            case duplicateKey = "duplicate_key"
            case invalidUTF8 = "invalid_utf8"
            case unpairedSurrogate = "unpaired_surrogate"
            case controlCharacter = "control_character"
            case badEscape = "bad_escape"
            case leadingZero = "leading_zero"
            case badNumber = "bad_number"
            case badLiteral = "bad_literal"
            case byteOrderMark = "byte_order_mark"
            case trailingData = "trailing_data"
            case unexpectedByte = "unexpected_byte"
            case unexpectedEnd = "unexpected_end"
        }

        /// Offset (from 0) of the byte where the problem was found.
        public let offset: Int
        public let reason: Reason
        /// What was wrong, in words.
        public let detail: String

        public init(offset: Int, reason: Reason, detail: String) {
            self.offset = offset
            self.reason = reason
            self.detail = detail
        }

        public var description: String { "\(detail) at byte \(offset)" }
    }

    public static func parse(_ bytes: [UInt8], limits: Limits) throws(Failure) -> JSONValue {
        guard bytes.count <= limits.maxBytes else {
            throw Failure(offset: limits.maxBytes, reason: .tooLarge,
                          detail: "document is \(bytes.count) bytes, more than the limit of \(limits.maxBytes)")
        }
        return try bytes.withUnsafeBufferPointer { (buffer) throws(Failure) -> JSONValue in
            var parser = Parser(bytes: buffer, maxDepth: limits.maxDepth)
            return try parser.document()
        }
    }
}

private extension UInt8 {
    static let quote = UInt8(ascii: "\"")
    static let backslash = UInt8(ascii: "\\")
    static let comma = UInt8(ascii: ",")
    static let colon = UInt8(ascii: ":")
    static let openBracket = UInt8(ascii: "[")
    static let closeBracket = UInt8(ascii: "]")
    static let openBrace = UInt8(ascii: "{")
    static let closeBrace = UInt8(ascii: "}")
    static let minus = UInt8(ascii: "-")
    static let plus = UInt8(ascii: "+")
    static let zero = UInt8(ascii: "0")
    static let nine = UInt8(ascii: "9")
    static let dot = UInt8(ascii: ".")

    var isDigit: Bool { self >= .zero && self <= .nine }

    /// The byte as it should appear in a message: the character when printable, else hex.
    var shown: String {
        if self >= 0x21 && self <= 0x7E { return "'\(Character(Unicode.Scalar(self)))'" }
        let hex = String(self, radix: 16, uppercase: true)
        return "0x" + (hex.count < 2 ? "0" + hex : hex)
    }
}

private struct Parser {
    typealias Failure = StrictJSON.Failure

    let b: UnsafeBufferPointer<UInt8>
    let n: Int
    let maxDepth: Int
    var i = 0
    /// Reused buffer for strings that need unescaping or hold non-ASCII bytes.
    var scratch: [UInt8] = []

    // The open containers, innermost last. Kept as parallel stacks of plain arrays so that
    // appending to the innermost container mutates it in place (no copy-on-write).
    var isObject: [Bool] = []
    var arrays: [[JSONValue]] = []
    var objects: [[String: JSONValue]] = []
    var pendingKeys: [String] = []

    init(bytes: UnsafeBufferPointer<UInt8>, maxDepth: Int) {
        self.b = bytes
        self.n = bytes.count
        self.maxDepth = maxDepth
    }

    mutating func document() throws(Failure) -> JSONValue {
        if n >= 3 && b[0] == 0xEF && b[1] == 0xBB && b[2] == 0xBF {
            throw Failure(offset: 0, reason: .byteOrderMark, detail: "document starts with a UTF-8 byte order mark")
        }
        var value: JSONValue
        nextValue: while true {
            skipWhitespace()
            guard i < n else { throw endOfInput("a value") }
            switch b[i] {
            case .openBracket:
                try checkDepth()
                i += 1
                skipWhitespace()
                if i < n && b[i] == .closeBracket {
                    i += 1
                    value = .array([])
                } else {
                    isObject.append(false)
                    arrays.append([])
                    continue nextValue
                }
            case .openBrace:
                try checkDepth()
                i += 1
                skipWhitespace()
                if i < n && b[i] == .closeBrace {
                    i += 1
                    value = .object([:])
                } else {
                    isObject.append(true)
                    objects.append([:])
                    pendingKeys.append(try key())
                    continue nextValue
                }
            case .quote:
                value = .string(try string())
            case .minus, .zero ... .nine:
                value = .number(try number())
            case UInt8(ascii: "t"):
                try literal("true")
                value = .bool(true)
            case UInt8(ascii: "f"):
                try literal("false")
                value = .bool(false)
            case UInt8(ascii: "n"):
                try literal("null")
                value = .null
            default:
                throw unexpected("a value")
            }

            // A value is complete: put it into its container, closing every container that ends here.
            while true {
                guard let inObject = isObject.last else {
                    skipWhitespace()
                    if i < n {
                        throw Failure(offset: i, reason: .trailingData, detail: "unexpected \(b[i].shown) after the document's value")
                    }
                    return value
                }
                skipWhitespace()
                if inObject {
                    objects[objects.count - 1][pendingKeys.removeLast()] = value
                    guard i < n else { throw endOfInput("',' or '}'") }
                    if b[i] == .comma {
                        i += 1
                        pendingKeys.append(try key())
                        continue nextValue
                    }
                    guard b[i] == .closeBrace else { throw unexpected("',' or '}'") }
                    i += 1
                    isObject.removeLast()
                    value = .object(objects.removeLast())
                } else {
                    arrays[arrays.count - 1].append(value)
                    guard i < n else { throw endOfInput("',' or ']'") }
                    if b[i] == .comma {
                        i += 1
                        continue nextValue
                    }
                    guard b[i] == .closeBracket else { throw unexpected("',' or ']'") }
                    i += 1
                    isObject.removeLast()
                    value = .array(arrays.removeLast())
                }
            }
        }
    }

    mutating func skipWhitespace() {
        while i < n {
            switch b[i] {
            case 0x20, 0x09, 0x0A, 0x0D: i += 1
            default: return
            }
        }
    }

    func checkDepth() throws(Failure) {
        if isObject.count + 1 > maxDepth {
            throw Failure(offset: i, reason: .tooDeep, detail: "nesting deeper than the limit of \(maxDepth)")
        }
    }

    func unexpected(_ expected: String) -> Failure {
        Failure(offset: i, reason: .unexpectedByte, detail: "expected \(expected), found \(b[i].shown)")
    }

    func endOfInput(_ expected: String) -> Failure {
        Failure(offset: n, reason: .unexpectedEnd, detail: "document ends where \(expected) was expected")
    }

    /// An object key and its colon, refusing a key the innermost object already holds.
    mutating func key() throws(Failure) -> String {
        skipWhitespace()
        guard i < n else { throw endOfInput("a string key") }
        guard b[i] == .quote else { throw unexpected("a string key") }
        let at = i
        let name = try string()
        if objects[objects.count - 1][name] != nil {
            throw Failure(offset: at, reason: .duplicateKey, detail: "duplicate key \(Parser.shortQuoted(name)) in an object")
        }
        skipWhitespace()
        guard i < n else { throw endOfInput("':'") }
        guard b[i] == .colon else { throw unexpected("':'") }
        i += 1
        return name
    }

    static func shortQuoted(_ s: String) -> String {
        var out = ""
        JSONValue.quote(s.count > 64 ? String(s.prefix(64)) + "…" : s, into: &out)
        return out
    }

    mutating func literal(_ word: StaticString) throws(Failure) {
        let count = word.utf8CodeUnitCount
        let start = word.utf8Start
        for k in 0..<count where i + k >= n || b[i + k] != start[k] {
            throw Failure(offset: i, reason: .badLiteral, detail: "expected the literal \(word)")
        }
        i += count
    }

    mutating func number() throws(Failure) -> String {
        let start = i
        if b[i] == .minus { i += 1 }
        guard i < n, b[i].isDigit else {
            throw Failure(offset: start, reason: .badNumber, detail: "a '-' without digits")
        }
        if b[i] == .zero {
            i += 1
            if i < n && b[i].isDigit {
                throw Failure(offset: start, reason: .leadingZero, detail: "a number with a leading zero")
            }
        } else {
            while i < n && b[i].isDigit { i += 1 }
        }
        if i < n && b[i] == .dot {
            i += 1
            guard i < n, b[i].isDigit else {
                throw Failure(offset: i, reason: .badNumber, detail: "a '.' without digits after it")
            }
            while i < n && b[i].isDigit { i += 1 }
        }
        if i < n && (b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E")) {
            i += 1
            if i < n && (b[i] == .plus || b[i] == .minus) { i += 1 }
            guard i < n, b[i].isDigit else {
                throw Failure(offset: i, reason: .badNumber, detail: "an exponent without digits")
            }
            while i < n && b[i].isDigit { i += 1 }
        }
        return String(decoding: UnsafeBufferPointer(rebasing: b[start..<i]), as: UTF8.self)
    }

    mutating func string() throws(Failure) -> String {
        let open = i
        i += 1
        let start = i
        // Fast path: printable ASCII without escapes is already a valid string.
        while i < n {
            let c = b[i]
            if c == .quote {
                i += 1
                return String(decoding: UnsafeBufferPointer(rebasing: b[start..<(i - 1)]), as: UTF8.self)
            }
            if c == .backslash || c < 0x20 || c >= 0x80 { break }
            i += 1
        }
        scratch.removeAll(keepingCapacity: true)
        scratch.append(contentsOf: UnsafeBufferPointer(rebasing: b[start..<i]))
        while i < n {
            let c = b[i]
            if c == .quote {
                i += 1
                // Every byte in scratch was validated as UTF-8 on the way in.
                return String(decoding: scratch, as: UTF8.self)
            } else if c == .backslash {
                try escape()
            } else if c < 0x20 {
                throw Failure(offset: i, reason: .controlCharacter, detail: "unescaped control character \(c.shown) in a string")
            } else if c >= 0x80 {
                try utf8Sequence()
            } else {
                scratch.append(c)
                i += 1
            }
        }
        throw Failure(offset: open, reason: .unexpectedEnd, detail: "string is not terminated")
    }

    /// Validates one multi-byte UTF-8 sequence at `i` (Unicode Table 3-7) and appends it.
    mutating func utf8Sequence() throws(Failure) {
        let lead = b[i]
        var low: UInt8 = 0x80
        var high: UInt8 = 0xBF
        let trailing: Int
        switch lead {
        case 0xC2...0xDF: trailing = 1
        case 0xE0: trailing = 2; low = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: trailing = 2
        case 0xED: trailing = 2; high = 0x9F
        case 0xF0: trailing = 3; low = 0x90
        case 0xF1...0xF3: trailing = 3
        case 0xF4: trailing = 3; high = 0x8F
        case 0x80...0xBF:
            throw Failure(offset: i, reason: .invalidUTF8, detail: "UTF-8 continuation byte \(lead.shown) without a lead byte")
        case 0xC0, 0xC1:
            throw Failure(offset: i, reason: .invalidUTF8, detail: "overlong UTF-8 encoding (lead byte \(lead.shown))")
        default:
            throw Failure(offset: i, reason: .invalidUTF8, detail: "byte \(lead.shown) never appears in UTF-8")
        }
        guard i + trailing < n else {
            throw Failure(offset: i, reason: .invalidUTF8, detail: "truncated UTF-8 sequence")
        }
        let second = b[i + 1]
        guard second >= low && second <= high else {
            if second & 0xC0 != 0x80 {
                throw Failure(offset: i, reason: .invalidUTF8, detail: "truncated UTF-8 sequence")
            }
            let why = lead == 0xED ? "UTF-16 surrogate encoded in UTF-8"
                : lead == 0xF4 ? "code point above U+10FFFF" : "overlong UTF-8 encoding"
            throw Failure(offset: i, reason: .invalidUTF8, detail: why)
        }
        if trailing > 1 {
            for k in 2...trailing where b[i + k] & 0xC0 != 0x80 {
                throw Failure(offset: i, reason: .invalidUTF8, detail: "truncated UTF-8 sequence")
            }
        }
        scratch.append(contentsOf: UnsafeBufferPointer(rebasing: b[i...(i + trailing)]))
        i += trailing + 1
    }

    mutating func escape() throws(Failure) {
        let at = i
        i += 1
        guard i < n else { throw Failure(offset: at, reason: .unexpectedEnd, detail: "string ends inside an escape") }
        let c = b[i]
        i += 1
        switch c {
        case .quote: scratch.append(.quote)
        case .backslash: scratch.append(.backslash)
        case UInt8(ascii: "/"): scratch.append(UInt8(ascii: "/"))
        case UInt8(ascii: "b"): scratch.append(0x08)
        case UInt8(ascii: "f"): scratch.append(0x0C)
        case UInt8(ascii: "n"): scratch.append(0x0A)
        case UInt8(ascii: "r"): scratch.append(0x0D)
        case UInt8(ascii: "t"): scratch.append(0x09)
        case UInt8(ascii: "u"):
            var code = try hex4(escapeAt: at)
            switch code {
            case 0xD800...0xDBFF:
                guard i + 1 < n, b[i] == .backslash, b[i + 1] == UInt8(ascii: "u") else {
                    throw Failure(offset: at, reason: .unpairedSurrogate, detail: "high surrogate escape not followed by a low surrogate")
                }
                let lowAt = i
                i += 2
                let lowCode = try hex4(escapeAt: lowAt)
                guard (0xDC00...0xDFFF).contains(lowCode) else {
                    throw Failure(offset: at, reason: .unpairedSurrogate, detail: "high surrogate escape not followed by a low surrogate")
                }
                code = 0x10000 + ((code - 0xD800) << 10) + (lowCode - 0xDC00)
            case 0xDC00...0xDFFF:
                throw Failure(offset: at, reason: .unpairedSurrogate, detail: "low surrogate escape without a high surrogate")
            default:
                break
            }
            // Surrogates were handled above, so the code is a valid scalar.
            guard let scalar = Unicode.Scalar(code) else {
                throw Failure(offset: at, reason: .unpairedSurrogate, detail: "escape is not a Unicode scalar")
            }
            appendUTF8(scalar.value)
        default:
            throw Failure(offset: at, reason: .badEscape, detail: "unknown escape '\\' followed by \(c.shown)")
        }
    }

    mutating func appendUTF8(_ v: UInt32) {
        switch v {
        case 0..<0x80:
            scratch.append(UInt8(v))
        case 0x80..<0x800:
            scratch.append(UInt8(0xC0 | v >> 6))
            scratch.append(UInt8(0x80 | v & 0x3F))
        case 0x800..<0x10000:
            scratch.append(UInt8(0xE0 | v >> 12))
            scratch.append(UInt8(0x80 | v >> 6 & 0x3F))
            scratch.append(UInt8(0x80 | v & 0x3F))
        default:
            scratch.append(UInt8(0xF0 | v >> 18))
            scratch.append(UInt8(0x80 | v >> 12 & 0x3F))
            scratch.append(UInt8(0x80 | v >> 6 & 0x3F))
            scratch.append(UInt8(0x80 | v & 0x3F))
        }
    }

    /// Four hex digits at `i` (after `\u`).
    mutating func hex4(escapeAt at: Int) throws(Failure) -> UInt32 {
        guard i + 4 <= n else { throw Failure(offset: at, reason: .badEscape, detail: "\\u escape needs four hex digits") }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let c = b[i]
            let digit: UInt8
            switch c {
            case .zero ... .nine: digit = c - .zero
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = c - UInt8(ascii: "A") + 10
            default: throw Failure(offset: at, reason: .badEscape, detail: "\\u escape needs four hex digits")
            }
            value = value << 4 | UInt32(digit)
            i += 1
        }
        return value
    }
}
