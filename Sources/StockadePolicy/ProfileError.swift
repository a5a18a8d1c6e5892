/// One problem in a profile: the field path (`volumes[2].source`) and the reason.
public struct ProfileIssue: Sendable, Equatable, CustomStringConvertible {
    public let field: String
    public let reason: String

    public init(_ field: String, _ reason: String) {
        self.field = field
        self.reason = reason
    }

    public var description: String { field.isEmpty ? reason : "\(field): \(reason)" }
}

/// A profile that cannot be used, with every problem found (not only the first).
public struct ProfileError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The profile's file, when it came from one.
    public let source: String?
    public let issues: [ProfileIssue]

    public init(source: String?, issues: [ProfileIssue]) {
        self.source = source
        self.issues = issues
    }

    public var description: String {
        let head = source.map { "\($0): " } ?? ""
        return issues.map { head + $0.description }.joined(separator: "\n")
    }
}
