import Crypto
import Testing
@testable import StockadeAudit
@testable import StockadeAuditSQLite
import StockadePolicy

/// The chain's hash input and the timestamp text are part of what `stockade audit verify` recomputes:
/// pinned here against independent definitions.
@Suite("audit hash input and timestamps")
struct AuditFormatTests {
    @Test("an event hash is SHA-256 of the seven fields joined by newlines")
    func hashDefinition() {
        let cases: [(String, Int64, String?, Int64, String, String, String)] = [
            (AuditChain.genesisHash, 1, "01RUN", 1, "run.created", "2025-11-24T16:00:00.007Z", #"{"a":1}"#),
            (String(repeating: "f", count: 64), 9_000_000_000, nil, 42, "limit.hit", "1970-01-01T00:00:00.000Z", "é\n🦀"),
        ]
        for (prev, seq, run, runSeq, kind, at, detail) in cases {
            let joined = "\(prev)\n\(seq)\n\(run ?? "")\n\(runSeq)\n\(kind)\n\(at)\n\(detail)"
            let expected = SHA256.hash(data: Array(joined.utf8)).map { byte in
                let digits = Array("0123456789abcdef")
                return String([digits[Int(byte >> 4)], digits[Int(byte & 0xF)]])
            }.joined()
            #expect(AuditChain.hash(prevHash: prev, seq: seq, runId: run, runSeq: runSeq, kind: kind, at: at, detail: detail) == expected)
        }
    }

    @Test("timestamps are UTC, millisecond, fixed width")
    func timestamps() {
        #expect(AuditClock.format(seconds: 0, milliseconds: 0) == "1970-01-01T00:00:00.000Z")
        #expect(AuditClock.format(seconds: 1_764_000_000, milliseconds: 7) == "2025-11-24T16:00:00.007Z")
        #expect(AuditClock.format(seconds: 253_402_300_799, milliseconds: 999) == "9999-12-31T23:59:59.999Z")
        #expect(AuditClock.now().utf8.count == 24)
    }

    @Test("a detail with nothing to cut or redact is stored as given; one with a secret or a long string is not")
    func sanitizerFastPath() {
        var sanitizer = DetailSanitizer()
        sanitizer.addSecrets(["hunter2"])
        let plain: JSONValue = .object(["k": .array([.string("v"), .number("1"), .null])])
        #expect(sanitizer.sanitize(plain) == plain)
        let secret: JSONValue = .object(["k": .array([.string("pw=hunter2")])])
        #expect(sanitizer.sanitize(secret) == .object(["k": .array([.string("pw=[redacted]")])]))
        let keyed: JSONValue = .object(["hunter2": .null])
        #expect(sanitizer.sanitize(keyed) == .object(["[redacted]": .null]))
        let long = String(repeating: "x", count: DetailSanitizer.maxStringBytes + 10)
        #expect(sanitizer.sanitize(.string(long)) != .string(long))
    }
}
