import Glibc

/// Timestamps for audit rows: RFC 3339, UTC, millisecond precision (`2026-11-25T13:19:26.123Z`),
/// fixed width so that text order is time order.
package enum AuditClock {
    package static func now() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return format(seconds: ts.tv_sec, milliseconds: Int(ts.tv_nsec / 1_000_000))
    }

    package static func format(seconds: Int, milliseconds: Int) -> String {
        var t = time_t(seconds)
        var parts = tm()
        gmtime_r(&t, &parts)
        // yyyy-mm-ddThh:mm:ss.mmmZ, written digit by digit: every event carries one.
        var out = [UInt8](repeating: 0, count: 24)
        func put(_ value: Int, _ width: Int, at offset: Int) {
            var v = max(value, 0)
            for i in stride(from: offset + width - 1, through: offset, by: -1) {
                out[i] = UInt8(48 + v % 10)
                v /= 10
            }
        }
        put(Int(parts.tm_year) + 1900, 4, at: 0)
        out[4] = UInt8(ascii: "-")
        put(Int(parts.tm_mon) + 1, 2, at: 5)
        out[7] = UInt8(ascii: "-")
        put(Int(parts.tm_mday), 2, at: 8)
        out[10] = UInt8(ascii: "T")
        put(Int(parts.tm_hour), 2, at: 11)
        out[13] = UInt8(ascii: ":")
        put(Int(parts.tm_min), 2, at: 14)
        out[16] = UInt8(ascii: ":")
        put(Int(parts.tm_sec), 2, at: 17)
        out[19] = UInt8(ascii: ".")
        put(milliseconds, 3, at: 20)
        out[23] = UInt8(ascii: "Z")
        return String(decoding: out, as: UTF8.self)
    }
}
