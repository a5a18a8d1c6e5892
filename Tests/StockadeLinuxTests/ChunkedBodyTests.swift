import StockadeLinux
import Testing

@Suite("ChunkedBody: where a chunked request body ends, from hostile bytes")
struct ChunkedBodyTests {
    /// The outcome of `text` read at once, and read a byte at a time (where the end is then the
    /// index of the byte that ended it, plus one).
    static func ends(_ text: String) -> (once: ChunkedBody.Outcome, bytewise: ChunkedBody.Outcome) {
        let bytes = Array(text.utf8)
        var whole = ChunkedBody()
        let once = whole.scan(bytes[...])
        var single = ChunkedBody()
        var bytewise = ChunkedBody.Outcome.more
        for i in bytes.indices {
            switch single.scan(bytes[i...i]) {
            case .more: continue
            case .ended(let n): bytewise = .ended(i + n)
            case .malformed(let n, let reason): bytewise = .malformed(i + n, reason)
            }
            break
        }
        return (once, bytewise)
    }

    @Test("bodies that end: sizes in either case, leading zeros, extensions, trailers; the bytes after the end are not the body's")
    func valid() {
        let after = "GET http://evil.test/ HTTP/1.1\r\n\r\n"
        for body in ["0\r\n\r\n", "5\r\nhello\r\n0\r\n\r\n", "5;name=value\r\nhello\r\n0\r\n\r\n", "5 \t;x\r\nhello\r\n000;y=\"q\"\r\n\r\n",
                     "A\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n", "0005\r\nhello\r\n0\r\n\r\n",
                     "3\r\na\r\n\r\n0\r\nX-Trailer: a value\r\nother:\r\n\r\n", "1\r\n0\r\n0\r\n\r\n"] {
            let (once, bytewise) = Self.ends(body + after)
            #expect(once == .ended(body.utf8.count), "\(body.debugDescription): \(once)")
            #expect(bytewise == .ended(body.utf8.count), "\(body.debugDescription): \(bytewise)")
        }
        // Unfinished: every byte is the body's so far.
        for body in ["5\r\nhel", "5\r\nhello\r\n", "0\r\nX-T: v\r\n", "5;ext", "ff\r\n"] {
            #expect(Self.ends(body).once == .more, "\(body.debugDescription)")
        }
        // Once ended, the next bytes are none of the body's.
        var scanner = ChunkedBody()
        #expect(scanner.scan(Array("0\r\n\r\n".utf8)[...]) == .ended(5) && scanner.ended)
        #expect(scanner.scan(Array("more".utf8)[...]) == .ended(0))
    }

    @Test("what an upstream could read another way is malformed at the first such byte, at once or a byte at a time")
    func malformed() {
        let cases: [(String, Int)] = [
            ("\r\n", 0), ("g\r\n", 0), (" 5\r\nhello\r\n0\r\n\r\n", 0), ("-5\r\n", 0), ("0x5\r\n", 1), ("+5\r\n", 0),
            ("5\nhello\r\n0\r\n\r\n", 1), ("5\r\rhello", 2), ("5 5\r\nhello", 2), ("5\t\r\nhello\r\n0\r\n\r\n", 2),
            ("5\r\nhelloX\r\n0\r\n\r\n", 8), ("5\r\nhello\rX", 9), ("5\r\nhello\n0\r\n\r\n", 8),
            ("1000000000000000\r\n", 15), ("0\r\nbad\r\n\r\n", 6), ("0\r\n: v\r\n\r\n", 3), ("0\r\nX-T: v\n\r\n", 9),
            ("0\r\nX T: v\r\n\r\n", 4), ("0\r\n\r\r", 4), ("5;a\u{7}\r\n", 3), ("0\r\nX-T: a\u{0}b\r\n\r\n", 9),
        ]
        for (body, at) in cases {
            let (once, bytewise) = Self.ends(body)
            guard case .malformed(let n, _) = once, case .malformed(let m, _) = bytewise else {
                Issue.record("\(body.debugDescription) not malformed: \(once), \(bytewise)")
                continue
            }
            #expect(n == at && m == at, "\(body.debugDescription): at \(n) and \(m), expected \(at)")
        }
        // `5\t\r\n`: a blank after the size may only come before an extension (in the list above, at 2);
        // the same with the extension is a body.
        let withExtension = "5\t;e\r\nhello\r\n0\r\n\r\n"
        #expect(Self.ends(withExtension).once == .ended(withExtension.utf8.count))
        // After a malformed byte nothing more is the body's.
        var scanner = ChunkedBody()
        guard case .malformed = scanner.scan(Array("zz".utf8)[...]) else { Issue.record("zz accepted"); return }
        guard case .malformed(0, _) = scanner.scan(Array("0\r\n\r\n".utf8)[...]) else { Issue.record("accepted after a malformed byte"); return }
    }

