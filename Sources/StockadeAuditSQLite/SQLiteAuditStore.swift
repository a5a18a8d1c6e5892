import StockadeAudit

/// The audit ledger over one local SQLite file: what a supervisor and the CLI open.
public typealias SQLiteAuditStore = AuditLedger<SQLiteAuditBackend>

extension AuditLedger where Backend == SQLiteAuditBackend {
    /// Opens or creates the database at `path` and brings its schema up to date.
    /// `supervisorPid` and `supervisorStart` (the process start time, see `ProcessIdentity`) and
    /// `hostId` (default: `HostIdentity.current()`) are stored on each run this store begins, so a
    /// later supervisor on this host can tell whether its owner is still alive.
    /// `checkpointPages`: see `SQLiteAuditBackend.init(path:checkpointPages:)`.
    public convenience init(path: String, supervisorPid: Int32, supervisorStart: UInt64, hostId: String? = nil,
                            checkpointPages: Int32 = SQLiteAuditBackend.defaultCheckpointPages) throws(AuditError) {
        let backend = try SQLiteAuditBackend(path: path, checkpointPages: checkpointPages)
        let host: String
        if let hostId { host = hostId } else { host = try HostIdentity.current() }
        self.init(backend: backend, supervisorPid: supervisorPid, supervisorStart: supervisorStart, hostId: host)
    }

    /// Opens an existing database for queries only (see `SQLiteAuditBackend.init(readingAt:)`).
    public convenience init(readingAt path: String) throws(AuditError) {
        self.init(backend: try SQLiteAuditBackend(readingAt: path), supervisorPid: 0, supervisorStart: 0, hostId: "")
    }

    public var path: String { backend.path }

    /// How long a writer waits for another process's write lock before failing with `.busy`.
    public static var busyTimeoutMilliseconds: Int32 { SQLiteAuditBackend.busyTimeoutMilliseconds }

    /// The value of a pragma on the shared connection (for tests of the connection's settings).
    func pragma(_ name: String) throws(AuditError) -> String? {
        try backend.pragma(name)
    }
}
