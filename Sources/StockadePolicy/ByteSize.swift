/// Byte quantities written the docker way: `65536`, `512k`, `64m`, `64mb`, `64MiB`, `1.5g`
/// (case-insensitive, binary units: k = KiB). One grammar for flags, batch lines and profiles.
public enum ByteSize {
    static let units: [String: Int64] = [
        "": 0, "b": 0,
        "k": 10, "kb": 10, "kib": 10,
        "m": 20, "mb": 20, "mib": 20,
        "g": 30, "gb": 30, "gib": 30,
        "t": 40, "tb": 40, "tib": 40,
    ]

    /// Parses a size; nil when the text is not a non-negative number (a fraction only with a
    /// unit, and only when it comes to whole bytes' worth: `1.5g`, not `1.5`) with an optional unit.
    public static func parse(_ text: String) -> Int64? {
        let lower = text.lowercased()
        let number = lower.prefix { $0 == "." || ($0.isASCII && $0.isNumber) }
        guard let shift = units[String(lower.dropFirst(number.count))] else { return nil }
        let parts = number.split(separator: ".", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), parts.allSatisfy({ !$0.isEmpty }),
              let whole = Int64(parts[0]) else { return nil }
        let (scaled, overflow) = whole.multipliedReportingOverflow(by: Int64(1) << shift)
        guard !overflow else { return nil }
        guard parts.count == 2 else { return scaled }
        // The fraction in exact integer arithmetic: at most 9 digits, times the unit.
        guard shift > 0, parts[1].count <= 9, let digits = Int64(parts[1]) else { return nil }
        var denominator: Int64 = 1
        for _ in 0..<parts[1].count { denominator *= 10 }
        let (fraction, fractionOverflow) = digits.multipliedReportingOverflow(by: Int64(1) << shift)
        guard !fractionOverflow else { return nil }
        let (total, totalOverflow) = scaled.addingReportingOverflow(fraction / denominator)
        return totalOverflow ? nil : total
    }

    /// A size as the shortest exact text `parse` reads back (`64m`, `1536k`, `100`).
    public static func format(_ bytes: Int64) -> String {
        for (suffix, shift) in [("g", 30), ("m", 20), ("k", 10)] where bytes != 0 && bytes % (Int64(1) << shift) == 0 {
            return "\(bytes >> shift)\(suffix)"
        }
        return String(bytes)
    }

    /// How sizes may be written, for messages.
    public static let forms = "bytes or a number with a unit k, m, g (binary; also kb, MiB ...), such as 512k, 64m, 1.5g"
}

/// Durations written the docker way: `10` (seconds), `10s`, `1.5s`, `5m`, `1h`, `7d`.
/// One grammar for `--timeout`, batch lines and `gc --older-than`.
public enum DurationText {
    static let units: [String: Double] = ["": 1, "s": 1, "m": 60, "h": 3600, "d": 86400]

    /// Seconds; nil when the text is not a non-negative decimal number with an optional unit s, m, h or d.
    public static func parse(_ text: String) -> Double? {
        let number = text.prefix { $0 == "." || ($0.isASCII && $0.isNumber) }
        guard let scale = units[String(text.dropFirst(number.count))] else { return nil }
        let parts = number.split(separator: ".", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), parts.allSatisfy({ !$0.isEmpty }),
              let value = Double(number), (value * scale).isFinite, value * scale < 1e12 else { return nil }
        return value * scale
    }

    /// How durations may be written, for messages.
    public static let forms = "seconds, or a number with a unit s, m, h or d, such as 10, 1.5s, 5m, 1h"
}
