import Glibc

/// Where the audit store lives, as `--store URL` / `$STOCKADE_STORE` will name it: a local SQLite file
/// (`sqlite:///abs/path`) or a PostgreSQL database shared by many hosts (`postgres://…`,
/// `postgresql://…`, libpq's URL forms). Parsing is pure; the password is resolved separately
/// (`resolvingPassword`) because it may come from a file or the environment.
///
/// `description` never shows a password: it is what error messages and logs name the store by.
public enum StoreURL: Sendable, Equatable, CustomStringConvertible {
    case sqlite(path: String)
    case postgres(PostgresStoreURL)

    /// Parses `text`; a bad URL fails with `.invalidArgument` naming the part that is wrong (and the
    /// URL with any password replaced by `***`).
    public static func parse(_ text: String) throws(AuditError) -> StoreURL {
        if text.hasPrefix("sqlite:") {
            guard text.hasPrefix("sqlite:///") else {
                throw invalid(text, "a SQLite store is sqlite:///ABSOLUTE/PATH (three slashes, then an absolute path)")
            }
            let path = String(text.dropFirst("sqlite://".count))
            guard !path.contains("?"), !path.contains("#") else {
                throw invalid(text, "a SQLite store URL takes no query or fragment: sqlite:///ABSOLUTE/PATH")
            }
            let decoded = try percentDecoded(path, part: "path", in: text)
            guard decoded.count > 1, !decoded.hasSuffix("/") else {
                throw invalid(text, "the path names a directory, not a database file: sqlite:///ABSOLUTE/PATH/audit.sqlite")
            }
            return .sqlite(path: decoded)
        }
        if text.hasPrefix("postgres://") || text.hasPrefix("postgresql://") {
            return .postgres(try PostgresStoreURL.parse(text))
        }
        let forms = "use sqlite:///PATH, postgres://USER@HOST:PORT/DB or postgresql:///DB?host=/SOCKET/DIR"
        guard let colon = text.firstIndex(of: ":"), colon != text.startIndex, text[..<colon].allSatisfy({ $0.isLetter || $0.isNumber || $0 == "+" }) else {
            throw invalid(text, "no scheme: \(forms)")
        }
        throw invalid(text, "unknown scheme \(text[..<colon]): \(forms)")
    }

    public var description: String {
        switch self {
        case .sqlite(let path): "sqlite://" + path
        case .postgres(let url): url.description
        }
    }

    static func invalid(_ text: String, _ why: String) -> AuditError {
        AuditError(.invalidArgument, path: redacted(text), "invalid store URL: \(why)")
    }

    /// `text` as an error message may show it, masking too much rather than too little:
    /// - the user-info's password, from the first `:` after the scheme's `://` to the last `@`,
    ///   wherever that is (a password may hold a raw `/`, `?` or `@` that makes the URL malformed);
    ///   without a scheme and `://` at the start (a mistyped one, or a `://` inside the password),
    ///   from the first `:`;
    /// - every query value but those of `plainParameters` (`Password=` and `%70assword=` are
    ///   unknown parameters whose values must not show either).
    /// Searched as bytes, not Characters: a combining mark after `@` or `=` makes another Character
    /// of it, which a Character search would not find.
    static func redacted(_ text: String) -> String {
        var out = Array(text.utf8)
        let schemeLength = out.prefix { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2B }.count
        let from = schemeLength > 0 && out[schemeLength...].starts(with: Array("://".utf8)) ? schemeLength + 3 : out.startIndex
        if let at = out[from...].lastIndex(of: UInt8(ascii: "@")),
           let colon = out[from..<at].firstIndex(of: UInt8(ascii: ":")) {
            out.replaceSubrange((colon + 1)..<at, with: Array("***".utf8))
        }
        guard let mark = out.firstIndex(of: UInt8(ascii: "?")) else { return String(decoding: out, as: UTF8.self) }
        let pairs = out[(mark + 1)...].split(separator: UInt8(ascii: "&"), omittingEmptySubsequences: false).map { pair -> [UInt8] in
            guard let equals = pair.firstIndex(of: UInt8(ascii: "=")),
                  !Self.plainParameters.contains(String(decoding: pair[..<equals], as: UTF8.self)) else { return Array(pair) }
            return Array(pair[...equals]) + Array("***".utf8)
        }
        return String(decoding: out[...mark] + Array(pairs.joined(separator: [UInt8(ascii: "&")])), as: UTF8.self)
    }

