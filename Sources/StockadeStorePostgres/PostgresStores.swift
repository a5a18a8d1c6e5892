import StockadeAudit
import StockadeAuditPostgres
import StockadeStore
import StockadeTokens

/// StoreOpener's PostgreSQL side (PostgresNIO and SwiftNIO): linked by `stockade-server` only, which
/// registers it first thing; the one-shot `stockade` hands a PostgreSQL store's commands to it.
public struct PostgresStores: PostgresStoreSupport {
    /// Registers the PostgreSQL support with StoreOpener for this process.
    public static func register() {
        StoreOpener.register(PostgresStores())
    }

    public func openAudit(_ url: PostgresStoreURL, readOnly: Bool, environment: [String: String], supervisorPid: Int32,
                          supervisorStart: UInt64, maxConnections: Int) throws(AuditError) -> any AuditStore {
        let backend = try PostgresAuditBackend(url: url, environment: environment, maxConnections: maxConnections, migrate: !readOnly)
        return AuditLedger(backend: backend, supervisorPid: supervisorPid, supervisorStart: supervisorStart, hostId: try HostIdentity.current())
    }

    public func openTokens(_ url: StoreURL, audit: any AuditStore) throws(TokenError) -> TokenStore {
        guard let ledger = audit as? AuditLedger<PostgresAuditBackend> else {
            throw TokenError("the audit store for \(url) is not a PostgreSQL ledger (\(type(of: audit))): open both from the same URL")
        }
        return TokenStore(backend: try PostgresTokenBackend(ledger.backend))
    }

    public func exportTrail(_ url: PostgresStoreURL, environment: [String: String], _ write: (String) throws -> Void) throws -> AuditTransferSummary {
        // Read-only: nothing is migrated; a store whose schema is not current is refused.
        let backend = try PostgresAuditBackend(url: url, environment: environment, maxConnections: 1, migrate: false)
        return try AuditLedger(backend: backend, supervisorPid: 0, supervisorStart: 0, hostId: "").exportTrail(write)
    }

    public func importTrail(_ url: PostgresStoreURL, environment: [String: String], supervisorPid: Int32, supervisorStart: UInt64,
                            source: String, _ nextLine: () throws(AuditError) -> [UInt8]?) throws(AuditError) -> AuditTransferSummary {
        try PostgresAuditStore(url: url, environment: environment, supervisorPid: supervisorPid, supervisorStart: supervisorStart,
                               hostId: "", maxConnections: 1).importTrail(source: source, nextLine)
    }
}
