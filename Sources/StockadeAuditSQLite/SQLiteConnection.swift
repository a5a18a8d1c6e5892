import CSQLite
import StockadeAudit
import Glibc

/// `SQLITE_TRANSIENT` is a C macro (`(sqlite3_destructor_type)-1`) that Swift cannot import: it tells
/// SQLite to copy a bound buffer before the bind call returns.
private let sqliteTransient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

/// One value bound to a statement parameter. Every string that reaches SQL goes through here, never
/// through string interpolation into SQL text.
enum SQLiteValue {
    case null
    case int(Int64)
    case text(String)
    case blob([UInt8])
}

extension Optional where Wrapped == String {
    var sqlite: SQLiteValue { map { .text($0) } ?? .null }
}

/// A thin owner of one `sqlite3` connection. Not thread-safe by itself (opened `NOMUTEX`): the store
/// keeps it inside a `Mutex`, and read-only streaming connections are private to one call.
/// `@unchecked Sendable` only so that it can sit in the store's `Mutex` state and be handed to the
/// closures that run under that lock; nothing uses it outside the lock.
final class SQLiteConnection: @unchecked Sendable {
    let path: String
    private let db: OpaquePointer
    /// Prepared statements reused across calls, keyed by their SQL text.
    private var cache: [String: SQLiteStatement] = [:]

