import Testing
@testable import StockadePolicy

@Suite("redacting secrets")
struct RedactorTests {
    let redactor = Redactor(secrets: ["hunter2-hunter2", "tok-123456", "tok-123456-long"])

    @Test("every occurrence is replaced, the longest secret first", arguments: [
        ("plain text", "plain text"),
        ("a hunter2-hunter2 b", "a [REDACTED] b"),
        ("hunter2-hunter2hunter2-hunter2", "[REDACTED][REDACTED]"),
        ("tok-123456-long and tok-123456", "[REDACTED] and [REDACTED]"),
        ("tok-123456-lon", "[REDACTED]-lon"),
        ("hunter2-hunter", "hunter2-hunter"),
        ("", ""),
    ])
    func text(input: String, expected: String) {
        #expect(redactor.redact(input) == expected)
        #expect(redactor.redact(Array(input.utf8)) == Array(expected.utf8))
    }

    @Test("JSON values are redacted in strings, keys and number literals")
    func json() {
        let numeric = Redactor(secrets: ["12345678"])
        let value = JSONValue.object(["k": .array([.string("x 12345678 y"), .number("1234567890"), .bool(true)]), "12345678": .null])
        #expect(numeric.redact(value) == .object([
            "k": .array([.string("x [REDACTED] y"), .string("[REDACTED]90"), .bool(true)]), "[REDACTED]": .null,
        ]))
    }

    @Test("a secret split across chunks is still replaced, and at most longest - 1 bytes are held back")
    func streaming() {
        var stream = StreamRedactor(redactor)
        var out: [UInt8] = []
        for chunk in ["say hun", "ter2-hu", "nter2 now tok-1", "23456", "-lo", "ng!", " tok-12"] {
            out += stream.feed(Array(chunk.utf8))
            #expect(stream.heldBack < redactor.longestSecret)
        }
        out += stream.finish()
        #expect(String(decoding: out, as: UTF8.self) == "say [REDACTED] now [REDACTED]! tok-12")
    }

    @Test("streaming in any chunking gives exactly what redacting the whole gives")
    func chunkingInvariant() {
        let text = Array("xxhunter2-hunter2tok-123456-longtok-123456-lontok-12hunter2-hunter2hunter2-hunterX".utf8)
        let whole = redactor.redact(text)
        for size in 1...text.count {
            var stream = StreamRedactor(redactor)
            var out: [UInt8] = []
            var i = 0
            while i < text.count {
                out += stream.feed(Array(text[i..<min(i + size, text.count)]))
                i += size
            }
            out += stream.finish()
            #expect(out == whole, "chunk size \(size)")
        }
    }

    @Test("without secrets nothing changes and nothing is held back")
    func empty() {
        var stream = StreamRedactor(.none)
        #expect(stream.feed(Array("abc".utf8)) == Array("abc".utf8))
        #expect(stream.finish().isEmpty)
        #expect(Redactor(secrets: ["", ""]).isEmpty)
    }
}
