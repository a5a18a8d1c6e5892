import CSQLite
import Crypto
import Foundation
import Glibc

/// The API's scopes. `admin` holds every other one.
public enum TokenScope: String, Sendable, CaseIterable {
    case runRead = "run:read"
    case runWrite = "run:write"
    case reviewRead = "review:read"
    case reviewSubmit = "review:submit"
    case auditRead = "audit:read"
    case admin

    /// Parses `run:read,run:write`; the error names the unknown scope and lists the known ones.
    public static func parseList(_ text: String) throws(TokenError) -> [TokenScope] {
        var scopes: [TokenScope] = []
        for part in text.split(separator: ",", omittingEmptySubsequences: false) {
            let word = part.trimmingCharacters(in: .whitespaces)
            guard let scope = TokenScope(rawValue: word) else {
                throw TokenError("--scope: unknown scope \"\(word)\" (known: \(allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            if !scopes.contains(scope) { scopes.append(scope) }
        }
        guard !scopes.isEmpty else { throw TokenError("--scope: give at least one scope") }
        return scopes
    }
}

public struct TokenError: Error, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// One token as the store keeps it: never the token itself, only its SHA-256.
public struct TokenRecord: Sendable, Equatable {
    public let name: String
    public let scopes: [String]
    public let createdBy: String
    /// Seconds since the epoch.
    public let createdAt: Int64
    public let expiresAt: Int64
    public let revokedAt: Int64?

    public func state(now: Int64) -> String {
        if revokedAt != nil { return "revoked" }
        return now >= expiresAt ? "expired" : "active"
    }

    public func allows(_ scope: TokenScope) -> Bool {
        scopes.contains(scope.rawValue) || scopes.contains(TokenScope.admin.rawValue)
    }
}

/// Why a presented token was not accepted (the API answers 401 for each, with the same message).
public enum TokenRejection: String, Error, Sendable {
    case missing, malformed, unknown, expired, revoked
}

/// Bearer tokens in the state directory's audit database, table `tokens`, and the API's
/// idempotency keys, table `idempotency_keys` (both created idempotently).
/// The tables are not recorded in `schema_migrations`: the audit store refuses a database holding a
/// migration it does not know, so recording it there needs a change in StockadeAudit.
public final class TokenStore: @unchecked Sendable {
    public let path: String
    private let db: OpaquePointer
    private let lock = NSLock()

    public static let prefix = "stk_"

    /// Opens (creating mode 0600 if needed) `<stateDirectory>/audit.sqlite`; refuses a symlink.
    public init(stateDirectory: String) throws(TokenError) {
        path = stateDirectory + "/audit.sqlite"
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

    /// How long a submission's idempotency key is remembered (across restarts of the service).
    public static let idempotencyKeySeconds: Int64 = 7 * 86400

    /// The run an earlier submission with this key from this principal started, with its body's hash.
    public func submission(principal: String, key: String, now: Int64 = Int64(Date().timeIntervalSince1970)) throws(TokenError) -> (bodySha256: String, runId: String)? {
        lock.lock(); defer { lock.unlock() }
        let statement = try prepare("SELECT bodySha256, runId FROM idempotency_keys WHERE principal = ? AND key = ? AND createdAt > ?",
                                    [.text(principal), .text(key), .int(now - Self.idempotencyKeySeconds)])
        defer { sqlite3_finalize(statement) }
        let rc = sqlite3_step(statement)
        if rc == SQLITE_DONE { return nil }
        guard rc == SQLITE_ROW else { throw TokenError("token store \(path): \(String(cString: sqlite3_errmsg(db)))") }
        func text(_ i: Int32) -> String { sqlite3_column_text(statement, i).map { String(cString: $0) } ?? "" }
        return (text(0), text(1))
    }

    /// Remembers a submission's key (and forgets keys older than `idempotencyKeySeconds`).
    public func rememberSubmission(principal: String, key: String, bodySha256: String, runId: String,
                                   now: Int64 = Int64(Date().timeIntervalSince1970)) throws(TokenError) {
        try run("DELETE FROM idempotency_keys WHERE createdAt <= ?", [.int(now - Self.idempotencyKeySeconds)])
        try run("INSERT OR REPLACE INTO idempotency_keys (principal, key, bodySha256, runId, createdAt) VALUES (?, ?, ?, ?, ?)",
                [.text(principal), .text(key), .text(bodySha256), .text(runId), .int(now)])
    }

    deinit { sqlite3_close_v2(db) }

    /// A new token: `stk_` and 32 random bytes in unpadded base64url.
    public static func generate() -> String {
        let key = SymmetricKey(size: .bits256)
        let bytes = key.withUnsafeBytes { Data($0) }
        let text = bytes.base64EncodedString().replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        return prefix + text
    }

    public static func sha256Hex(_ token: String) -> String {
        SHA256.hash(data: Array(token.utf8)).map { String(format: "%02x", $0) }.joined()
    }

    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 64
            && name.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2E || $0 == 0x5F || $0 == 0x2D }
    }

    /// Stores a new token and returns it: the only time it is ever shown.
    public func create(name: String, scopes: [TokenScope], createdBy: String, ttlSeconds: Int64,
                       now: Int64 = Int64(Date().timeIntervalSince1970)) throws(TokenError) -> String {
        guard Self.isValidName(name) else {
            throw TokenError("--name: must be 1 to 64 of A-Z a-z 0-9 . _ -, found \"\(name)\"")
        }
        let token = Self.generate()
        let rc = try run("INSERT INTO tokens (name, sha256, scopes, createdBy, createdAt, expiresAt) VALUES (?, ?, ?, ?, ?, ?)",
                         [.text(name), .text(Self.sha256Hex(token)), .text(scopes.map(\.rawValue).joined(separator: ",")),
                          .text(createdBy), .int(now), .int(now + ttlSeconds)], allowConstraint: true)
        if rc == SQLITE_CONSTRAINT {
            throw TokenError("a token named \"\(name)\" already exists (revoked tokens keep their name): choose another --name")
        }
        return token
    }

    /// Marks the token revoked; false when no token has that name or it was revoked already.
    public func revoke(name: String, now: Int64 = Int64(Date().timeIntervalSince1970)) throws(TokenError) -> Bool {
        _ = try run("UPDATE tokens SET revokedAt = ? WHERE name = ? AND revokedAt IS NULL", [.int(now), .text(name)])
        return sqlite3_changes(db) > 0
    }

    public func list() throws(TokenError) -> [TokenRecord] {
        try query("SELECT name, scopes, createdBy, createdAt, expiresAt, revokedAt, sha256 FROM tokens ORDER BY createdAt, name").map(\.record)
    }

    /// The token's record when it is known, unexpired and not revoked. Every stored hash is compared
    /// with the presented one in constant time, with no early exit.
    public func authenticate(_ presented: String?, now: Int64 = Int64(Date().timeIntervalSince1970)) throws(TokenError) -> Result<TokenRecord, TokenRejection> {
        guard let presented, !presented.isEmpty else { return .failure(.missing) }
        guard presented.hasPrefix(Self.prefix), presented.utf8.count <= 128 else { return .failure(.malformed) }
        let wanted = Array(Self.sha256Hex(presented).utf8)
        var found: TokenRecord?
        for row in try query("SELECT name, scopes, createdBy, createdAt, expiresAt, revokedAt, sha256 FROM tokens") {
            let stored = Array(row.sha256.utf8)
            var difference: UInt8 = stored.count == wanted.count ? 0 : 1
            for i in 0..<min(stored.count, wanted.count) { difference |= stored[i] ^ wanted[i] }
            if difference == 0 { found = row.record }
        }
        guard let found else { return .failure(.unknown) }
        if found.revokedAt != nil { return .failure(.revoked) }
        if now >= found.expiresAt { return .failure(.expired) }
        return .success(found)
    }

    // MARK: SQLite

    private enum Value {
        case int(Int64)
        case text(String)
    }

    private func execute(_ sql: String) throws(TokenError) {
        lock.lock(); defer { lock.unlock() }
        var message: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(db, sql, nil, nil, &message)
        if rc != SQLITE_OK {
            let text = message.map { String(cString: $0) } ?? String(cString: sqlite3_errstr(rc))
            sqlite3_free(message)
            throw TokenError("token store \(path): \(text)")
        }
    }

    private func prepare(_ sql: String, _ values: [Value]) throws(TokenError) -> OpaquePointer {
        var statement: OpaquePointer?
        guard sqlite3_prepare_v2(db, sql, -1, &statement, nil) == SQLITE_OK, let statement else {
            throw TokenError("token store \(path): \(String(cString: sqlite3_errmsg(db)))")
        }
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
        lock.lock(); defer { lock.unlock() }
        let statement = try prepare(sql, values)
        defer { sqlite3_finalize(statement) }
        let rc = sqlite3_step(statement)
        if rc == SQLITE_DONE { return rc }
        if allowConstraint && (rc & 0xFF) == SQLITE_CONSTRAINT { return SQLITE_CONSTRAINT }
        throw TokenError("token store \(path): \(String(cString: sqlite3_errmsg(db)))")
    }

    private struct Row {
        let record: TokenRecord
        let sha256: String
    }

    private func query(_ sql: String) throws(TokenError) -> [Row] {
        lock.lock(); defer { lock.unlock() }
        let statement = try prepare(sql, [])
        defer { sqlite3_finalize(statement) }
        var rows: [Row] = []
        while true {
            let rc = sqlite3_step(statement)
            if rc == SQLITE_DONE { break }
            guard rc == SQLITE_ROW else { throw TokenError("token store \(path): \(String(cString: sqlite3_errmsg(db)))") }
            func text(_ i: Int32) -> String { sqlite3_column_text(statement, i).map { String(cString: $0) } ?? "" }
            let revoked = sqlite3_column_type(statement, 5) == SQLITE_NULL ? nil : sqlite3_column_int64(statement, 5)
            rows.append(Row(record: TokenRecord(name: text(0), scopes: text(1).split(separator: ",").map(String.init),
                                                createdBy: text(2), createdAt: sqlite3_column_int64(statement, 3),
                                                expiresAt: sqlite3_column_int64(statement, 4), revokedAt: revoked),
                            sha256: text(6)))
        }
        return rows
    }
}

/// Durations for `--ttl` and `--grace`: `90`, `90s`, `15m`, `1h`, `30d` (whole units).
public enum DurationText {
    public static func seconds(_ text: String) -> Int64? {
        var digits = text
        var unit: Int64 = 1
        if let last = text.last, !last.isNumber {
            switch last {
            case "s": unit = 1
            case "m": unit = 60
            case "h": unit = 3600
            case "d": unit = 86400
            default: return nil
            }
            digits.removeLast()
        }
        guard !digits.isEmpty, digits.allSatisfy(\.isASCII), let n = Int64(digits), n >= 0, n <= 10 * 366 * 86400 / unit else { return nil }
        return n * unit
    }
}
