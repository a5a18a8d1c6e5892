/// The values made for the last few distinct keys, most recently used first: the small caches of work
/// done once per profile (a seccomp policy, its compiled program, a worker root's split and skeleton),
/// which a batch under one or two profiles hits every run. Searched linearly: it holds a handful.
///
/// Not thread-safe on its own; the caches keep it in a `Mutex`.
public struct RecentlyUsed<Key: Equatable, Value> {
    public let capacity: Int
    /// Most recently used first.
    public private(set) var entries: [(key: Key, value: Value)] = []

    public init(capacity: Int) {
        precondition(capacity > 0, "a cache holds at least one value")
        self.capacity = capacity
    }

    public var count: Int { entries.count }

    /// The value kept for `key`, which becomes the most recently used.
    public mutating func value(for key: Key) -> Value? {
        guard let index = entries.firstIndex(where: { $0.key == key }) else { return nil }
        if index != 0 { entries.insert(entries.remove(at: index), at: 0) }
        return entries[0].value
    }

    /// The value kept for `key`, leaving the order as it is.
    public func peek(_ key: Key) -> Value? {
        entries.first { $0.key == key }?.value
    }

    /// Keeps `value` for `key` as the most recently used. Returns what it pushed out, for a caller
    /// whose values hold resources: the value `key` had before, or else the least recently used
    /// entry when the cache was full.
    @discardableResult
    public mutating func insert(_ key: Key, _ value: Value) -> (key: Key, value: Value)? {
        var pushedOut: (key: Key, value: Value)?
        if let index = entries.firstIndex(where: { $0.key == key }) {
            pushedOut = entries.remove(at: index)
        }
        entries.insert((key, value), at: 0)
        if entries.count > capacity { pushedOut = entries.removeLast() }
        return pushedOut
    }
}

extension RecentlyUsed: Sendable where Key: Sendable, Value: Sendable {}
