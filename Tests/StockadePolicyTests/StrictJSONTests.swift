import Testing
import StockadePolicy

private let limits = StrictJSON.Limits(maxBytes: 1 << 20, maxDepth: 16)

private func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

@Suite("StrictJSON")
struct StrictJSONTests {
    static let accepted: [(String, [UInt8], JSONValue)] = [
        ("integer", bytes("42"), .number("42")),
        ("negative zero", bytes("-0"), .number("-0")),
        ("fraction and exponent keep their text", bytes("-12.50e+003"), .number("-12.50e+003")),
        ("capital exponent", bytes("1E5"), .number("1E5")),
        ("a huge integer keeps its text", bytes("123456789012345678901234567890"), .number("123456789012345678901234567890")),
        ("true", bytes("true"), .bool(true)),
        ("false", bytes(" false "), .bool(false)),
        ("null", bytes("\tnull\r\n"), .null),
        ("empty string", bytes("\"\""), .string("")),
        ("simple escapes", bytes(#""\"\\\/\b\f\n\r\t""#), .string("\"\\/\u{8}\u{C}\n\r\t")),
        ("unicode escape", bytes(#""\u00e9\u20AC""#), .string("é€")),
        ("surrogate pair escape", bytes(#""\ud83d\ude00""#), .string("😀")),
        ("escaped NUL is a character", bytes(#""a\u0000b""#), .string("a\u{0}b")),
        ("raw multi-byte UTF-8", bytes("\"é€😀\""), .string("é€😀")),
        ("DEL is not a control character in JSON", [0x22, 0x7F, 0x22], .string("\u{7F}")),
        ("empty containers", bytes("[{},[]]"), .array([.object([:]), .array([])])),
        ("nested object", bytes(#"{"a":{"b":[1,"x",null]}}"#),
         .object(["a": .object(["b": .array([.number("1"), .string("x"), .null])])])),
        ("whitespace everywhere", bytes(" { \"k\" : [ 1 , 2 ] } "), .object(["k": .array([.number("1"), .number("2")])])),
        ("depth exactly at the limit", bytes(String(repeating: "[", count: 16) + String(repeating: "]", count: 16)),
         (0..<15).reduce(JSONValue.array([])) { inner, _ in .array([inner]) }),
        ("keys differing only in case are distinct", bytes(#"{"a":1,"A":2}"#), .object(["a": .number("1"), "A": .number("2")])),
    ]

    @Test("valid documents parse to the expected value", arguments: accepted)
    func accepts(_ name: String, _ input: [UInt8], _ expected: JSONValue) throws {
        #expect(try StrictJSON.parse(input, limits: limits) == expected, "\(name)")
    }

    typealias Reason = StrictJSON.Failure.Reason

    static let refused: [(String, [UInt8], Reason, Int)] = [
        ("empty document", [], .unexpectedEnd, 0),
        ("only whitespace", bytes("  "), .unexpectedEnd, 2),
        ("byte order mark", [0xEF, 0xBB, 0xBF] + bytes("{}"), .byteOrderMark, 0),
        ("trailing garbage", bytes("{} x"), .trailingData, 3),
        ("two values", bytes("1 2"), .trailingData, 2),
        ("trailing NUL", bytes("1") + [0], .trailingData, 1),
        ("leading zero", bytes("012"), .leadingZero, 0),
        ("negative leading zero", bytes("-01"), .leadingZero, 0),
        ("lone minus", bytes("-"), .badNumber, 0),
        ("minus then letter", bytes("-a"), .badNumber, 0),
        ("dot without digits", bytes("1."), .badNumber, 2),
        ("exponent without digits", bytes("1e+"), .badNumber, 3),
        ("leading plus", bytes("+1"), .unexpectedByte, 0),
        ("leading dot", bytes(".5"), .unexpectedByte, 0),
        ("NaN", bytes("NaN"), .unexpectedByte, 0),
        ("hex number", bytes("0x10"), .trailingData, 1),
        ("bad literal", bytes("tru"), .badLiteral, 0),
        ("capitalised literal", bytes("True"), .unexpectedByte, 0),
        ("single quotes", bytes("'a'"), .unexpectedByte, 0),
        ("trailing comma in array", bytes("[1,]"), .unexpectedByte, 3),
        ("trailing comma in object", bytes(#"{"a":1,}"#), .unexpectedByte, 7),
        ("missing colon", bytes(#"{"a" 1}"#), .unexpectedByte, 5),
        ("unquoted key", bytes("{a:1}"), .unexpectedByte, 1),
        ("comment", bytes("[1 /* c */]"), .unexpectedByte, 3),
        ("unterminated array", bytes("[1"), .unexpectedEnd, 2),
        ("unterminated string", bytes("\"abc"), .unexpectedEnd, 0),
        ("duplicate key", bytes(#"{"a":1,"a":2}"#), .duplicateKey, 7),
        ("duplicate key spelled with an escape", bytes(#"{"a":1,"\u0061":2}"#), .duplicateKey, 7),
        ("duplicate key in a nested object", bytes(#"[{"k":{"x":1,"y":2,"x":3}}]"#), .duplicateKey, 19),
        ("canonically equivalent keys collide", bytes("{\"\u{E9}\":1,\"e\u{301}\":2}"), .duplicateKey, 8),
        ("raw newline in string", bytes("\"a\nb\""), .controlCharacter, 2),
        ("raw tab in string", bytes("\"\t\""), .controlCharacter, 1),
        ("raw NUL in string", [0x22, 0x00, 0x22], .controlCharacter, 1),
        ("unknown escape", bytes(#""\x41""#), .badEscape, 1),
        ("short unicode escape", bytes(#""\u12""#), .badEscape, 1),
        ("lone high surrogate escape", bytes(#""\ud800""#), .unpairedSurrogate, 1),
        ("high surrogate followed by a letter", bytes(#""\ud800x""#), .unpairedSurrogate, 1),
        ("two high surrogates", bytes(#""\ud800\ud800""#), .unpairedSurrogate, 1),
        ("lone low surrogate escape", bytes(#""\udc00""#), .unpairedSurrogate, 1),
        ("overlong slash C0 AF", [0x22, 0xC0, 0xAF, 0x22], .invalidUTF8, 1),
        ("overlong NUL C1 80", [0x22, 0xC1, 0x80, 0x22], .invalidUTF8, 1),
        ("overlong three-byte E0 80 AF", [0x22, 0xE0, 0x80, 0xAF, 0x22], .invalidUTF8, 1),
        ("overlong four-byte F0 80 80 AF", [0x22, 0xF0, 0x80, 0x80, 0xAF, 0x22], .invalidUTF8, 1),
        ("surrogate D800 encoded in UTF-8", [0x22, 0xED, 0xA0, 0x80, 0x22], .invalidUTF8, 1),
        ("surrogate DFFF encoded in UTF-8", [0x22, 0xED, 0xBF, 0xBF, 0x22], .invalidUTF8, 1),
        ("code point above U+10FFFF", [0x22, 0xF4, 0x90, 0x80, 0x80, 0x22], .invalidUTF8, 1),
        ("byte F5", [0x22, 0xF5, 0x80, 0x80, 0x80, 0x22], .invalidUTF8, 1),
        ("byte FF", [0x22, 0xFF, 0x22], .invalidUTF8, 1),
        ("stray continuation byte", [0x22, 0x80, 0x22], .invalidUTF8, 1),
        ("truncated two-byte sequence", [0x22, 0xC3, 0x22], .invalidUTF8, 1),
        ("truncated four-byte sequence at the end", [0x22, 0xF0, 0x9F, 0x98], .invalidUTF8, 1),
        ("invalid UTF-8 in a key", [0x7B, 0x22, 0xC0, 0x80, 0x22, 0x3A, 0x31, 0x7D], .invalidUTF8, 2),
        ("invalid byte outside a string", [0x5B, 0xC3, 0xA9, 0x5D], .unexpectedByte, 1),
        ("nesting one past the limit", bytes(String(repeating: "[", count: 17) + String(repeating: "]", count: 17)), .tooDeep, 16),
        ("objects nested past the limit", bytes(String(repeating: #"{"a":"#, count: 17) + "1" + String(repeating: "}", count: 17)), .tooDeep, 80),
    ]

    @Test("hostile or malformed documents are refused with the reason and byte offset", arguments: refused)
    func refuses(_ name: String, _ input: [UInt8], _ reason: Reason, _ offset: Int) {
        #expect(throws: StrictJSON.Failure.self, "\(name)") { try StrictJSON.parse(input, limits: limits) }
        do {
            _ = try StrictJSON.parse(input, limits: limits)
        } catch {
            #expect(error.reason == reason, "\(name): \(error)")
            #expect(error.offset == offset, "\(name): \(error)")
        }
    }

    @Test("a document larger than maxBytes is refused before it is parsed")
    func sizeLimit() {
        let doc = bytes("[" + String(repeating: "1,", count: 100) + "1]")
        #expect(throws: StrictJSON.Failure(offset: 64, reason: .tooLarge, detail: "document is \(doc.count) bytes, more than the limit of 64")) {
            try StrictJSON.parse(doc, limits: StrictJSON.Limits(maxBytes: 64, maxDepth: 4))
        }
        #expect((try? StrictJSON.parse(doc, limits: StrictJSON.Limits(maxBytes: doc.count, maxDepth: 4))) != nil)
    }

    @Test("a nesting bomb of a million brackets fails fast on depth without exhausting the stack")
    func nestingBomb() {
        let bomb = [UInt8](repeating: UInt8(ascii: "["), count: 1_000_000)
        #expect(throws: StrictJSON.Failure.self) {
            try StrictJSON.parse(bomb, limits: StrictJSON.Limits(maxBytes: 2_000_000, maxDepth: 32))
        }
        // With a limit as large as the bomb, the iterative parser still answers (unexpected end), not crashes.
        do {
            _ = try StrictJSON.parse(bomb, limits: StrictJSON.Limits(maxBytes: 2_000_000, maxDepth: 2_000_000))
            Issue.record("an unterminated bomb parsed")
        } catch {
            #expect(error.reason == .unexpectedEnd)
        }
    }

    @Test("every strict-JSON string the writer produces parses back to the same value")
    func roundTrip() throws {
        let value: JSONValue = .object([
            "controls": .string("\u{0}\u{1}\u{1F}\u{7F}\u{85}\u{2028}"),
            "quotes": .string("\"\\/"),
            "astral": .string("😀𝄞"),
            "numbers": .array([.number("0"), .number("-1.5e-7")]),
        ])
        #expect(try StrictJSON.parse(Array(value.serialized().utf8), limits: limits) == value)
        #expect(try StrictJSON.parse(Array(value.serialized(pretty: true).utf8), limits: limits) == value)
    }
}
