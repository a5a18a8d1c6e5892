import StockadePolicy
import Testing

@Suite("sizes and durations written the docker way")
struct QuantityTextTests {
    static let sizes: [(String, Int64?)] = [
        ("65536", 65536), ("0", 0), ("512k", 512 << 10), ("512K", 512 << 10), ("64m", 64 << 20), ("64mb", 64 << 20),
        ("64MB", 64 << 20), ("64MiB", 64 << 20), ("64mib", 64 << 20), ("1g", 1 << 30), ("1.5g", 3 << 29), ("1.5G", 3 << 29),
        ("0.5k", 512), ("2t", 2 << 40), ("100b", 100), ("100B", 100),
        ("", nil), ("-1", nil), ("-64m", nil), ("1.5", nil), ("m", nil), ("64x", nil), ("64 m", nil), (" 64m", nil),
        ("64mm", nil), ("1e3", nil), ("1.", nil), (".5g", nil), ("1.2.3g", nil), ("64ib", nil), ("64kbb", nil),
        ("99999999999g", nil), ("9223372036854775807k", nil), ("nan", nil), ("0x10", nil),
    ]

    @Test("sizes parse by the table: binary units, any case, with b or ib, fractions with a unit", arguments: sizes)
    func size(text: String, bytes: Int64?) {
        #expect(ByteSize.parse(text) == bytes, "\(text)")
    }

    @Test("a formatted size reads back to the same bytes", arguments: [Int64(0), 100, 1024, 1536 << 10, 64 << 20, 3 << 30])
    func formatRoundTrips(bytes: Int64) {
        #expect(ByteSize.parse(ByteSize.format(bytes)) == bytes)
    }

    static let durations: [(String, Double?)] = [
        ("10", 10), ("10s", 10), ("1.5s", 1.5), ("5m", 300), ("1h", 3600), ("7d", 604_800), ("0", 0),
        ("", nil), ("-1", nil), ("-5s", nil), ("10ms", nil), ("5x", nil), ("5 m", nil), ("1e3", nil), ("1.", nil),
        (".5", nil), ("5S", nil), ("inf", nil),
    ]

    @Test("durations parse by the table: seconds or a unit s, m, h, d", arguments: durations)
    func duration(text: String, seconds: Double?) {
        #expect(DurationText.parse(text) == seconds, "\(text)")
    }
}