    /// The parameters a PostgreSQL URL accepts (PostgresStoreURL.parse), none of whose values is a secret.
    static let plainParameters = ["host", "port", "user", "dbname", "sslmode", "sslrootcert", "passwordFile", "connect_timeout"]

    static func percentDecoded(_ text: some StringProtocol, part: String, in url: String) throws(AuditError) -> String {
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8).makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else { bytes.append(byte); continue }
            guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else {
                throw invalid(url, "the \(part) has a % not followed by two hex digits")
            }
            bytes.append(high << 4 | low)
        }
        guard let decoded = String(validating: bytes, as: UTF8.self), !decoded.utf8.contains(0) else {
            throw invalid(url, "the \(part) is not UTF-8 text once %-decoded")
        }
        return decoded
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

/// A PostgreSQL store: `postgres[ql]://[USER[:PASSWORD]@][HOST][:PORT]/DATABASE[?PARAM=VALUE&…]`.
/// Parameters: `host=/DIR` (a Unix socket directory; the socket is `DIR/.s.PGSQL.PORT`; a host that
/// does not start with `/` is a TCP host), `port=`, `user=`, `sslmode=` (`disable`, `prefer`,
/// `require`, `verify-ca`, `verify-full`), `sslrootcert=PATH` (trusted CA certificates, PEM),
/// `passwordFile=PATH`, `connect_timeout=SECONDS`. Any other parameter is refused, so a typo never
/// silently weakens the connection.
public struct PostgresStoreURL: Sendable, Equatable, CustomStringConvertible {
    /// Connections to such a store each process may hold at once, by default (`--store-connections`).
    public static let defaultConnections = 4

    public enum Endpoint: Sendable, Equatable {
        case tcp(host: String, port: Int)
        /// The socket file itself: `DIR/.s.PGSQL.PORT`.
        case unixSocket(path: String)
    }

    /// libpq's `sslmode`: what TLS the connection asks for.
    public enum TLSMode: String, Sendable, Equatable, CaseIterable {
        /// Plain text (the default over a Unix socket).
        case disable
        /// TLS when the server offers it, plain text otherwise (the default over TCP, as in libpq).
        case prefer
        /// TLS, encrypted but the server's certificate not checked.
        case require
        /// TLS, the certificate checked against the trusted CAs, any host name.
        case verifyCA = "verify-ca"
        /// TLS, the certificate checked and its name matching the host.
        case verifyFull = "verify-full"
    }

    public let scheme: String
    public let endpoint: Endpoint
    /// The user name; nil means the name of the user running Stockade, as with libpq.
    public let user: String?
    public let database: String
    public let tlsMode: TLSMode
    public let trustRootsPath: String?
    /// From the URL itself; see `resolvingPassword` for the other sources.
    public let password: String?
    public let passwordFile: String?
    public let connectTimeoutSeconds: Int

    public static let defaultPort = 5432
    public static let defaultConnectTimeoutSeconds = 10

