import Glibc

/// A process named by its pid and its start time (field 22 of `/proc/PID/stat`, clock ticks since
/// boot), so that a recycled pid is not mistaken for the supervisor that began a run.
public enum ProcessIdentity {
    /// What `/proc/PID/stat` says of a pid.
    enum Lookup: Equatable {
        case started(UInt64)
        /// No such process (ENOENT or ESRCH).
        case none
        /// It could not be read or parsed (descriptors exhausted, a foreign /proc).
        case unknown
    }

    /// The start time of `pid`, or nil when there is no such process or it cannot be read.
    public static func startTime(of pid: Int32) -> UInt64? {
        if case .started(let time) = lookup(pid) { return time }
        return nil
    }

    static func lookup(_ pid: Int32) -> Lookup {
        let fd = open("/proc/\(pid)/stat", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return errno == ENOENT || errno == ESRCH ? .none : .unknown }
        defer { close(fd) }
        // The line is at most a few hundred bytes; comm is capped at 16 bytes by the kernel.
        var buffer = [UInt8](repeating: 0, count: 2048)
        var filled = 0
        while filled < buffer.count {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress.map { $0 + filled }, $0.count - filled) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { break }
            filled += n
        }
        let line = buffer[..<filled]
        // comm may hold spaces and parentheses: the fields after it start after the last ')'.
        guard let close = line.lastIndex(of: UInt8(ascii: ")")) else { return .unknown }
        let fields = line[(close + 1)...].split(separator: UInt8(ascii: " "))
        // fields[0] is field 3 (state); the start time is field 22.
        guard fields.count > 19, let time = UInt64(String(decoding: fields[19], as: UTF8.self)) else { return .unknown }
        return .started(time)
    }

    /// This process's own start time (0 if /proc is unreadable, which no supervisor host allows).
    public static var currentStartTime: UInt64 { startTime(of: getpid()) ?? 0 }

    /// Whether the process that had `pid` and started at `startTime` is still running.
    public static func isAlive(pid: Int32, startTime: UInt64) -> Bool {
        guard pid > 0, let current = Self.startTime(of: pid) else { return false }
        return current == startTime
    }

    /// Whether the process that had `pid` and started at `startTime` is certainly gone: no such pid,
    /// or the pid reused by a process that started at another time. A failure to look (descriptors
    /// exhausted, /proc unreadable) is not "gone": what such a process owns is kept.
    public static func isGone(pid: Int32, startTime: UInt64) -> Bool {
        guard pid > 0, startTime > 0 else { return false }
        switch lookup(pid) {
        case .none: return true
        case .started(let current): return current != startTime
        case .unknown: return false
        }
    }
}