    /// Opens (and, unless `readOnly`, creates mode 0600) the database at `path`. Refuses a symlink.
    init(path: String, readOnly: Bool) throws(AuditError) {
        self.path = path
        if !readOnly {
            // SQLite would create the file 0644 (minus umask); the trail is for the operator only.
            let fd = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
            if fd < 0 {
                let err = errno
                throw AuditError(.openFailed, path: path, errno: err,
                                 "cannot create or open the audit database (is the state directory writable, and is the path not a symlink?)")
            }
            close(fd)
        }
        var handle: OpaquePointer?
        let flags = (readOnly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE)
            | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_NOFOLLOW | SQLITE_OPEN_EXRESCODE
        let rc = sqlite3_open_v2(path, &handle, flags, nil)
        guard rc == SQLITE_OK, let handle else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close_v2(handle)
            throw AuditError(.openFailed, path: path, "cannot open the audit database: \(message) (SQLite code \(rc)); check the path and its permissions")
        }
        self.db = handle
        sqlite3_extended_result_codes(handle, 1)
    }

    deinit {
        cache.removeAll()
        sqlite3_close_v2(db)
    }

    /// Runs SQL without parameters (may hold several statements): pragmas, DDL, transaction control.
    func execute(_ sql: String, _ what: String) throws(AuditError) {
        var message: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(db, sql, nil, nil, &message)
        if rc != SQLITE_OK {
            let text = message.map { String(cString: $0) } ?? String(cString: sqlite3_errstr(rc))
            sqlite3_free(message)
            throw error(rc, what, detail: text)
        }
    }

    /// A prepared statement, cached on this connection; bound and reset by `withStatement`.
    func withStatement<T>(_ sql: String, _ params: [SQLiteValue], _ what: String,
                          _ body: (SQLiteStatement) throws(AuditError) -> T) throws(AuditError) -> T {
        let statement: SQLiteStatement
        if let cached = cache[sql] {
            statement = cached
        } else {
            statement = try prepare(sql, what, persistent: true)
            cache[sql] = statement
        }
        defer { statement.reset() }
        try statement.bind(params)
        return try body(statement)
    }

    /// Runs a statement that returns no rows.
    func run(_ sql: String, _ params: [SQLiteValue], _ what: String) throws(AuditError) {
        try withStatement(sql, params, what) { (s) throws(AuditError) in
            while try s.step() {}
        }
    }

    /// The first row of a query, decoded by `row`, or nil when there is none.
    func first<T>(_ sql: String, _ params: [SQLiteValue], _ what: String,
                  _ row: (SQLiteStatement) throws(AuditError) -> T) throws(AuditError) -> T? {
        try withStatement(sql, params, what) { (s) throws(AuditError) -> T? in
            try s.step() ? try row(s) : nil
        }
    }

    /// A statement owned by the caller (for streaming): finalized when released.
    func prepare(_ sql: String, _ what: String, persistent: Bool = false) throws(AuditError) -> SQLiteStatement {
        var handle: OpaquePointer?
        let rc = sqlite3_prepare_v3(db, sql, -1, persistent ? UInt32(SQLITE_PREPARE_PERSISTENT) : 0, &handle, nil)
        guard rc == SQLITE_OK, let handle else { throw error(rc, what) }
        return SQLiteStatement(handle: handle, db: db, path: path, what: what)
    }

    /// Runs `body` inside `BEGIN IMMEDIATE … COMMIT`: the write lock is taken first, so the reads the
    /// body makes (chain head, run sequence) cannot be invalidated by another writer before it commits.
    /// Both are cached statements: compiled once per connection, not at every transaction.
    func immediateTransaction<T>(_ body: () throws(AuditError) -> T) throws(AuditError) -> T {
        try run("BEGIN IMMEDIATE", [], "start a write transaction")
        do throws(AuditError) {
            let result = try body()
            try run("COMMIT", [], "commit the write transaction")
            return result
        } catch {
            if sqlite3_get_autocommit(db) == 0 { _ = sqlite3_exec(db, "ROLLBACK", nil, nil, nil) }
            throw error
        }
    }

    /// Runs `body` inside a read transaction: one consistent snapshot for a whole stream.
    func readTransaction<T>(_ body: () throws -> T) throws -> T {
        try execute("BEGIN", "start a read transaction")
        defer { if sqlite3_get_autocommit(db) == 0 { _ = sqlite3_exec(db, "ROLLBACK", nil, nil, nil) } }
        return try body()
    }

    func setBusyTimeout(milliseconds: Int32) {
        sqlite3_busy_timeout(db, milliseconds)
    }

    var changes: Int { Int(sqlite3_changes(db)) }
    var lastInsertRowID: Int64 { sqlite3_last_insert_rowid(db) }

    func error(_ rc: Int32, _ what: String, detail: String? = nil) -> AuditError {
        Self.error(db: db, path: path, rc, what, detail: detail)
    }

    /// The AuditError for a failed SQLite call, with a message that says what to do.
    static func error(db: OpaquePointer, path: String, _ rc: Int32, _ what: String, detail: String? = nil) -> AuditError {
        let text = detail ?? String(cString: sqlite3_errmsg(db))
        switch rc & 0xFF {
        case SQLITE_NOTADB, SQLITE_CORRUPT:
            return AuditError(.notADatabase, path: path,
                              "cannot \(what): the file is not an SQLite database or is corrupt (\(text)); move it aside (keep it for inspection: the trail it held cannot be trusted) and start again, or use another --state-dir")
        case SQLITE_BUSY, SQLITE_LOCKED:
            return AuditError(.busy, path: path,
                              "cannot \(what): the audit database stayed locked by another process for longer than the busy timeout (\(text)); retry, or find the process holding it")
        case SQLITE_READONLY, SQLITE_CANTOPEN, SQLITE_PERM, SQLITE_IOERR, SQLITE_FULL:
            return AuditError(.storage, path: path,
                              "cannot \(what): \(text) (SQLite code \(rc)); check that the state directory is writable, local and not full")
        case SQLITE_CONSTRAINT:
            return AuditError(.constraint, path: path, "cannot \(what): \(text)")
        default:
            return AuditError(.sqlite, path: path, "cannot \(what): \(text) (SQLite code \(rc))")
        }
    }
}

/// One prepared statement. Cached statements are reset by their connection after each use. It keeps
/// the raw `db` pointer only for error messages: `sqlite3_close_v2` keeps the handle alive until the
/// last statement is finalized, so a statement may outlive its `SQLiteConnection` object.
final class SQLiteStatement {
    private let handle: OpaquePointer
    private let db: OpaquePointer
    private let path: String
    private let what: String

    fileprivate init(handle: OpaquePointer, db: OpaquePointer, path: String, what: String) {
        self.handle = handle
        self.db = db
        self.path = path
        self.what = what
    }

    deinit { sqlite3_finalize(handle) }

    func reset() {
        sqlite3_reset(handle)
        sqlite3_clear_bindings(handle)
    }