    @Test("bounds: a size line over 8 KiB and trailers over 16 KiB are malformed; 15 significant digits are not, 16 are")
    func bounds() {
        let longExtension = "5;" + String(repeating: "x", count: ProxyRequest.maxLine) + "\r\n"
        guard case .malformed(let at, _) = Self.ends(longExtension).once else { Issue.record("a size line over maxLine accepted"); return }
        #expect(at == ProxyRequest.maxLine)
        let trailers = "0\r\n" + String(repeating: "X-Long: " + String(repeating: "v", count: 1000) + "\r\n", count: 17) + "\r\n"
        guard case .malformed = Self.ends(trailers).once else { Issue.record("trailers over maxHead accepted"); return }
        let fitting = "0\r\n" + String(repeating: "X-Long: " + String(repeating: "v", count: 1000) + "\r\n", count: 15) + "\r\n"
        #expect(Self.ends(fitting).once == .ended(fitting.utf8.count))
        #expect(Self.ends("00000fffffffffffffff\r\n").once == .more)
        guard case .malformed = Self.ends("1fffffffffffffff\r\n").once else { Issue.record("16 significant digits accepted"); return }
    }

    @Test("the data read, re-chunked: minimal lowercase sizes, no extension or trailer, the end only once the body ended")
    func encoded() {
        var scanner = ChunkedBody()
        var data: [UInt8] = []
        let body = "000A;x=\"y\"\r\n0123456789\r\n2\r\nab\r\n0\r\nT: v\r\n\r\n"
        #expect(scanner.scan(Array((body + "next").utf8)[...], data: &data) == .ended(body.utf8.count))
        #expect(String(decoding: data, as: UTF8.self) == "0123456789ab")
        #expect(String(decoding: ChunkedBody.encode(data[...], last: true), as: UTF8.self) == "c\r\n0123456789ab\r\n0\r\n\r\n")
        #expect(String(decoding: ChunkedBody.encode(data[...], last: false), as: UTF8.self) == "c\r\n0123456789ab\r\n")
        #expect(ChunkedBody.encode([][...], last: false).isEmpty)
        #expect(String(decoding: ChunkedBody.encode([][...], last: true), as: UTF8.self) == "0\r\n\r\n")
        let large = [UInt8](repeating: 65, count: 65504)
        let framed = ChunkedBody.encode(large[...], last: true)
        #expect(framed.count == large.count + 13 && framed.prefix(6) == Array("ffe0\r\n".utf8)[...] && framed.suffix(7) == Array("\r\n0\r\n\r\n".utf8)[...])
    }

    @Test("a generated body split at every place ends at the same byte")
    func splitAnywhere() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<50 {
            var body = ""
            for _ in 0..<Int.random(in: 0...4, using: &generator) {
                let size = Int.random(in: 1...40, using: &generator)
                body += String(size, radix: 16, uppercase: Bool.random(using: &generator))
                if Bool.random(using: &generator) { body += ";k=v" }
                body += "\r\n" + String(repeating: "d", count: size) + "\r\n"
            }
            body += "0\r\n" + (Bool.random(using: &generator) ? "T: x\r\n" : "") + "\r\n"
            let bytes = Array((body + "POST /next HTTP/1.1\r\n\r\n").utf8)
            var whole = ChunkedBody()
            var expected: [UInt8] = []
            _ = whole.scan(bytes[...], data: &expected)
            for cut in 0...bytes.count {
                var scanner = ChunkedBody()
                var end: Int?
                var data: [UInt8] = []
                switch scanner.scan(bytes[..<cut], data: &data) {
                case .more:
                    if case .ended(let n) = scanner.scan(bytes[cut...], data: &data) { end = cut + n }
                case .ended(let n): end = n
                case .malformed(let n, let reason): Issue.record("\(body.debugDescription) cut at \(cut): malformed at \(n): \(reason)")
                }
                #expect(end == body.utf8.count, "\(body.debugDescription) cut at \(cut): \(String(describing: end))")
                #expect(data == expected, "\(body.debugDescription) cut at \(cut)")
            }
        }
    }
}
