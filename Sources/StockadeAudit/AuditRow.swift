/// One row of any table of the trail, as `AuditBackend.allRows` streams them for an export.
public enum AuditRow: Sendable, Equatable {
    case run(AuditRunRecord)
    case bundle(AuditBundleRecord)
    case diff(DiffRecord)
    case event(AuditEvent)
}

/// One row of `bundles`, with its id.
public struct AuditBundleRecord: Sendable, Equatable {
    public let id: Int64
    public let runId: String
    /// request | result
    public let role: String
    /// accepted | rejected
    public let status: String
    public let reason: String?
    public let files: Int64
    public let bytes: Int64
    public let manifestSha256: String?
    public let createdAt: String

    public init(id: Int64, runId: String, role: String, status: String, reason: String?, files: Int64, bytes: Int64,
                manifestSha256: String?, createdAt: String) {
        self.id = id
        self.runId = runId
        self.role = role
        self.status = status
        self.reason = reason
        self.files = files
        self.bytes = bytes
        self.manifestSha256 = manifestSha256
        self.createdAt = createdAt
    }
}

/// How many rows each table of the trail holds.
public struct AuditRowCounts: Sendable, Equatable {
    public var runs: Int64
    public var bundles: Int64
    public var diffs: Int64
    public var events: Int64

    public init(runs: Int64 = 0, bundles: Int64 = 0, diffs: Int64 = 0, events: Int64 = 0) {
        self.runs = runs
        self.bundles = bundles
        self.diffs = diffs
        self.events = events
    }

    public var isEmpty: Bool { runs == 0 && bundles == 0 && diffs == 0 && events == 0 }
}
