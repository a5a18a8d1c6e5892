import Glibc
import StockadePolicy

/// The per-run values a caller writes (`stockade run`'s flags and batch lines alike), checked
/// once: each error names the field (`--memory`, `memory`) and says what it must be.
public enum RunValues {
    public struct Invalid: Error, Sendable, CustomStringConvertible {
        public let description: String
        public init(description: String) {
            self.description = description
        }
    }

    /// The host's online CPUs: a limit above it would promise what the host cannot give.
    public static var hostCPUCount: Int { max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN))) }

    public static func memory(_ text: String, field: String) throws(Invalid) -> Int64 {
        if text.hasPrefix("-") { throw Invalid(description: "\(field): must not be negative, found \(text)") }
        guard let bytes = ByteSize.parse(text) else {
            throw Invalid(description: "\(field): must be a size: \(ByteSize.forms); found \(text)")
        }
        return try memory(bytes, field: field, text: text)
    }

    public static func memory(_ bytes: Int64, field: String, text: String? = nil) throws(Invalid) -> Int64 {
        let minimum = Profile.Limits.minimumMemoryBytes
        guard bytes >= minimum else {
            throw Invalid(description: "\(field): must be at least \(ByteSize.format(minimum)) (\(minimum >> 20) MiB), the least a worker can start with; found \(text ?? String(bytes))")
        }
        guard bytes <= 1 << 40 else { throw Invalid(description: "\(field): must be at most 1t, found \(text ?? String(bytes))") }
        return bytes
    }

    public static func cpus(_ value: Double, field: String) throws(Invalid) -> Double {
        guard value.isFinite, value >= 0.01 else {
            throw Invalid(description: "\(field): must be a number of CPUs of at least 0.01, found \(value)")
        }
        let host = hostCPUCount
        guard value <= Double(host) else {
            throw Invalid(description: "\(field): must be at most \(host), this host's CPU count; found \(value)")
        }
        return value
    }

    public static func pids(_ value: Int64, field: String) throws(Invalid) -> Int {
        guard (1...65536).contains(value) else { throw Invalid(description: "\(field): must be a whole number from 1 to 65536, found \(value)") }
        return Int(value)
    }

    public static func timeout(_ text: String, field: String) throws(Invalid) -> Double {
        if text.hasPrefix("-") { throw Invalid(description: "\(field): must not be negative, found \(text)") }
        guard let seconds = DurationText.parse(text) else {
            throw Invalid(description: "\(field): must be a duration: \(DurationText.forms); found \(text)")
        }
        return try timeout(seconds, field: field, text: text)
    }

    public static func timeout(_ seconds: Double, field: String, text: String? = nil) throws(Invalid) -> Double {
        guard seconds > 0, seconds <= 86_400 else {
            throw Invalid(description: "\(field): must be more than 0 and at most 24h (86400 seconds), found \(text ?? String(seconds))")
        }
        return seconds
    }

    public static func publish(_ text: String, field: String) throws(Invalid) -> Profile.PortMapping {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy { $0.isASCII && $0.isNumber } }) else {
            throw Invalid(description: "\(field): must be HOSTPORT:WORKERPORT, found \(text)")
        }
        guard let mapping = ProfileDecoder.parsePublish(text) else {
            throw Invalid(description: "\(field): ports must be from 1 to 65535, found \(text)")
        }
        return mapping
    }

    /// `--network none` with `--publish` is a contradiction, never a silent loopback.
    public static func network(_ mode: Profile.NetworkMode?, publishing: Bool, fields: (String, String)) throws(Invalid) {
        if mode == Profile.NetworkMode.none && publishing {
            throw Invalid(description: "\(fields.0) none: cannot publish ports (\(fields.1)) from a worker without a network: use \(fields.0) loopback or drop \(fields.1)")
        }
    }

    /// `--allow-host NAME[:PORT]` (and a batch line's `allowHosts[i]`): one egress allow rule.
    public static func allowHost(_ text: String, field: String) throws(Invalid) -> EgressRule {
        guard let rule = EgressRule.parse(text) else {
            throw Invalid(description: "\(field): must be NAME[:PORT], *.SUFFIX[:PORT] or an IP address (IPv6 in brackets), found \(text)")
        }
        return rule
    }

    /// Allow rules are for the egress proxy: with another network mode they would be silently unused.
    public static func allowHosts(_ mode: Profile.NetworkMode?, count: Int, fields: (String, String)) throws(Invalid) {
        if count > 0, let mode, mode != .proxy {
            throw Invalid(description: "\(fields.1) needs \(fields.0) proxy, not \(mode.rawValue)")
        }
    }

    /// `--label k=v`: a key of 1-128 printable characters without `=`, a value of at most 1024.
    public static func label(_ text: String, field: String) throws(Invalid) -> (String, String) {
        guard let eq = text.firstIndex(of: "=") else { throw Invalid(description: "\(field): must be KEY=VALUE, found \(text)") }
        let key = String(text[..<eq]), value = String(text[text.index(after: eq)...])
        try label(key: key, value: value, field: field)
        return (key, value)
    }

    public static func label(key: String, value: String, field: String) throws(Invalid) {
        guard !key.isEmpty, key.utf8.count <= 128, key.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value != 0x7F }) else {
            throw Invalid(description: "\(field): a label key must be 1-128 characters without spaces or control characters, found \(key)")
        }
        guard value.utf8.count <= 1024, !value.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
            throw Invalid(description: "\(field): a label value must be at most 1024 bytes without control characters")
        }
    }

    /// `--name`: what a person calls the run; 1-128 characters, no control characters.
    public static func name(_ text: String, field: String) throws(Invalid) -> String {
        guard !text.isEmpty, text.utf8.count <= 128, !text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) else {
            throw Invalid(description: "\(field): must be 1-128 characters without control characters, found \(text)")
        }
        return text
    }
}
