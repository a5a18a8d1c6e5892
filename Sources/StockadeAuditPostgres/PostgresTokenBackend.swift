import PostgresNIO
import StockadeAudit
import StockadeTokens

/// Tokens and idempotency keys in the shared PostgreSQL store, on the audit backend's connection
/// pool: a token created on one host authenticates on every node, and a retried submission finds
/// its key whichever node it reaches.
///
/// The tables are made idempotently when the backend opens, under the store's writer lock (two
/// hosts starting at once would otherwise race in `CREATE TABLE IF NOT EXISTS`), and, as on SQLite,
/// not recorded in `schema_migrations`.
public final class PostgresTokenBackend: TokenBackend {
    let audit: PostgresAuditBackend
    public var location: String { audit.location }

    public init(_ audit: PostgresAuditBackend) throws(TokenError) {
        self.audit = audit
        try call("create the token tables") { (session) throws(AuditError) in
            try session.query("BEGIN", "begin")
            do throws(AuditError) {
                var binds = PostgresBindings()
                binds.append(PostgresAuditSchema.writerLockKey)
                try session.query("SELECT pg_advisory_xact_lock($1)", binds, "take the store's writer lock")
                try session.query("""
                    CREATE TABLE IF NOT EXISTS tokens (
                        name TEXT COLLATE "C" PRIMARY KEY NOT NULL,
                        sha256 TEXT NOT NULL UNIQUE,
                        scopes TEXT NOT NULL,
                        createdBy TEXT NOT NULL,
                        createdAt BIGINT NOT NULL,
                        expiresAt BIGINT NOT NULL,
                        revokedAt BIGINT
                    )
                    """, "create the tokens table")
                try session.query("""
                    CREATE TABLE IF NOT EXISTS idempotency_keys (
                        principal TEXT NOT NULL,
                        key TEXT NOT NULL,
                        bodySha256 TEXT NOT NULL,
                        runId TEXT NOT NULL,
                        createdAt BIGINT NOT NULL,
                        PRIMARY KEY (principal, key)
                    )
                    """, "create the idempotency_keys table")
                try session.query("COMMIT", "commit")
            } catch {
                PostgresTransactions.rollback(session)
                throw error
            }
        }
    }

    public func insertToken(name: String, sha256: String, scopes: String, createdBy: String, createdAt: Int64, expiresAt: Int64) throws(TokenError) -> Bool {
        var binds = PostgresBindings()
        binds.append(name); binds.append(sha256); binds.append(scopes); binds.append(createdBy); binds.append(createdAt); binds.append(expiresAt)
        let rows = try call("store the token") { (session) throws(AuditError) in
            try session.query("""
                INSERT INTO tokens (name, sha256, scopes, createdBy, createdAt, expiresAt) VALUES ($1, $2, $3, $4, $5, $6)
                ON CONFLICT (name) DO NOTHING RETURNING name
                """, binds, "store the token")
        }
        return !rows.isEmpty
    }

    public func revokeToken(name: String, at: Int64) throws(TokenError) -> Bool {
        var binds = PostgresBindings()
        binds.append(at); binds.append(name)
        let rows = try call("revoke the token") { (session) throws(AuditError) in
            try session.query("UPDATE tokens SET revokedAt = $1 WHERE name = $2 AND revokedAt IS NULL RETURNING name", binds, "revoke the token")
        }
        return !rows.isEmpty
    }

    public func tokenRows() throws(TokenError) -> [TokenRow] {
        try rows("ORDER BY createdAt, name", PostgresBindings(), "read the tokens")
    }

    public func tokenRow(sha256: String) throws(TokenError) -> TokenRow? {
        var binds = PostgresBindings()
        binds.append(sha256)
        return try rows("WHERE sha256 = $1", binds, "look up the token").first
    }

    private func rows(_ clause: String, _ binds: PostgresBindings, _ what: String) throws(TokenError) -> [TokenRow] {
        try call(what) { (session) throws(AuditError) -> [TokenRow] in
            try session.query("SELECT name, scopes, createdBy, createdAt, expiresAt, revokedAt, sha256 FROM tokens " + clause,
                              binds, what).map { (row) throws(AuditError) -> TokenRow in
                let (name, scopes, createdBy, createdAt, expiresAt, revokedAt, sha256) = try PostgresRows.decode(row, session) { row in
                    try row.decode((String, String, String, Int64, Int64, Int64?, String).self)
                }
                return TokenRow(record: TokenRecord(name: name, scopes: scopes.split(separator: ",").map(String.init), createdBy: createdBy,
                                                    createdAt: createdAt, expiresAt: expiresAt, revokedAt: revokedAt),
                                sha256: sha256)
            }
        }
    }

    public func reserveSubmission(principal: String, key: String, bodySha256: String, runId: String, createdAt: Int64,
                                  forgetBefore: Int64) throws(TokenError) -> (bodySha256: String, runId: String)? {
        var forget = PostgresBindings()
        forget.append(forgetBefore)
        var binds = PostgresBindings()
        binds.append(principal); binds.append(key); binds.append(bodySha256); binds.append(runId); binds.append(createdAt)
        var read = PostgresBindings()
        read.append(principal); read.append(key)
        return try call("reserve the idempotency key") { (session) throws(AuditError) -> (bodySha256: String, runId: String)? in
            try session.query("DELETE FROM idempotency_keys WHERE createdAt <= $1", forget, "forget old idempotency keys")
            // The primary key decides between hosts inserting at once: one row wins, the others read it.
            let inserted = try session.query("""
                INSERT INTO idempotency_keys (principal, key, bodySha256, runId, createdAt) VALUES ($1, $2, $3, $4, $5)
                ON CONFLICT (principal, key) DO NOTHING RETURNING runId
                """, binds, "reserve the idempotency key")
            if !inserted.isEmpty { return nil }
            guard let row = try session.query("SELECT bodySha256, runId FROM idempotency_keys WHERE principal = $1 AND key = $2",
                                              read, "read the idempotency key").first else {
                throw AuditError(.busy, path: session.store, "the idempotency key was removed while it was being reserved: retry")
            }
            let (body, stored) = try PostgresRows.decode(row, session) { row in try row.decode((String, String).self) }
            return (body, stored)
        }
    }

    public func forgetSubmission(principal: String, key: String, runId: String) throws(TokenError) {
        var binds = PostgresBindings()
        binds.append(principal); binds.append(key); binds.append(runId)
        _ = try call("release the idempotency key") { (session) throws(AuditError) in
            try session.query("DELETE FROM idempotency_keys WHERE principal = $1 AND key = $2 AND runId = $3", binds, "release the idempotency key")
        }
    }

    /// One call on a pooled session; an audit error becomes a token error that says what failed.
    private func call<T>(_ doing: String, _ body: (PostgresSession) throws(AuditError) -> T) throws(TokenError) -> T {
        do throws(AuditError) {
            return try audit.pool.withSessionTyped(body)
        } catch {
            throw TokenError("token store \(audit.location): \(error.message)")
        }
    }
}
