/// A JSON object's members read by key, for a document decoded by hand rather than through
/// `Codable`: each accessor fails naming the member's path (`violations[1].count`) and what it must be.
///
/// `JSONDecoder` reaches each nested type through the runtime's generic metadata and protocol
/// conformance lookups, each a scan of every conformance record of the binary on its first use: a
/// one-shot client that decodes one report pays milliseconds for them. Reading the strict parser's
/// `JSONValue` by hand costs none of that. Lenient in the way `Codable` is: a key not asked for is
/// ignored, and an optional member may be missing or `null`.
public struct JSONMembers: Sendable {
    public struct Invalid: Error, Sendable, Equatable, CustomStringConvertible {
        /// The member's path from the document's root; empty for the root itself.
        public let path: String
        public let reason: String
        public var description: String { path.isEmpty ? reason : "\(path): \(reason)" }
    }

    public let members: [String: JSONValue]
    /// This object's own path from the root ("" for the root).
    public let path: String

    public init(_ value: JSONValue, path: String = "") throws(Invalid) {
        guard case .object(let members) = value else {
            throw Invalid(path: path, reason: "must be an object, found \(value.typeName)")
        }
        self.members = members
        self.path = path
    }

    /// The path of the member `key`.
    public func path(_ key: String) -> String {
        path.isEmpty ? key : "\(path).\(key)"
    }

    private func invalid(_ key: String, _ reason: String) -> Invalid {
        Invalid(path: path(key), reason: reason)
    }

    /// The member, nil when it is missing or `null`.
    private func present(_ key: String) -> JSONValue? {
        guard let value = members[key], value != .null else { return nil }
        return value
    }

    private func required(_ key: String) throws(Invalid) -> JSONValue {
        guard let value = members[key] else { throw invalid(key, "is missing") }
        return value
    }

    public func string(_ key: String) throws(Invalid) -> String {
        let value = try required(key)
        guard case .string(let text) = value else { throw invalid(key, "must be a string, found \(value.typeName)") }
        return text
    }

    public func optionalString(_ key: String) throws(Invalid) -> String? {
        guard present(key) != nil else { return nil }
        return try string(key)
    }

    public func bool(_ key: String) throws(Invalid) -> Bool {
        let value = try required(key)
        guard case .bool(let flag) = value else { throw invalid(key, "must be true or false, found \(value.typeName)") }
        return flag
    }

    /// An exact integer within `range` (no fraction, no exponent).
    public func int64(_ key: String, in range: ClosedRange<Int64> = Int64.min...Int64.max) throws(Invalid) -> Int64 {
        let value = try required(key)
        guard case .number(let text) = value else { throw invalid(key, "must be an integer, found \(value.typeName)") }
        guard let number = Int64(text), range.contains(number) else {
            throw invalid(key, "must be an integer from \(range.lowerBound) to \(range.upperBound), found \(text)")
        }
        return number
    }

    public func optionalInt64(_ key: String, in range: ClosedRange<Int64> = Int64.min...Int64.max) throws(Invalid) -> Int64? {
        guard present(key) != nil else { return nil }
        return try int64(key, in: range)
    }

    public func int32(_ key: String) throws(Invalid) -> Int32 {
        Int32(try int64(key, in: Int64(Int32.min)...Int64(Int32.max)))
    }

    public func optionalInt32(_ key: String) throws(Invalid) -> Int32? {
        guard present(key) != nil else { return nil }
        return try int32(key)
    }

    public func int(_ key: String) throws(Invalid) -> Int {
        Int(try int64(key, in: Int64(Int.min)...Int64(Int.max)))
    }

    public func optionalInt(_ key: String) throws(Invalid) -> Int? {
        guard present(key) != nil else { return nil }
        return try int(key)
    }

    /// A string member that must be one of `T`'s raw values.
    public func value<T: RawRepresentable & CaseIterable>(_ key: String, as type: T.Type) throws(Invalid) -> T where T.RawValue == String {
        let text = try string(key)
        guard let value = T(rawValue: text) else {
            throw invalid(key, "must be one of \(T.allCases.map(\.rawValue).joined(separator: ", ")), found \"\(text)\"")
        }
        return value
    }

    public func object(_ key: String) throws(Invalid) -> JSONMembers {
        try JSONMembers(try required(key), path: path(key))
    }

    public func optionalObject(_ key: String) throws(Invalid) -> JSONMembers? {
        guard let value = present(key) else { return nil }
        return try JSONMembers(value, path: path(key))
    }

    /// Each element of an array member read as an object, with its index in its path.
    public func objects<T>(_ key: String, _ read: (JSONMembers) throws(Invalid) -> T) throws(Invalid) -> [T] {
        let value = try required(key)
        guard case .array(let items) = value else { throw invalid(key, "must be an array, found \(value.typeName)") }
        var out: [T] = []
        out.reserveCapacity(items.count)
        for (index, item) in items.enumerated() {
            out.append(try read(try JSONMembers(item, path: "\(path(key))[\(index)]")))
        }
        return out
    }
}
