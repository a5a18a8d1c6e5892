import CSQLite
import FoundationEssentials
import Glibc
import Synchronization

/// Tokens and idempotency keys in the state directory's audit database, tables `tokens` and
/// `idempotency_keys` (both created idempotently).
/// The tables are not recorded in `schema_migrations`: the audit store refuses a database holding a
/// migration it does not know, so recording it there needs a change in StockadeAudit.
public final class SQLiteTokenBackend: TokenBackend, @unchecked Sendable {
    public let path: String
    public var location: String { path }
    private let db: OpaquePointer
    /// Held around each statement on the shared connection.
    private let lock = Mutex(())

    /// Opens (creating mode 0600 if needed) `<stateDirectory>/audit.sqlite`; refuses a symlink.
    public convenience init(stateDirectory: String) throws(TokenError) {
        try self.init(path: stateDirectory + "/audit.sqlite")
    }

    /// Opens (creating mode 0600 if needed) the SQLite database at `path`; refuses a symlink.
    public init(path: String) throws(TokenError) {
        self.path = path
        // Never open and close a descriptor of an existing database here: closing any descriptor of
        // the file drops every POSIX lock this process holds on it, the audit store's included (a
        // later connection elsewhere would then take the WAL for unused and delete it).
        var st = stat()
        if lstat(path, &st) != 0 {
            // Created 0600 here (SQLite would make it 0644 minus umask); O_EXCL: nobody has it open.
            let fd = Glibc.open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
            guard fd >= 0 || errno == EEXIST else {
                throw TokenError("cannot create \(path): \(String(cString: strerror(errno))) (is the state directory there and writable by this user?)")
            }
            if fd >= 0 { close(fd) }
        } else if (st.st_mode & S_IFMT) != S_IFREG {
            throw TokenError("\(path) is not a regular file (a symlink is refused): remove it or use another --state-dir")
        }
        var handle: OpaquePointer?
        let rc = sqlite3_open_v2(path, &handle, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX | SQLITE_OPEN_NOFOLLOW, nil)
        guard rc == SQLITE_OK, let handle else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close_v2(handle)
            throw TokenError("cannot open \(path): \(message)")
        }
        db = handle
        sqlite3_busy_timeout(handle, 10_000)
        try execute("""
            CREATE TABLE IF NOT EXISTS tokens (
                name TEXT PRIMARY KEY NOT NULL,
                sha256 TEXT NOT NULL UNIQUE,
                scopes TEXT NOT NULL,
                createdBy TEXT NOT NULL,
                createdAt INTEGER NOT NULL,
                expiresAt INTEGER NOT NULL,
                revokedAt INTEGER
            );
            CREATE TABLE IF NOT EXISTS idempotency_keys (
                principal TEXT NOT NULL,
                key TEXT NOT NULL,
                bodySha256 TEXT NOT NULL,
                runId TEXT NOT NULL,
                createdAt INTEGER NOT NULL,
                PRIMARY KEY (principal, key)
            )
            """)
    }

    deinit { sqlite3_close_v2(db) }

    public func insertToken(name: String, sha256: String, scopes: String, createdBy: String, createdAt: Int64, expiresAt: Int64) throws(TokenError) -> Bool {
        let rc = try run("INSERT INTO tokens (name, sha256, scopes, createdBy, createdAt, expiresAt) VALUES (?, ?, ?, ?, ?, ?)",
                         [.text(name), .text(sha256), .text(scopes), .text(createdBy), .int(createdAt), .int(expiresAt)], allowConstraint: true)
        return rc != SQLITE_CONSTRAINT
    }

    public func revokeToken(name: String, at: Int64) throws(TokenError) -> Bool {
        try lock.withLock { (_) throws(TokenError) -> Bool in
            let statement = try prepare("UPDATE tokens SET revokedAt = ? WHERE name = ? AND revokedAt IS NULL", [.int(at), .text(name)])
            defer { sqlite3_finalize(statement) }
            guard sqlite3_step(statement) == SQLITE_DONE else { throw failure() }
            return sqlite3_changes(db) > 0
        }
    }

    public func tokenRows() throws(TokenError) -> [TokenRow] {
        try rows("ORDER BY createdAt, name", [])
    }

    public func tokenRow(sha256: String) throws(TokenError) -> TokenRow? {
        try rows("WHERE sha256 = ?", [.text(sha256)]).first
    }

    private func rows(_ clause: String, _ binds: [Value]) throws(TokenError) -> [TokenRow] {
        try lock.withLock { (_) throws(TokenError) -> [TokenRow] in
            let statement = try prepare("SELECT name, scopes, createdBy, createdAt, expiresAt, revokedAt, sha256 FROM tokens " + clause, binds)
            defer { sqlite3_finalize(statement) }
            var rows: [TokenRow] = []
            while true {
                let rc = sqlite3_step(statement)
                if rc == SQLITE_DONE { break }
                guard rc == SQLITE_ROW else { throw failure() }
                func text(_ i: Int32) -> String { sqlite3_column_text(statement, i).map { String(cString: $0) } ?? "" }
                let revoked = sqlite3_column_type(statement, 5) == SQLITE_NULL ? nil : sqlite3_column_int64(statement, 5)
                rows.append(TokenRow(record: TokenRecord(name: text(0), scopes: text(1).split(separator: ",").map(String.init),
                                                         createdBy: text(2), createdAt: sqlite3_column_int64(statement, 3),
                                                         expiresAt: sqlite3_column_int64(statement, 4), revokedAt: revoked),
                                     sha256: text(6)))
            }
            return rows
        }
    }

    public func reserveSubmission(principal: String, key: String, bodySha256: String, runId: String, createdAt: Int64,
                                  forgetBefore: Int64) throws(TokenError) -> (bodySha256: String, runId: String)? {
        // The primary key decides between writers: INSERT OR IGNORE keeps the first row, the read returns it.
        try run("DELETE FROM idempotency_keys WHERE createdAt <= ?", [.int(forgetBefore)])
        try run("INSERT OR IGNORE INTO idempotency_keys (principal, key, bodySha256, runId, createdAt) VALUES (?, ?, ?, ?, ?)",
                [.text(principal), .text(key), .text(bodySha256), .text(runId), .int(createdAt)])
        return try lock.withLock { (_) throws(TokenError) -> (bodySha256: String, runId: String)? in
            let statement = try prepare("SELECT bodySha256, runId FROM idempotency_keys WHERE principal = ? AND key = ?", [.text(principal), .text(key)])
            defer { sqlite3_finalize(statement) }
            let rc = sqlite3_step(statement)
            guard rc == SQLITE_ROW else {
                if rc == SQLITE_DONE { throw TokenError("token store \(path): the idempotency key just stored is gone (removed by hand?)") }
                throw failure()
            }
            func text(_ i: Int32) -> String { sqlite3_column_text(statement, i).map { String(cString: $0) } ?? "" }
            let stored = (bodySha256: text(0), runId: text(1))
            return stored.runId == runId ? nil : stored
        }
    }

    public func forgetSubmission(principal: String, key: String, runId: String) throws(TokenError) {
        try run("DELETE FROM idempotency_keys WHERE principal = ? AND key = ? AND runId = ?", [.text(principal), .text(key), .text(runId)])
    }

    // MARK: SQLite

    private enum Value {
        case int(Int64)
        case text(String)
    }

    private func failure() -> TokenError {
        TokenError("token store \(path): \(String(cString: sqlite3_errmsg(db)))")
    }

    private func execute(_ sql: String) throws(TokenError) {
        try lock.withLock { (_) throws(TokenError) -> Void in
            var message: UnsafeMutablePointer<CChar>?
            let rc = sqlite3_exec(db, sql, nil, nil, &message)
            if rc != SQLITE_OK {
                let text = message.map { String(cString: $0) } ?? String(cString: sqlite3_errstr(rc))
                sqlite3_free(message)
                throw TokenError("token store \(path): \(text)")
            }
        }
    }

    private func prepare(_ sql: String, _ values: [Value]) throws(TokenError) -> OpaquePointer {
        var statement: OpaquePointer?
        guard sqlite3_prepare_v2(db, sql, -1, &statement, nil) == SQLITE_OK, let statement else { throw failure() }
        let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)
        for (i, value) in values.enumerated() {
            switch value {
            case .int(let n): sqlite3_bind_int64(statement, Int32(i + 1), n)
            case .text(let s): sqlite3_bind_text(statement, Int32(i + 1), s, -1, transient)
            }
        }
        return statement
    }

    @discardableResult
    private func run(_ sql: String, _ values: [Value], allowConstraint: Bool = false) throws(TokenError) -> Int32 {
        try lock.withLock { (_) throws(TokenError) -> Int32 in
            let statement = try prepare(sql, values)
            defer { sqlite3_finalize(statement) }
            let rc = sqlite3_step(statement)
            if rc == SQLITE_DONE { return rc }
            if allowConstraint && (rc & 0xFF) == SQLITE_CONSTRAINT { return SQLITE_CONSTRAINT }
            throw failure()
        }
    }
}

