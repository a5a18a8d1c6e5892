/// A parsed JSON document, as produced by `StrictJSON.parse`.
///
/// Numbers keep their literal text so that callers decide how exact they must
/// be (a manifest size must be an exact non-negative integer; a profile's
/// `cpus` may be fractional).
public enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    /// The number's literal text as it appeared in the document, e.g. `"12"`, `"0.5"`, `"1e3"`.
    case number(String)
    case string(String)
    case array([JSONValue])
    /// Keys are unique: the strict parser rejects duplicates.
    case object([String: JSONValue])
}

extension JSONValue {
    /// The value as an exact integer, if its literal is one (no fraction, no exponent).
    public var exactInt64: Int64? {
        guard case .number(let text) = self else { return nil }
        return Int64(text)
    }

    /// The value as a Double, for quantities that may be fractional.
    public var double: Double? {
        guard case .number(let text) = self else { return nil }
        return Double(text)
    }

    public var string: String? {
        guard case .string(let s) = self else { return nil }
        return s
    }

    public var bool: Bool? {
        guard case .bool(let b) = self else { return nil }
        return b
    }

    public var array: [JSONValue]? {
        guard case .array(let a) = self else { return nil }
        return a
    }

    public var object: [String: JSONValue]? {
        guard case .object(let o) = self else { return nil }
        return o
    }

    /// A short name of the value's JSON type, for error messages.
    public var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "boolean"
        case .number: "number"
        case .string: "string"
        case .array: "array"
        case .object: "object"
        }
    }
}
