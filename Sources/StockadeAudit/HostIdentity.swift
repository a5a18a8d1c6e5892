import Glibc

/// The identity of the host a supervisor runs on, stored on every run it begins. Several hosts may
/// share one store; a pid and a process start time only mean something on the host that recorded them,
/// so a supervisor judges only its own host's runs when it looks for abandoned ones.
///
/// The id is `$STOCKADE_HOST_ID` when that is set and not empty, else the systemd machine id
/// (`/etc/machine-id`), else the hostname. It must stay the same across reboots and supervisor
/// restarts: a host whose id changed would leave its old runs to nobody.
public enum HostIdentity {
    public static let environmentVariable = "STOCKADE_HOST_ID"
    /// The longest id accepted, in UTF-8 bytes.
    public static let maxBytes = 255

    /// This host's id, from this process's environment, `/etc/machine-id` and the hostname.
    public static func current() throws(AuditError) -> String {
        try resolve(override: getenv(environmentVariable).map { String(cString: $0) },
                    machineIdPath: "/etc/machine-id", hostname: Self.hostname)
    }

    /// The id from an override (the environment variable's value), else the first line of the file at
    /// `machineIdPath`, else `hostname()`. An override that is not a usable id is refused rather than
    /// replaced, so a typo cannot silently merge two hosts' runs or split one host's.
    static func resolve(override: String?, machineIdPath: String, hostname: () -> String?) throws(AuditError) -> String {
        if let override, !override.isEmpty {
            guard isValid(override) else {
                throw AuditError(.hostIdentity,
                                 "\(environmentVariable) must be 1 to \(maxBytes) bytes without spaces or control characters; found \(override.debugDescription)")
            }
            return override
        }
        if let machineId = firstLine(of: machineIdPath), isValid(machineId) { return machineId }
        if let name = hostname(), isValid(name) { return name }
        throw AuditError(.hostIdentity, path: machineIdPath,
                         "cannot tell this host's identity: \(machineIdPath) is missing or empty and the hostname is unusable; set \(environmentVariable)")
    }

    static func isValid(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= maxBytes && !id.unicodeScalars.contains { $0.properties.isWhitespace || $0.value < 0x20 || $0.value == 0x7F }
    }

    private static func firstLine(of path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        // A machine id is 32 hex digits and a newline; anything much longer is not one.
        var buffer = [UInt8](repeating: 0, count: 512)
        var filled = 0
        while filled < buffer.count {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + filled, $0.count - filled) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { break }
            filled += n
        }
        let line = buffer[..<filled].prefix { $0 != UInt8(ascii: "\n") }
        return line.isEmpty ? nil : String(decoding: line, as: UTF8.self)
    }

    private static func hostname() -> String? {
        var buffer = [CChar](repeating: 0, count: 256)
        guard gethostname(&buffer, buffer.count - 1) == 0 else { return nil }
        return buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }
}
