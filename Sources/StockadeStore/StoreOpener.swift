import StockadeAudit
import StockadeAuditPostgres
import StockadeAuditSQLite
import StockadeTokens

/// Turns a store URL into the stores a command works with: the audit ledger and the token table,
/// on the state directory's SQLite file (the embedded default) or on a PostgreSQL database many
/// hosts share (`--store URL` / `$STOCKADE_STORE`, docs/CONTRACT.md "Stores").
public enum StoreOpener {
    public static let environmentVariable = "STOCKADE_STORE"
    /// Connections to a PostgreSQL store each process may hold at once, by default.
    public static let defaultConnections = PostgresAuditBackend.defaultMaxConnections
    public static let connectionRange = 1...64

    /// The store a command uses: `flag` (`--store`), else `$STOCKADE_STORE` when set and not empty,
    /// else `<stateDirectory>/audit.sqlite`. A bad URL fails naming the flag or variable it came from.
    public static func resolve(flag: String?, environment: [String: String], stateDirectory: String) throws(AuditError) -> StoreURL {
        let (text, origin): (String?, String) = if let flag { (flag, "--store") } else { (environment[environmentVariable], "$" + environmentVariable) }
        guard let text, !text.isEmpty else { return .sqlite(path: defaultPath(stateDirectory: stateDirectory)) }
        do throws(AuditError) {
            return try StoreURL.parse(text)
        } catch {
            throw AuditError(error.code, "\(origin) \(error.description)")
        }
    }

    public static func defaultPath(stateDirectory: String) -> String {
        stateDirectory + "/audit.sqlite"
    }

    /// The audit ledger at `url`. Writable: created and migrated if needed, runs begun through it are
    /// recorded as this process on this host. `readOnly`: an existing, migrated store for queries;
    /// nothing is created or migrated.
    public static func openAudit(_ url: StoreURL, readOnly: Bool, environment: [String: String], supervisorPid: Int32,
                                 supervisorStart: UInt64, maxConnections: Int = defaultConnections) throws(AuditError) -> any AuditStore {
        switch url {
        case .sqlite(let path):
            if readOnly { return try SQLiteAuditStore(readingAt: path) }
            return try SQLiteAuditStore(path: path, supervisorPid: supervisorPid, supervisorStart: supervisorStart)
        case .postgres(let postgres):
            let backend = try PostgresAuditBackend(url: postgres, environment: environment, maxConnections: maxConnections, migrate: !readOnly)
            return AuditLedger(backend: backend, supervisorPid: supervisorPid, supervisorStart: supervisorStart, hostId: try HostIdentity.current())
        }
    }

    /// The token table of the store `audit` was opened on (`openAudit`), sharing its connections.
    public static func openTokens(_ url: StoreURL, audit: any AuditStore) throws(TokenError) -> TokenStore {
        switch url {
        case .sqlite(let path):
            return TokenStore(backend: try SQLiteTokenBackend(path: path))
        case .postgres:
            guard let ledger = audit as? AuditLedger<PostgresAuditBackend> else {
                throw TokenError("the audit store for \(url) is not a PostgreSQL ledger (\(type(of: audit))): open both from the same URL")
            }
            return TokenStore(backend: try PostgresTokenBackend(ledger.backend))
        }
    }
}
