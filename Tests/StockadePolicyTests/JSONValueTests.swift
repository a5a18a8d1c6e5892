import Testing
@testable import StockadePolicy

@Suite("JSONValue accessors")
struct JSONValueTests {
    @Test("an exact integer is read only from a literal without fraction or exponent")
    func exactIntegers() {
        #expect(JSONValue.number("42").exactInt64 == 42)
        #expect(JSONValue.number("4.2").exactInt64 == nil)
        #expect(JSONValue.number("1e3").exactInt64 == nil)
        #expect(JSONValue.string("42").exactInt64 == nil)
    }

    @Test("a fractional number reads as a Double")
    func doubles() {
        #expect(JSONValue.number("0.5").double == 0.5)
        #expect(JSONValue.bool(true).double == nil)
    }
}
