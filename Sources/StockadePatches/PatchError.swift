/// The one public error of this module: what failed (`code`), where (`path` or entry, when there is one),
/// the errno when a syscall failed, and a message that says what to do about it.
public struct PatchError: Error, Sendable, Equatable, CustomStringConvertible {
    public struct Code: RawRepresentable, Hashable, Sendable {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
    }

    public let code: Code
    public let path: String?
    public let errno: Int32?
    public let message: String
    /// The hunk that did not apply, as `hunk N (@@ -a,b +c,d @@)`, for a `doesNotApply` inside a file.
    public let hunk: String?

    public init(_ code: Code, path: String? = nil, errno: Int32? = nil, hunk: String? = nil, _ message: String) {
        self.code = code
        self.path = path
        self.errno = errno
        self.hunk = hunk
        self.message = message
    }

    public var description: String {
        var text = path.map { "\($0): \(message)" } ?? message
        if let errno { text += " (errno \(errno))" }
        return text
    }
}

extension PatchError.Code {
    /// The diff text is malformed or uses a construct this parser does not accept.
    public static let malformed = Self(rawValue: "malformed")
    /// The diff exceeds a ``DiffLimits`` bound.
    public static let tooLarge = Self(rawValue: "too_large")
    /// The path guard rejected a name or mode; `path` is the offending name.
    public static let rejected = Self(rawValue: "rejected")
    /// The workspace does not match the diff's old side (a hunk's context or a file's presence).
    public static let doesNotApply = Self(rawValue: "does_not_apply")
    /// A filesystem call failed while reading or writing the workspace.
    public static let io = Self(rawValue: "io")
}
