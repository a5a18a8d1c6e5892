import StockadePolicy

/// The one public error of StockadeLinux: what failed (`code`), the setup
/// `stage` it failed in, the errno when a syscall failed, and a message that
/// says what is missing and how to enable it.
public struct LinuxError: Error, Sendable, Equatable, CustomStringConvertible {
    public struct Code: RawRepresentable, Hashable, Sendable {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }

        /// The sandbox could not be built; nothing ran.
        public static let setup = Code(rawValue: "setup")
        /// The worker's program could not be executed.
        public static let exec = Code(rawValue: "exec")
        /// The seccomp policy could not be compiled.
        public static let seccomp = Code(rawValue: "seccomp")
    }

    public let code: Code
    public let stage: SetupStage
    public let errno: Int32
    public let message: String
    /// A worker had been started and was killed because of this failure (the supervisor audits the kill).
    public let killedWorker: Bool

    public init(_ code: Code, stage: SetupStage, errno: Int32 = 0, _ message: String, killedWorker: Bool = false) {
        self.code = code
        self.stage = stage
        self.errno = errno
        self.message = message
        self.killedWorker = killedWorker
    }

    public var description: String {
        errno == 0 ? "\(stage.rawValue): \(message)" : "\(stage.rawValue): \(message) (errno \(errno))"
    }
}

extension LinuxError {
    /// Why a path resolved when it was checked (a volume's source, the workspace, a `--rootfs`
    /// directory) failed with `ELOOP` when it was opened again without following links.
    static let linkSwappedIn = "a symbolic link is on its path now, and there was none when it was checked: it was replaced since "
        + "(perhaps by another run writing there)"
}
