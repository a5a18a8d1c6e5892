/// The one public error of this module: what failed (`code`), where (`path` or entry, when there is one),
/// the errno when a syscall failed, and a message that says what to do about it.
public struct AuditError: Error, Sendable, Equatable, CustomStringConvertible {
    public struct Code: RawRepresentable, Hashable, Sendable {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
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
