import Testing
@testable import StockadePolicy

@Suite("the small most-recently-used caches")
struct RecentlyUsedTests {
    @Test("a hit becomes the most recently used, so the least recently used is the one pushed out")
    func leastRecentlyUsedGoes() {
        var cache = RecentlyUsed<String, Int>(capacity: 3)
        #expect(cache.insert("a", 1) == nil)
        #expect(cache.insert("b", 2) == nil)
        #expect(cache.insert("c", 3) == nil)
        #expect(cache.value(for: "a") == 1)
        let out = cache.insert("d", 4)
        #expect(out?.key == "b" && out?.value == 2, "b was used least recently, not a")
        #expect(cache.entries.map(\.key) == ["d", "a", "c"])
        #expect(cache.value(for: "b") == nil)
        #expect(cache.count == 3)
    }

    @Test("peek leaves the order; a key inserted again replaces its value and hands back the old one")
    func peekAndReplace() {
        var cache = RecentlyUsed<String, Int>(capacity: 2)
        cache.insert("a", 1)
        cache.insert("b", 2)
        #expect(cache.peek("a") == 1)
        #expect(cache.entries.map(\.key) == ["b", "a"], "peek does not reorder")
        let old = cache.insert("a", 10)
        #expect(old?.key == "a" && old?.value == 1)
        #expect(cache.entries.map(\.key) == ["a", "b"] && cache.value(for: "a") == 10)
        #expect(cache.count == 2, "a replaced key takes no second place")
    }
}
