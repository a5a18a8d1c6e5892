/// Replaces every occurrence of a secret value with `[REDACTED]`, in bytes,
/// text and JSON values, before anything the worker printed is stored,
/// shown or audited.
///
/// It matches leftmost-longest: at each position the longest secret that
/// occurs there is replaced. It stops accidental leaks (a tool echoing its
/// token); it cannot stop a worker that holds a secret from encoding it
/// (reversed, base64): a secret given to a worker is disclosed to it.
public struct Redactor: Sendable, Equatable {
    public static let marker: [UInt8] = Array("[REDACTED]".utf8)

    /// Distinct non-empty secrets as bytes, longest first.
    public let secrets: [[UInt8]]
    /// For each first byte, the indices (into `secrets`) of secrets starting with it.
    private let byFirstByte: [UInt8: [Int]]

    public init(secrets: [String]) {
        var unique: [[UInt8]] = []
        for secret in secrets {
            let bytes = Array(secret.utf8)
            if !bytes.isEmpty && !unique.contains(bytes) { unique.append(bytes) }
        }
        unique.sort { $0.count > $1.count }
        self.secrets = unique
        var index: [UInt8: [Int]] = [:]
        for (i, s) in unique.enumerated() { index[s[0], default: []].append(i) }
        byFirstByte = index
    }

    /// A redactor that changes nothing.
    public static let none = Redactor(secrets: [])

    public var isEmpty: Bool { secrets.isEmpty }

    /// The length of the longest secret, in bytes.
    public var longestSecret: Int { secrets.first?.count ?? 0 }

    public static func == (l: Redactor, r: Redactor) -> Bool { l.secrets == r.secrets }

    /// What starts at `i` in `bytes`: a whole secret (its length), a secret
    /// that may continue past the end (`partial`), or nothing. At the end of
    /// the stream (`final`) a secret cut off by the end cannot match.
    enum Match { case none, whole(Int), partial }

    func match(_ bytes: [UInt8], at i: Int, final: Bool) -> Match {
        guard let candidates = byFirstByte[bytes[i]] else { return .none }
        let available = bytes.endIndex - i
        // Longest first: a longer secret that might still match decides before a shorter one that does.
        for c in candidates {
            let secret = secrets[c]
            let n = min(secret.count, available)
            var equal = true
            var k = 0
            while k < n {
                if bytes[i + k] != secret[k] { equal = false; break }
                k += 1
            }
            guard equal else { continue }
            if n == secret.count { return .whole(n) }
            if !final { return .partial }
        }
        return .none
    }

    /// `bytes` with every secret replaced.
    public func redact(_ bytes: [UInt8]) -> [UInt8] {
        guard !secrets.isEmpty else { return bytes }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = 0
        while i < bytes.count {
            if case .whole(let n) = match(bytes, at: i, final: true) {
                out += Redactor.marker
                i += n
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return out
    }

    /// `text` with every secret replaced.
    public func redact(_ text: String) -> String {
        guard !secrets.isEmpty else { return text }
        return String(decoding: redact(Array(text.utf8)), as: UTF8.self)
    }

    /// Every string, object key and number literal of `value` with every secret replaced.
    public func redact(_ value: JSONValue) -> JSONValue {
        guard !secrets.isEmpty else { return value }
        switch value {
        case .null, .bool: return value
        case .number(let text):
            let clean = redact(text)
            return clean == text ? value : .string(clean)
        case .string(let text): return .string(redact(text))
        case .array(let items): return .array(items.map(redact))
        case .object(let members):
            var out: [String: JSONValue] = [:]
            for (key, item) in members {
                var k = redact(key)
                // Two keys that redact alike must not overwrite each other.
                while out[k] != nil { k += "'" }
                out[k] = redact(item)
            }
            return .object(out)
        }
    }
}

/// Redacts a stream that arrives in chunks, so that a secret split across
/// chunks (`"sec"` then `"ret"`) is still replaced: it holds back at most
/// `longestSecret - 1` bytes that may be the start of a secret until the next
/// chunk (or `finish`) decides. The output equals `redact` of the whole stream.
public struct StreamRedactor: Sendable {
    public let redactor: Redactor
    private var pending: [UInt8] = []

    public init(_ redactor: Redactor) {
        self.redactor = redactor
    }

    /// The bytes held back so far (at most the longest secret's length minus one).
    public var heldBack: Int { pending.count }

    /// Takes the next chunk; returns what can be emitted now.
    public mutating func feed(_ chunk: [UInt8]) -> [UInt8] {
        guard !redactor.isEmpty else { return chunk }
        let bytes = pending + chunk
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var i = 0
        while i < bytes.count {
            switch redactor.match(bytes, at: i, final: false) {
            case .whole(let n):
                out += Redactor.marker
                i += n
            case .partial:
                pending = Array(bytes[i...])
                return out
            case .none:
                out.append(bytes[i])
                i += 1
            }
        }
        pending = []
        return out
    }

    /// The end of the stream: what was held back, redacted.
    public mutating func finish() -> [UInt8] {
        defer { pending = [] }
        return redactor.redact(pending)
    }
}
