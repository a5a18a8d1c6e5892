import Glibc
import StockadeAudit

/// The audit ledger over a PostgreSQL database that many hosts share.
public typealias PostgresAuditStore = AuditLedger<PostgresAuditBackend>

extension AuditLedger where Backend == PostgresAuditBackend {
    /// Connects to the store at `url`, brings its schema up to date, and records runs begun here as
    /// `supervisorPid`/`supervisorStart` on `hostId` (default: `HostIdentity.current()`). The password
    /// comes from `environment` when the URL has none (see `PostgresStoreURL.resolvingPassword`).
    public convenience init(url: PostgresStoreURL, environment: [String: String], supervisorPid: Int32, supervisorStart: UInt64,
                            hostId: String? = nil, maxConnections: Int = PostgresAuditBackend.defaultMaxConnections) throws(AuditError) {
        let backend = try PostgresAuditBackend(url: url, environment: environment, maxConnections: maxConnections)
        let host: String
        if let hostId { host = hostId } else { host = try HostIdentity.current() }
        self.init(backend: backend, supervisorPid: supervisorPid, supervisorStart: supervisorStart, hostId: host)
    }
}
