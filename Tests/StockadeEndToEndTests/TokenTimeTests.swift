import Testing
@testable import StockadeCLI

@Suite("token list's times")
struct TokenTimeTests {
    @Test("seconds since the epoch print as RFC 3339 UTC to the second")
    func iso() {
        #expect(TokenCommand.iso(0) == "1970-01-01T00:00:00Z")
        #expect(TokenCommand.iso(1_796_403_661) == "2026-12-04T17:01:01Z")
        #expect(TokenCommand.iso(951_782_400) == "2000-02-29T00:00:00Z")
    }
}
