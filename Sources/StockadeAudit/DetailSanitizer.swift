import StockadePolicy

/// Makes worker-influenced values safe to store: strings (and object keys) longer than
/// `maxStringBytes` are cut at a character boundary and end with a marker saying how many bytes were
/// cut; every occurrence of a registered secret value is replaced by `[redacted]`.
package struct DetailSanitizer: Sendable {
    package static let maxStringBytes = 4096
    package static let redactedMarker = "[redacted]"

    /// Secret values, longest first, so a secret that contains another is replaced whole.
    package private(set) var secrets: [String] = []

    package init() {}

    package mutating func addSecrets(_ values: [String]) {
        let merged = Set(secrets).union(values.filter { !$0.isEmpty })
        secrets = merged.sorted { $0.utf8.count != $1.utf8.count ? $0.utf8.count > $1.utf8.count : $0 < $1 }
    }

    package func sanitize(_ value: JSONValue) -> JSONValue {
        // Most details hold nothing to cut or redact: return them as they are, without rebuilding.
        needsSanitizing(value) ? rebuilt(value) : value
    }

    private func needsSanitizing(_ value: JSONValue) -> Bool {
        switch value {
        case .null, .bool, .number: false
        case .string(let s): needsSanitizing(s)
        case .array(let items): items.contains { needsSanitizing($0) }
        case .object(let members): members.contains { needsSanitizing($0.key) || needsSanitizing($0.value) }
        }
    }

    private func needsSanitizing(_ text: String) -> Bool {
        text.utf8.count > Self.maxStringBytes || secrets.contains { text.contains($0) }
    }

    private func rebuilt(_ value: JSONValue) -> JSONValue {
        switch value {
        case .null, .bool, .number: value
        case .string(let s): .string(sanitize(s))
        case .array(let items): .array(items.map(sanitize))
        case .object(let members):
            // Two long keys may cap to the same text: keep the smaller value, so the result does not
            // depend on dictionary order.
            .object(Dictionary(members.map { (sanitize($0.key), sanitize($0.value)) },
                               uniquingKeysWith: { a, b in a.serialized() <= b.serialized() ? a : b }))
        }
    }

    package func sanitize(_ text: String) -> String {
        Self.cap(redact(text))
    }

    func redact(_ text: String) -> String {
        var text = text
        for secret in secrets where text.contains(secret) {
            text = text.replacing(secret, with: Self.redactedMarker)
        }
        return text
    }

    /// `text` cut to at most `maxStringBytes` UTF-8 bytes of its own (never inside a character),
    /// followed by a marker naming the number of bytes removed.
    package static func cap(_ text: String) -> String {
        let total = text.utf8.count
        guard total > maxStringBytes else { return text }
        var kept = 0
        var end = text.unicodeScalars.startIndex
        for index in text.unicodeScalars.indices {
            let width = UTF8.width(text.unicodeScalars[index])
            if kept + width > maxStringBytes { break }
            kept += width
            end = text.unicodeScalars.index(after: index)
        }
        let prefix = String(text.unicodeScalars[..<end])
        return prefix + "…[truncated \(total - kept) bytes]"
    }
}
