import Glibc
import StockadeTestSupport
import Testing
@testable import StockadeAudit

@Suite("store URLs: sqlite:// and postgres://, parsed without a server")
struct StoreURLTests {
    struct Case: Sendable, CustomTestStringConvertible {
        let text: String
        let endpoint: PostgresStoreURL.Endpoint
        let user: String?
        let database: String
        let tls: PostgresStoreURL.TLSMode
        var testDescription: String { text }
    }

    static let valid: [Case] = [
        Case(text: "postgres://alice@db.example:6543/audit?sslmode=verify-full", endpoint: .tcp(host: "db.example", port: 6543),
             user: "alice", database: "audit", tls: .verifyFull),
        Case(text: "postgres://alice@db.example/audit", endpoint: .tcp(host: "db.example", port: 5432), user: "alice", database: "audit",
             tls: .prefer),
        Case(text: "postgresql:///audit?host=/run/postgresql", endpoint: .unixSocket(path: "/run/postgresql/.s.PGSQL.5432"), user: nil,
             database: "audit", tls: .disable),
        Case(text: "postgresql://bob@/audit?host=/tmp/pg/&port=5499", endpoint: .unixSocket(path: "/tmp/pg/.s.PGSQL.5499"), user: "bob",
             database: "audit", tls: .disable),
        Case(text: "postgresql://%2Fvar%2Frun%2Fpg:5433/a%20b", endpoint: .unixSocket(path: "/var/run/pg/.s.PGSQL.5433"), user: nil,
             database: "a b", tls: .disable),
        Case(text: "postgres://u@[::1]:5400/db?sslmode=require", endpoint: .tcp(host: "::1", port: 5400), user: "u", database: "db",
             tls: .require),
        Case(text: "postgres://127.0.0.1/db?user=carol&sslmode=disable", endpoint: .tcp(host: "127.0.0.1", port: 5432), user: "carol",
             database: "db", tls: .disable),
    ]

    @Test("a valid PostgreSQL URL gives its endpoint, user, database and TLS mode", arguments: valid)
    func parsesPostgres(_ c: Case) throws {
        guard case .postgres(let url) = try StoreURL.parse(c.text) else {
            Issue.record("\(c.text) did not parse as a PostgreSQL store")
            return
        }
        #expect(url.endpoint == c.endpoint)
        #expect(url.user == c.user)
        #expect(url.database == c.database)
        #expect(url.tlsMode == c.tls)
        #expect(url.password == nil)
        // The description parses back to the same store.
        guard case .postgres(let again) = try StoreURL.parse(url.description) else {
            Issue.record("\(url.description) did not parse back")
            return
        }
        #expect(again == url, "\(url.description)")
    }

    @Test("a malformed URL whose password holds a raw ?, / or # is refused without showing the password or any piece of it", arguments: [
        "postgres://alice:PWa?PWb/PWc@db.example/audit", "postgres://alice:PWa/PWb@db.example:5432/audit",
        "postgresql://alice:PWa?PWb=PWc@/audit?host=/run", "postgres://alice:6000/PWb@db.example/audit",
        "postgres://alice:PWa#PWb@db.example/audit", "postgres://alice:PWa/PWb@db.example/audit?password=PWc&password=PWd",
        "postgres:/alice:PWa@db.example/audit", "postgres//alice:PWa@db.example/audit", "postgres:alice:PWa/PWb@db/audit",
        // The password's own @ before its raw / or ?: the authority holds an @, and the tail was read
        // as a host and a database name (the second was taken, with host PWb).
        "postgres://alice:PWa@PWb/PWc@db.example/audit", "postgres://alice:PWa@PWb/PWc@db.example", "postgres://alice:PWa@PWb?PWc@db/x",
        // A mistyped scheme with :// inside the password; a password in a parameter of another spelling.
        "postgres:/alice:PWa://PWb@db/x", "postgres://alice@db/x?Password=PWa", "postgres://alice@db/x?%70assword=PWa&password%20=PWb",
    ])
    func malformedPasswordRedacted(text: String) {
        // The password's pieces as the delimiters would cut it: none may show, whole or in part.
        let pieces = ["PWa", "PWb", "PWc", "PWd", "6000"]
        do {
            let url = try StoreURL.parse(text)
            Issue.record("\(text) was taken as \(url.description)")
        } catch {
            for piece in pieces {
                #expect(!error.description.contains(piece), "\(piece) shows: \(error.description)")
            }
            #expect(error.description.contains("***"), "\(error.description)")
        }
    }

    @Test("a combining mark after the @ or the = of password= does not hide the password from the mask")
    func combiningMarkRedacted() {
        // "@\u{301}" and "=\u{301}" are single Characters: a search by Character finds no @ or =.
        for text in ["postgres://alice:s3cret@\u{301}db.example/audit", "postgres://alice@db.example/audit?password=\u{301}s3cret&x=y"] {
            do {
                let url = try StoreURL.parse(text)
                #expect(!url.description.contains("s3cret"), "\(url.description)")
            } catch {
                #expect(!error.description.contains("s3cret"), "the password shows: \(error.description)")
                #expect(error.description.contains("***"), "\(error.description)")
            }
        }
    }