    func bind(_ params: [SQLiteValue]) throws(AuditError) {
        for (offset, value) in params.enumerated() {
            let index = Int32(offset + 1)
            let rc: Int32
            switch value {
            case .null:
                rc = sqlite3_bind_null(handle, index)
            case .int(let v):
                rc = sqlite3_bind_int64(handle, index, v)
            case .text(var s):
                // Length-counted, so NUL and any other byte are stored as given.
                rc = s.withUTF8 { bytes in
                    // An empty buffer may have no base address, which SQLite would bind as NULL.
                    bytes.isEmpty ? sqlite3_bind_text(handle, index, "", 0, sqliteTransient)
                        : sqlite3_bind_text64(handle, index, UnsafeRawPointer(bytes.baseAddress)?.assumingMemoryBound(to: CChar.self),
                                              sqlite3_uint64(bytes.count), sqliteTransient, UInt8(SQLITE_UTF8))
                }
            case .blob(let bytes):
                rc = bytes.withUnsafeBytes { raw in
                    raw.isEmpty ? sqlite3_bind_zeroblob(handle, index, 0)
                        : sqlite3_bind_blob64(handle, index, raw.baseAddress, sqlite3_uint64(raw.count), sqliteTransient)
                }
            }
            if rc != SQLITE_OK { throw SQLiteConnection.error(db: db, path: path, rc, what) }
        }
    }

    /// Advances to the next row: true when there is one, false when done.
    func step() throws(AuditError) -> Bool {
        let rc = sqlite3_step(handle)
        switch rc {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        default: throw SQLiteConnection.error(db: db, path: path, rc, what)
        }
    }

    func isNull(_ column: Int32) -> Bool { sqlite3_column_type(handle, column) == SQLITE_NULL }

    func int64(_ column: Int32) -> Int64 { sqlite3_column_int64(handle, column) }

    func optionalInt64(_ column: Int32) -> Int64? { isNull(column) ? nil : int64(column) }

    /// The column as text (UTF-8, length-counted: embedded NULs survive); "" for NULL.
    func text(_ column: Int32) -> String {
        guard let base = sqlite3_column_text(handle, column) else { return "" }
        let count = Int(sqlite3_column_bytes(handle, column))
        return String(decoding: UnsafeBufferPointer(start: base, count: count), as: UTF8.self)
    }

    func optionalText(_ column: Int32) -> String? { isNull(column) ? nil : text(column) }

    func blob(_ column: Int32) -> [UInt8] {
        guard let base = sqlite3_column_blob(handle, column) else { return [] }
        let count = Int(sqlite3_column_bytes(handle, column))
        return Array(UnsafeRawBufferPointer(start: base, count: count))
    }
}

extension SQLiteConnection {
    /// Copies this connection's `main` database into `destination`'s with SQLite's online backup API,
    /// `pagesPerStep` pages at a time, as of the read transaction this connection holds (or of each
    /// step's own, without one). A step that finds a lock waits and retries for up to the busy timeout.
    /// `progress` hears the pages still to copy and the total after each step but the last.
    /// The corresponding C functions are `sqlite3_backup_init`, `_step` and `_finish`.
    func backup(into destination: SQLiteConnection, pagesPerStep: Int32, busyTimeoutMilliseconds: Int32,
                progress: (_ remaining: Int32, _ total: Int32) -> Void) throws(AuditError) {
        guard let backup = sqlite3_backup_init(destination.db, "main", db, "main") else {
            throw destination.error(sqlite3_errcode(destination.db), "start the backup into \(destination.path)")
        }
        var waited: Int32 = 0
        var rc: Int32
        repeat {
            rc = sqlite3_backup_step(backup, pagesPerStep)
            if rc == SQLITE_OK { progress(sqlite3_backup_remaining(backup), sqlite3_backup_pagecount(backup)) }
            let primary = rc & 0xFF
            if primary == SQLITE_BUSY || primary == SQLITE_LOCKED {
                guard waited < busyTimeoutMilliseconds else { break }
                usleep(10_000)
                waited += 10
                rc = SQLITE_OK
            }
        } while rc == SQLITE_OK
        let finished = sqlite3_backup_finish(backup)
        if rc != SQLITE_DONE { throw error(rc, "copy \(path) into \(destination.path)", detail: String(cString: sqlite3_errstr(rc))) }
        if finished != SQLITE_OK { throw destination.error(finished, "finish the backup into \(destination.path)") }
    }
}
