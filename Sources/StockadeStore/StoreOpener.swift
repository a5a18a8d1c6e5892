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
        let url: StoreURL
        do throws(AuditError) {
            url = try StoreURL.parse(text)
        } catch {
            throw AuditError(error.code, "\(origin) \(error.description)")
        }
        if flag != nil { try refuseCommandLinePassword(url) }
        return url
    }

    /// A password in `--store`'s URL is refused: a command line is readable by every local user
    /// (`/proc/PID/cmdline`, `ps`), and the store's password is worth root on every node of it.
    public static func refuseCommandLinePassword(_ url: StoreURL) throws(AuditError) {
        guard case .postgres(let postgres) = url, postgres.password != nil else { return }
        throw AuditError(.invalidArgument,
                         "--store \(url): a password on the command line is readable by every user of this host (/proc/PID/cmdline): put it in passwordFile=FILE (mode 0600), $STOCKADE_STORE_PASSWORD_FILE or $PGPASSWORD, or pass the whole URL in $STOCKADE_STORE")
    }

    public static func defaultPath(stateDirectory: String) -> String {
        stateDirectory + "/audit.sqlite"
    }

    /// The audit ledger at `url`. Writable: created and migrated if needed, runs begun through it are
    /// recorded as this process on this host. `readOnly`: an existing, migrated store for queries;
    /// nothing is created or migrated. `shortLived`: the process runs one worker and exits, so a
    /// SQLite store keeps its WAL short for the next process's start
    /// (`SQLiteAuditBackend.shortLivedCheckpointPages`).
    public static func openAudit(_ url: StoreURL, readOnly: Bool, environment: [String: String], supervisorPid: Int32,
                                 supervisorStart: UInt64, maxConnections: Int = defaultConnections,
                                 shortLived: Bool = false) throws(AuditError) -> any AuditStore {
        switch url {
        case .sqlite(let path):
            if readOnly { return try SQLiteAuditStore(readingAt: path) }
            return try SQLiteAuditStore(path: path, supervisorPid: supervisorPid, supervisorStart: supervisorStart,
                                        checkpointPages: shortLived ? SQLiteAuditBackend.shortLivedCheckpointPages
                                                                    : SQLiteAuditBackend.defaultCheckpointPages)
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
