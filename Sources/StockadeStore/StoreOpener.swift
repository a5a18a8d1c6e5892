import StockadeAudit
import StockadeAuditSQLite
import StockadeTokens
import Synchronization

/// Turns a store URL into the stores a command works with: the audit ledger and the token table,
/// on the state directory's SQLite file (the embedded default) or on a PostgreSQL database many
/// hosts share (`--store URL` / `$STOCKADE_STORE`, docs/CONTRACT.md "Stores").
public enum StoreOpener {
    public static let environmentVariable = "STOCKADE_STORE"
    /// Connections to a PostgreSQL store each process may hold at once, by default.
    public static let defaultConnections = PostgresStoreURL.defaultConnections
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
            return try postgresSupport(postgres.description).openAudit(postgres, readOnly: readOnly, environment: environment, supervisorPid: supervisorPid,
                                                                        supervisorStart: supervisorStart, maxConnections: maxConnections)
        }
    }

    private static let registered = Mutex<(any PostgresStoreSupport)?>(nil)

    /// Makes PostgreSQL stores openable in this process: called first by a binary that links the
    /// PostgreSQL client (`stockade-server`, through StockadeStorePostgres).
    public static func register(_ support: any PostgresStoreSupport) {
        registered.withLock { $0 = support }
    }

    /// Whether this process can open a PostgreSQL store (a support is registered).
    public static var hasPostgresSupport: Bool { registered.withLock { $0 != nil } }

    /// The registered PostgreSQL support, or an error naming the store and where its commands run.
    public static func postgresSupport(_ store: String) throws(AuditError) -> any PostgresStoreSupport {
        guard let support = registered.withLock({ $0 }) else {
            throw AuditError(.invalidArgument, path: store,
                             "this binary has no PostgreSQL client: a PostgreSQL store's commands run in stockade-server (stockade hands a command to it when --store or $STOCKADE_STORE names such a store); run them through stockade, or as stockade-server cli COMMAND")
        }
        return support
    }

    /// The token table of the store `audit` was opened on (`openAudit`), sharing its connections.
    public static func openTokens(_ url: StoreURL, audit: any AuditStore) throws(TokenError) -> TokenStore {
        switch url {
        case .sqlite(let path):
            return TokenStore(backend: try SQLiteTokenBackend(path: path))
        case .postgres(let postgres):
            let support: any PostgresStoreSupport
            do throws(AuditError) { support = try postgresSupport(postgres.description) } catch { throw TokenError(error.description) }
            return try support.openTokens(url, audit: audit)
        }
    }
}

/// The PostgreSQL side of `StoreOpener`, in a target of its own (StockadeStorePostgres) so that a
/// binary without the PostgreSQL client (the one-shot `stockade`) links none of it.
public protocol PostgresStoreSupport: Sendable {
    func openAudit(_ url: PostgresStoreURL, readOnly: Bool, environment: [String: String], supervisorPid: Int32,
                   supervisorStart: UInt64, maxConnections: Int) throws(AuditError) -> any AuditStore
    /// The token table of `audit`, a ledger this support opened on `url`, sharing its connections.
    func openTokens(_ url: StoreURL, audit: any AuditStore) throws(TokenError) -> TokenStore
    /// `stockade audit export`: the whole trail, read only (nothing migrated).
    func exportTrail(_ url: PostgresStoreURL, environment: [String: String], _ write: (String) throws -> Void) throws -> AuditTransferSummary
    /// `stockade audit import`: into an empty store, migrated first.
    func importTrail(_ url: PostgresStoreURL, environment: [String: String], supervisorPid: Int32, supervisorStart: UInt64,
                     source: String, _ nextLine: () throws(AuditError) -> [UInt8]?) throws(AuditError) -> AuditTransferSummary
}
