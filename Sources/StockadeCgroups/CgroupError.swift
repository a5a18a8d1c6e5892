/// The one public error of this module: what failed (`code`), where (`path` or entry, when there is one),
/// the errno when a syscall failed, and a message that says what to do about it.
public struct CgroupError: Error, Sendable, Equatable, CustomStringConvertible {
    public struct Code: RawRepresentable, Hashable, Sendable {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }

        /// A controller the run needs (memory, pids, cpu, cpuacct on v1, freezer on v1) is not available:
        /// the run must not start without it.
        public static let missingController = Code(rawValue: "missing-controller")
        /// No usable cgroup filesystem is mounted, or `/proc/self/mountinfo` could not be read.
        public static let noCgroupFilesystem = Code(rawValue: "no-cgroup-filesystem")
        /// The limits cannot be expressed (zero, negative or non-finite values).
        public static let invalidLimits = Code(rawValue: "invalid-limits")
        /// A run cgroup name that is not one plain path component.
        public static let invalidName = Code(rawValue: "invalid-name")
        /// A run cgroup of that name already exists.
        public static let exists = Code(rawValue: "exists")
        /// A cgroupfs file or directory could not be created, written, opened or removed.
        public static let fileSystem = Code(rawValue: "file-system")
        /// Processes were still in the run cgroup after every kill round.
        public static let killFailed = Code(rawValue: "kill-failed")
    }

    public let code: Code
    public let path: String?
    public let errno: Int32?
    public let message: String

    public init(_ code: Code, path: String? = nil, errno: Int32? = nil, _ message: String) {
        self.code = code
        self.path = path
        self.errno = errno
        self.message = message
    }

    public var description: String {
        var text = path.map { "\($0): \(message)" } ?? message
        if let errno { text += " (errno \(errno))" }
        return text
    }
}
