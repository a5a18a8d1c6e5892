import FoundationEssentials

// Interim parser until the strict one lands: decodes through JSONDecoder.
public enum StrictJSON {
    public struct Limits: Sendable {
        public var maxBytes: Int
        public var maxDepth: Int
        public init(maxBytes: Int, maxDepth: Int) {
            self.maxBytes = maxBytes
            self.maxDepth = maxDepth
        }
    }

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    public static func parse(_ bytes: [UInt8], limits: Limits) throws(Failure) -> JSONValue {
        guard bytes.count <= limits.maxBytes else { throw Failure(description: "document larger than \(limits.maxBytes) bytes") }
        do {
            return try JSONDecoder().decode(Node.self, from: Data(bytes)).value
        } catch {
            throw Failure(description: "\(error)")
        }
    }

    struct Node: Decodable {
        let value: JSONValue
        struct Key: CodingKey {
            var stringValue: String
            var intValue: Int? { nil }
            init(stringValue: String) { self.stringValue = stringValue }
            init?(intValue: Int) { nil }
        }
        init(from decoder: any Decoder) throws {
            if let c = try? decoder.container(keyedBy: Key.self) {
                var o: [String: JSONValue] = [:]
                for k in c.allKeys { o[k.stringValue] = try c.decode(Node.self, forKey: k).value }
                value = .object(o)
                return
            }
            if var c = try? decoder.unkeyedContainer() {
                var a: [JSONValue] = []
                while !c.isAtEnd { a.append(try c.decode(Node.self).value) }
                value = .array(a)
                return
            }
            let c = try decoder.singleValueContainer()
            if c.decodeNil() { value = .null }
            else if let b = try? c.decode(Bool.self) { value = .bool(b) }
            else if let i = try? c.decode(Int64.self) { value = .number(String(i)) }
            else if let d = try? c.decode(Double.self) { value = .number(String(d)) }
            else { value = .string(try c.decode(String.self)) }
        }
    }
}