    @Test("sqlite:///PATH names the file; other sqlite forms are refused naming the rule")
    func parsesSQLite() throws {
        #expect(try StoreURL.parse("sqlite:///var/lib/stockade/audit.sqlite") == .sqlite(path: "/var/lib/stockade/audit.sqlite"))
        #expect(try StoreURL.parse("sqlite:///tmp/a%20b.sqlite") == .sqlite(path: "/tmp/a b.sqlite"))
        #expect(StoreURL.sqlite(path: "/x/audit.sqlite").description == "sqlite:///x/audit.sqlite")
        for bad in ["sqlite://relative/audit.sqlite", "sqlite:audit.sqlite", "sqlite:///", "sqlite:///dir/", "sqlite:///a.sqlite?mode=ro"] {
            #expect(throws: AuditError.self, "\(bad)") { try StoreURL.parse(bad) }
        }
    }

    struct Bad: Sendable, CustomTestStringConvertible {
        let text: String
        let names: String
        var testDescription: String { text }
    }

    static let invalid: [Bad] = [
        Bad(text: "mysql://u@h/db", names: "unknown scheme mysql"),
        Bad(text: "/var/lib/audit.sqlite", names: "no scheme"),
        Bad(text: "postgres://u@h", names: "no database name"),
        Bad(text: "postgres://u@h/", names: "no database name"),
        Bad(text: "postgres:///db", names: "no host"),
        Bad(text: "postgres://u@h:99999/db", names: "the port 99999"),
        Bad(text: "postgres://u@h:x/db", names: "the port x"),
        Bad(text: "postgres://u@h/db?sslmode=maybe", names: "sslmode maybe is not one of"),
        Bad(text: "postgres://u@h/db?sslmod=require", names: "unknown parameter sslmod"),
        Bad(text: "postgres://u@h/db?sslmode=require&sslmode=disable", names: "sslmode is given twice"),
        Bad(text: "postgresql:///db?host=/run/postgresql&sslmode=require", names: "over a Unix socket"),
        Bad(text: "postgres://u@h/a/b", names: "contains a /"),
        Bad(text: "postgres://u@h/db?passwordFile=relative", names: "passwordFile must be an absolute path"),
        Bad(text: "postgres://u@h/db?password=hunter2", names: "password= parameter is not accepted"),
        Bad(text: "postgres://@h/db", names: "the user before @ is empty"),
        Bad(text: "postgres://u@h/d%zzb", names: "database name has a %"),
        Bad(text: "postgres://u@h/db?sslmode=require&sslrootcert=/ca.pem", names: "sslrootcert is only used by"),
        Bad(text: "postgres://u@h/db#x", names: "no #fragment"),
    ]

    @Test("a bad URL is refused with invalid-argument naming the part that is wrong", arguments: invalid)
    func refusesBadURL(_ bad: Bad) {
        do {
            let url = try StoreURL.parse(bad.text)
            Issue.record("\(bad.text) parsed as \(url)")
        } catch {
            #expect(error.code == .invalidArgument)
            #expect(error.message.contains(bad.names), "\(error)")
            #expect(!error.description.contains("hunter2"))
        }
    }

    @Test("the password never appears in the description or in an error, and comes from the URL, a file or the environment")
    func passwordSources() throws {
        guard case .postgres(let url) = try StoreURL.parse("postgres://alice:s3cr%40t@db.example/audit?sslmode=verify-full") else {
            Issue.record("not a PostgreSQL URL")
            return
        }
        #expect(url.password == "s3cr@t")
        #expect(url.description == "postgres://alice:***@db.example/audit?sslmode=verify-full")
        #expect(try url.resolvingPassword(environment: ["PGPASSWORD": "other"]) == "s3cr@t", "the URL's own password wins")
        do {
            _ = try StoreURL.parse("postgres://alice:s3cret@db.example:0/audit")
            Issue.record("port 0 was accepted")
        } catch {
            #expect(!error.description.contains("s3cret") && error.description.contains("alice:***@"), "\(error)")
        }

        let scratch = ScratchDirectory("store-url")
        let file = scratch["password"]
        try writeFile(file, "from-file\nignored second line\n", mode: 0o600)
        guard case .postgres(let bare) = try StoreURL.parse("postgres://alice@db.example/audit") else { return }
        #expect(try bare.resolvingPassword(environment: [:]) == nil)
        #expect(try bare.resolvingPassword(environment: ["PGPASSWORD": "from-env"]) == "from-env")
        #expect(try bare.resolvingPassword(environment: ["STOCKADE_STORE_PASSWORD_FILE": file, "PGPASSWORD": "from-env"]) == "from-file")
        guard case .postgres(let withFile) = try StoreURL.parse("postgres://alice@db.example/audit?passwordFile=\(file)") else { return }
        #expect(try withFile.resolvingPassword(environment: [:]) == "from-file")
        #expect(withFile.description.contains("passwordFile=\(file)") && !withFile.description.contains("from-file"))

        chmod(file, 0o644)
        #expect(throws: AuditError.self) { try withFile.resolvingPassword(environment: [:]) }
        do {
            _ = try withFile.resolvingPassword(environment: [:])
        } catch {
            #expect(error.code == .keyFile && error.message.contains("chmod 600") && !error.description.contains("from-file"), "\(error)")
        }
        symlink(file, scratch["link"])
        chmod(file, 0o600)
        #expect(throws: AuditError.self, "a symlinked password file is refused") {
            try bare.resolvingPassword(environment: ["STOCKADE_STORE_PASSWORD_FILE": scratch["link"]])
        }
        #expect(throws: AuditError.self, "a missing password file is an error, not no password") {
            try bare.resolvingPassword(environment: ["STOCKADE_STORE_PASSWORD_FILE": scratch["missing"]])
        }
    }

    private func writeFile(_ path: String, _ text: String, mode: mode_t) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode)
        try #require(fd >= 0)
        defer { close(fd) }
        _ = text.withCString { write(fd, $0, strlen($0)) }
    }
}
