import Testing
import StockadePolicy

/// The writer's output feeds the audit chain's hashes and profile digests: the
/// byte-level writer must produce exactly what the scalar-by-scalar definition does.
@Suite("JSON writer")
struct JSONWriterTests {
    /// The definition: every scalar as is, except quotes, backslashes, C0 and C1
    /// controls, DEL and U+2028/U+2029.
    static func reference(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F || (0x80...0x9F).contains(scalar.value)
                || scalar.value == 0x2028 || scalar.value == 0x2029:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    @Test("fixed cases: controls, C1, line and paragraph separators, non-ASCII kept")
    func fixedCases() {
        let cases = ["", "plain", "a\"b\\c", "\n\r\t\u{0}\u{1F}\u{7F}", "\u{80}\u{9F}\u{A0}é", "x\u{2028}y\u{2029}z\u{2027}\u{202A}",
                     "🦀 emoji and 日本語", "\u{85}tail", "end\\"]
        for s in cases {
            #expect(JSONValue.string(s).serialized() == Self.reference(s), "\(Array(s.unicodeScalars))")
        }
    }

    @Test("random strings over the interesting scalars serialise as the definition says")
    func randomStrings() {
        let alphabet: [Unicode.Scalar] = ["a", "Z", "0", " ", "\"", "\\", "/", "\n", "\r", "\t", "\u{0}", "\u{1B}", "\u{7F}",
                                          "\u{80}", "\u{9F}", "\u{A0}", "\u{FF}", "\u{2027}", "\u{2028}", "\u{2029}", "\u{202F}",
                                          "\u{FFFD}", "\u{1F600}", "é", "ß"]
        var rng = SplitMix(seed: 0x5EED)
        for _ in 0..<2000 {
            var s = ""
            for _ in 0..<Int(rng.next() % 24) { s.unicodeScalars.append(alphabet[Int(rng.next() % UInt64(alphabet.count))]) }
            #expect(JSONValue.string(s).serialized() == Self.reference(s))
            var viaString = ""
            JSONValue.quote(s, into: &viaString)
            #expect(viaString == Self.reference(s))
        }
    }

    @Test("objects sort their keys, escape them, and indent when pretty")
    func objects() {
        let value: JSONValue = .object(["b\n": .array([.number("1"), .null, .bool(true)]), "a": .object([:]), "c": .array([])])
        #expect(value.serialized() == #"{"a":{},"b\n":[1,null,true],"c":[]}"#)
        #expect(value.serialized(pretty: true) == "{\n  \"a\": {},\n  \"b\\n\": [\n    1,\n    null,\n    true\n  ],\n  \"c\": []\n}")
    }
}

private struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
