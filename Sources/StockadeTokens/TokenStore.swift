import Crypto
import FoundationEssentials
import Glibc
import StockadePolicy

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
            // Blanks around a scope (spaces and tabs, not line breaks) are not part of it.
            var trimmed = part
            while let c = trimmed.first, c.isWhitespace && !c.isNewline { trimmed.removeFirst() }
            while let c = trimmed.last, c.isWhitespace && !c.isNewline { trimmed.removeLast() }
            let word = String(trimmed)
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

    public init(name: String, scopes: [String], createdBy: String, createdAt: Int64, expiresAt: Int64, revokedAt: Int64?) {
        self.name = name
        self.scopes = scopes
        self.createdBy = createdBy
        self.createdAt = createdAt
        self.expiresAt = expiresAt
        self.revokedAt = revokedAt
    }

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

/// The rows behind `TokenStore`: a backend holds no rule (no token generation, no hashing, no
/// expiry or comparison), only the two tables, `tokens` and `idempotency_keys`. SQLite
/// (`SQLiteTokenBackend`, in the state directory's audit database) and PostgreSQL (in
/// StockadeAuditPostgres, in the shared store) implement it.
public protocol TokenBackend: Sendable {
    /// Names the store in error messages: a path, or a URL without credentials.
    var location: String { get }
    /// Inserts a token row; false when a token of that name exists (revoked ones keep their name).
    func insertToken(name: String, sha256: String, scopes: String, createdBy: String, createdAt: Int64, expiresAt: Int64) throws(TokenError) -> Bool
    /// Sets `revokedAt` of a token not yet revoked; false when there is no such token.
    func revokeToken(name: String, at: Int64) throws(TokenError) -> Bool
    /// Every token row, in creation order, then name.
    func tokenRows() throws(TokenError) -> [TokenRow]
    /// The row whose `sha256` is this one, through the column's unique index; nil when none is.
    func tokenRow(sha256: String) throws(TokenError) -> TokenRow?
    /// In one step, atomic among every process and host sharing the store: forgets keys created at or
    /// before `forgetBefore`; then returns the submission stored under (principal, key) when there
    /// is one, else stores this one and returns nil.
    func reserveSubmission(principal: String, key: String, bodySha256: String, runId: String, createdAt: Int64,
                           forgetBefore: Int64) throws(TokenError) -> (bodySha256: String, runId: String)?
    /// Removes the key (principal, key) if it still names `runId`.
    func forgetSubmission(principal: String, key: String, runId: String) throws(TokenError)
}

/// One row of `tokens`: the record and the stored hash.
public struct TokenRow: Sendable, Equatable {
    public let record: TokenRecord
    public let sha256: String

    public init(record: TokenRecord, sha256: String) {
        self.record = record
        self.sha256 = sha256
    }
}

/// The API's bearer tokens and the idempotency keys of its submissions, over a `TokenBackend`: the
/// state directory's audit database by default, or the shared PostgreSQL store.
public final class TokenStore: Sendable {
    public let backend: any TokenBackend
    /// Names the store in messages.
    public var location: String { backend.location }

    public static let prefix = "stk_"

    /// Over `<stateDirectory>/audit.sqlite` (see `SQLiteTokenBackend`).
    public convenience init(stateDirectory: String) throws(TokenError) {
        self.init(backend: try SQLiteTokenBackend(stateDirectory: stateDirectory))
    }

    public init(backend: any TokenBackend) {
        self.backend = backend
    }

    /// How long a submission's idempotency key is remembered (across restarts of the service).
    public static let idempotencyKeySeconds: Int64 = 7 * 86400

    /// Reserves this principal's `key` for run `runId` before the run is started, or returns the run
    /// an earlier submission with the key reserved (and its body's hash): whichever process or host
    /// of the store a retry reaches, one key starts one run. Keys older than `idempotencyKeySeconds`
    /// are forgotten.
    public func reserveSubmission(principal: String, key: String, bodySha256: String, runId: String,
                                  now: Int64 = Int64(Date().timeIntervalSince1970)) throws(TokenError) -> (bodySha256: String, runId: String)? {
        try backend.reserveSubmission(principal: principal, key: key, bodySha256: bodySha256, runId: runId, createdAt: now,
                                      forgetBefore: now - Self.idempotencyKeySeconds)
    }

    /// Releases a reservation whose run was refused (nothing started), so a retry with the key may start it.
    public func forgetSubmission(principal: String, key: String, runId: String) throws(TokenError) {
        try backend.forgetSubmission(principal: principal, key: key, runId: runId)
    }

    /// A new token: `stk_` and 32 random bytes in unpadded base64url.
    public static func generate() -> String {
        let key = SymmetricKey(size: .bits256)
        let bytes = key.withUnsafeBytes { Data($0) }
        let text = String(bytes.base64EncodedString().compactMap { c -> Character? in
            c == "+" ? "-" : c == "/" ? "_" : c == "=" ? nil : c
        })
        return prefix + text
    }

    public static func sha256Hex(_ token: String) -> String {
        Hex.lowercase(SHA256.hash(data: Array(token.utf8)))
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
        let inserted = try backend.insertToken(name: name, sha256: Self.sha256Hex(token), scopes: scopes.map(\.rawValue).joined(separator: ","),
                                               createdBy: createdBy, createdAt: now, expiresAt: now + ttlSeconds)
        guard inserted else {
            throw TokenError("a token named \"\(name)\" already exists (revoked tokens keep their name): choose another --name")
        }
        return token
    }

    /// Marks the token revoked; false when no token has that name or it was revoked already.
    public func revoke(name: String, now: Int64 = Int64(Date().timeIntervalSince1970)) throws(TokenError) -> Bool {
        try backend.revokeToken(name: name, at: now)
    }

    public func list() throws(TokenError) -> [TokenRecord] {
        try backend.tokenRows().map(\.record)
    }

    /// The token's record when it is known, unexpired and not revoked. The store is asked for the
    /// one row whose hash is the presented token's SHA-256, through its unique index: one indexed
    /// read per call, whatever the number of tokens. How long that search takes can say only how
    /// the presented token's digest sorts among the stored ones, and no digest leads back to a
    /// token (a SHA-256 preimage of 256 random bits). The row found is compared once more, in
    /// constant time.
    public func authenticate(_ presented: String?, now: Int64 = Int64(Date().timeIntervalSince1970)) throws(TokenError) -> Result<TokenRecord, TokenRejection> {
        guard let presented, !presented.isEmpty else { return .failure(.missing) }
        guard presented.hasPrefix(Self.prefix), presented.utf8.count <= 128 else { return .failure(.malformed) }
        let digest = Self.sha256Hex(presented)
        let wanted = Array(digest.utf8)
        var found: TokenRecord?
        if let row = try backend.tokenRow(sha256: digest) {
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
