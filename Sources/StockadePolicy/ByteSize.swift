/// Byte quantities written the docker way: `65536`, `64k`, `64m`, `1g` (binary units).
public enum ByteSize {
    /// Parses a size; nil when the text is not a non-negative integer with an optional k, m or g suffix.
    public static func parse(_ text: String) -> Int64? {
        var digits = Substring(text.lowercased())
        var shift: Int64 = 0
        switch digits.last {
        case "k": shift = 10
        case "m": shift = 20
        case "g": shift = 30
        default: break
        }
        if shift > 0 { digits = digits.dropLast() }
        if digits.hasSuffix("b") && shift == 0 { return nil }
        guard !digits.isEmpty, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber),
              let value = Int64(digits) else { return nil }
        let (result, overflow) = value.multipliedReportingOverflow(by: Int64(1) << shift)
        return overflow ? nil : result
    }

    /// A size as the shortest exact text `parse` reads back (`64m`, `1536k`, `100`).
    public static func format(_ bytes: Int64) -> String {
        for (suffix, shift) in [("g", 30), ("m", 20), ("k", 10)] where bytes != 0 && bytes % (Int64(1) << shift) == 0 {
            return "\(bytes >> shift)\(suffix)"
        }
        return String(bytes)
    }
}