    public static func parse(_ text: String) throws(AuditError) -> PostgresStoreURL {
        let invalid = { (why: String) -> AuditError in StoreURL.invalid(text, why) }
        // ASCII only, as RFC 3986 has it: parsed by Characters, a delimiter followed by a combining
        // mark (@ + U+0301) is another Character, and the password would be taken for a host or port
        // and named in the error. Other characters are percent-encoded.
        guard text.utf8.allSatisfy({ $0 < 0x80 }) else {
            throw invalid("a PostgreSQL URL is ASCII: percent-encode any other character (é as %C3%A9)")
        }
        guard let schemeEnd = text.firstRange(of: "://") else { throw invalid("no :// after the scheme") }
        let scheme = String(text[..<schemeEnd.lowerBound])
        var rest = Substring(text[schemeEnd.upperBound...])
        if rest.contains("#") { throw invalid("a store URL takes no #fragment") }
        var query = Substring("")
        if let mark = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: mark)...]
            rest = rest[..<mark]
        }
        let slash = rest.firstIndex(of: "/")
        let authority = slash.map { rest[..<$0] } ?? rest
        let pathPart = slash.map { rest[rest.index(after: $0)...] } ?? ""

        // The authority ends at the first / or ?: an @ after it means a user-info holding a raw /, ?
        // or # (the password's own @ may come before it), whose password would otherwise be read as a
        // port, a host or a database name, and named in an error or taken. Refused naming no part of
        // it: a database name or a parameter with an @ is written with %40.
        if rest[authority.endIndex...].contains("@") || query.contains("@") {
            throw invalid("an @ after the host: percent-encode /, ?, # and @ in a user, a password, a database name or a parameter (%2F, %3F, %23, %40)")
        }
        var user: String?
        var password: String?
        var hostPort = authority
        if let at = authority.lastIndex(of: "@") {
            let userInfo = authority[..<at]
            hostPort = authority[authority.index(after: at)...]
            if let colon = userInfo.firstIndex(of: ":") {
                user = try StoreURL.percentDecoded(userInfo[..<colon], part: "user", in: text)
                password = try StoreURL.percentDecoded(userInfo[userInfo.index(after: colon)...], part: "password", in: text)
            } else {
                user = try StoreURL.percentDecoded(userInfo, part: "user", in: text)
            }
            if user == "" { throw invalid("the user before @ is empty: write postgres://USER@HOST/DB, or leave out the @") }
        }
        var host: String?
        var port: Int?
        if hostPort.hasPrefix("[") {
            guard let close = hostPort.firstIndex(of: "]") else { throw invalid("the IPv6 host has no closing ]") }
            host = String(hostPort[hostPort.index(after: hostPort.startIndex)..<close])
            let after = hostPort[hostPort.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw invalid("unexpected text after the IPv6 host: \(after)") }
                port = try parsePort(after.dropFirst(), in: text)
            }
        } else if let colon = hostPort.lastIndex(of: ":") {
            host = try StoreURL.percentDecoded(hostPort[..<colon], part: "host", in: text)
            port = try parsePort(hostPort[hostPort.index(after: colon)...], in: text)
        } else if !hostPort.isEmpty {
            host = try StoreURL.percentDecoded(hostPort, part: "host", in: text)
        }
        if host == "" { host = nil }
        guard !pathPart.contains("/") else { throw invalid("the database name \(pathPart) contains a /: the path is /DATABASE") }
        var database = try StoreURL.percentDecoded(pathPart, part: "database name", in: text)

        var tlsMode: TLSMode?
        var trustRoots: String?
        var passwordFile: String?
        var timeout = defaultConnectTimeoutSeconds
        var seen: Set<String> = []
        for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
            guard let equals = pair.firstIndex(of: "=") else { throw invalid("the parameter \(pair) has no =VALUE") }
            let name = String(pair[..<equals])
            let value = try StoreURL.percentDecoded(pair[pair.index(after: equals)...], part: "parameter \(name)", in: text)
            guard seen.insert(name).inserted else { throw invalid("the parameter \(name) is given twice") }
            switch name {
            case "host":
                guard !value.isEmpty else { throw invalid("host= is empty: give a socket directory (host=/run/postgresql) or a host name") }
                host = value
            case "port":
                port = try parsePort(Substring(value), in: text)
            case "user":
                guard !value.isEmpty else { throw invalid("user= is empty") }
                user = value
            case "dbname":
                database = value
            case "sslmode":
                guard let mode = TLSMode(rawValue: value) else {
                    throw invalid("sslmode \(value) is not one of \(TLSMode.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                tlsMode = mode
            case "sslrootcert":
                guard value.hasPrefix("/") else { throw invalid("sslrootcert must be an absolute path to a PEM file, not \(value)") }
                trustRoots = value
            case "passwordFile":
                guard value.hasPrefix("/") else { throw invalid("passwordFile must be an absolute path, not \(value)") }
                passwordFile = value
            case "password":
                throw invalid("a password= parameter is not accepted: put the password in the user-info (USER:PASSWORD@), in passwordFile=, $STOCKADE_STORE_PASSWORD_FILE or $PGPASSWORD")
            case "connect_timeout":
                guard let seconds = Int(value), seconds > 0, seconds <= 3600 else {
                    throw invalid("connect_timeout \(value) is not a whole number of seconds between 1 and 3600")
                }
                timeout = seconds
            default:
                throw invalid("unknown parameter \(name): the accepted ones are \(StoreURL.plainParameters.joined(separator: ", "))")
            }
        }
        guard !database.isEmpty else { throw invalid("no database name: the path must be /DATABASE (postgres://USER@HOST/DATABASE)") }

        let endpoint: Endpoint
        let resolvedPort = port ?? defaultPort
        if let host, host.hasPrefix("/") {
            endpoint = .unixSocket(path: (host.hasSuffix("/") ? String(host.dropLast()) : host) + "/.s.PGSQL.\(resolvedPort)")
        } else if let host {
            endpoint = .tcp(host: host, port: resolvedPort)
        } else {
            throw invalid("no host: name one (postgres://USER@HOST:PORT/DB) or a socket directory (postgresql:///DB?host=/run/postgresql)")
        }
        let mode: TLSMode
        if let tlsMode {
            if case .unixSocket = endpoint, tlsMode != .disable, tlsMode != .prefer {
                throw invalid("sslmode \(tlsMode.rawValue) over a Unix socket: PostgreSQL does not speak TLS there; use sslmode=disable or a TCP host")
            }
            mode = tlsMode
        } else {
            if case .unixSocket = endpoint { mode = .disable } else { mode = .prefer }
        }
        if case .unixSocket = endpoint, mode == .prefer {
            return PostgresStoreURL(scheme: scheme, endpoint: endpoint, user: user, database: database, tlsMode: .disable,
                                    trustRootsPath: trustRoots, password: password, passwordFile: passwordFile, connectTimeoutSeconds: timeout)
        }
        if trustRoots != nil, mode != .verifyCA, mode != .verifyFull {
            throw invalid("sslrootcert is only used by sslmode=verify-ca or verify-full, not \(mode.rawValue)")
        }
        return PostgresStoreURL(scheme: scheme, endpoint: endpoint, user: user, database: database, tlsMode: mode,
                                trustRootsPath: trustRoots, password: password, passwordFile: passwordFile, connectTimeoutSeconds: timeout)
    }

    private static func parsePort(_ text: Substring, in url: String) throws(AuditError) -> Int {
        guard let port = Int(text), (1...65535).contains(port), text.allSatisfy(\.isASCII) else {
            throw StoreURL.invalid(url, "the port \(text.isEmpty ? "(empty)" : String(text)) is not a number from 1 to 65535")
        }
        return port
    }

    public init(scheme: String, endpoint: Endpoint, user: String?, database: String, tlsMode: TLSMode, trustRootsPath: String?,
                password: String?, passwordFile: String?, connectTimeoutSeconds: Int) {
        self.scheme = scheme
        self.endpoint = endpoint
        self.user = user
        self.database = database
        self.tlsMode = tlsMode
        self.trustRootsPath = trustRootsPath
        self.password = password
        self.passwordFile = passwordFile
        self.connectTimeoutSeconds = connectTimeoutSeconds
    }

    /// The URL without its password: user, endpoint, database and the TLS mode.
    public var description: String {
        var text = scheme + "://"
        if let user { text += Self.escaped(user) + (password != nil ? ":***" : "") + "@" }
        var query: [String] = []
        switch endpoint {
        case .tcp(let host, let port):
            text += (host.contains(":") ? "[\(host)]" : Self.escaped(host)) + (port == Self.defaultPort ? "" : ":\(port)")
        case .unixSocket(let path):
            let slash = path.lastIndex(of: "/") ?? path.startIndex
            query.append("host=" + Self.escaped(String(path[..<slash])))
            let portText = path[path.index(after: slash)...].dropFirst(".s.PGSQL.".count)
            if portText != "\(Self.defaultPort)" { query.append("port=\(portText)") }
        }
        text += "/" + Self.escaped(database)
        if case .tcp = endpoint { query.append("sslmode=\(tlsMode.rawValue)") }
        if let trustRootsPath { query.append("sslrootcert=" + Self.escaped(trustRootsPath)) }
        if let passwordFile { query.append("passwordFile=" + Self.escaped(passwordFile)) }
        return query.isEmpty ? text : text + "?" + query.joined(separator: "&")
    }

    private static func escaped(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"), UInt8(ascii: "/"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                out += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return out
    }

    /// Where the password comes from, first found wins: the URL's user-info, its `passwordFile=`,
    /// the file named by `$STOCKADE_STORE_PASSWORD_FILE`, `$PGPASSWORD`; nil when none (trust or peer
    /// authentication). A password file must be a regular file that neither group nor others can read
    /// or write; its first line is the password.
    public func resolvingPassword(environment: [String: String]) throws(AuditError) -> String? {
        if let password { return password }
        if let file = passwordFile ?? environment["STOCKADE_STORE_PASSWORD_FILE"].flatMap({ $0.isEmpty ? nil : $0 }) {
            let source = passwordFile != nil ? "passwordFile=" : "$STOCKADE_STORE_PASSWORD_FILE"
            return try Self.readPasswordFile(file, source: source, store: description)
        }
        if let password = environment["PGPASSWORD"], !password.isEmpty { return password }
        return nil
    }

    static func readPasswordFile(_ path: String, source: String, store: String) throws(AuditError) -> String {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else {
            let code = errno
            throw AuditError(.keyFile, path: path, errno: code,
                             "cannot open the store password file (\(source)) for \(store): \(String(cString: strerror(code))); it must be a regular file, not a symlink")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
            throw AuditError(.keyFile, path: path, "the store password file (\(source)) is not a regular file")
        }
        guard st.st_mode & 0o077 == 0 else {
            throw AuditError(.keyFile, path: path,
                             "the store password file (\(source)) can be read or written by group or others (mode \(String(st.st_mode & 0o777, radix: 8))): chmod 600 it")
        }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while bytes.count <= 64 * 1024 {
            let n = read(fd, &buffer, buffer.count)
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else {
                throw AuditError(.keyFile, path: path, errno: errno, "cannot read the store password file (\(source))")
            }
            if n == 0 { break }
            bytes += buffer[..<n]
        }
        let line = bytes.split(separator: UInt8(ascii: "\n"), maxSplits: 1, omittingEmptySubsequences: false).first ?? []
        let trimmed = line.last == UInt8(ascii: "\r") ? line.dropLast() : line
        guard !trimmed.isEmpty, let password = String(validating: Array(trimmed), as: UTF8.self) else {
            throw AuditError(.keyFile, path: path, "the store password file (\(source)) is empty or its first line is not UTF-8 text")
        }
        return password
    }
}

private extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
