import Glibc
import StockadePolicy

/// A run's secrets: the variables injected into the worker's environment
/// (and nowhere else), and the redactor every stored or shown byte of the
/// worker's output goes through (reports, logs, audit rows).
public struct RunSecrets: Sendable {
    /// (name, value) pairs for the worker's environment only.
    public var environment: [(String, String)]
    public var redactor: Redactor

    public init(environment: [(String, String)] = [], redactor: Redactor = .none) {
        self.environment = environment
        self.redactor = redactor
    }

    public static let none = RunSecrets()
}

/// Reads a profile's secrets. A secret file must be a regular file (a final
/// symlink is not followed) with mode 0600 or stricter, at most 64 KiB; one
/// trailing newline is dropped. A value shorter than 8 bytes is refused:
/// redacting it would garble ordinary output. A missing file or variable is
/// an error: a run never starts without a secret its profile names.
public enum SecretLoader {
    public static let maxBytes = 64 << 10
    public static let minimumLength = 8

    /// Every secret's value, or every problem, each naming its field (`secrets[1].file`).
    public static func load(_ secrets: [Profile.Secret], hostEnvironment: [String: String]) throws(ProfileError) -> RunSecrets {
        var issues: [ProfileIssue] = []
        var environment: [(String, String)] = []
        for (field, secret) in fields(secrets, issues: &issues) {
            switch value(of: secret, field: field, hostEnvironment: hostEnvironment) {
            case .value(let value): environment.append((secret.env, value))
            case .refused(let issue): issues.append(issue)
            }
        }
        if !issues.isEmpty { throw ProfileError(source: nil, issues: issues) }
        return RunSecrets(environment: environment, redactor: Redactor(secrets: environment.map(\.1)))
    }

    /// The problems `load` would find, without keeping any value. With no
    /// `hostEnvironment` (`stockade profile check`), `fromEnv` secrets are not
    /// looked up: the supervisor's environment is not the checker's.
    public static func check(_ secrets: [Profile.Secret], hostEnvironment: [String: String]?) -> [ProfileIssue] {
        var issues: [ProfileIssue] = []
        for (field, secret) in fields(secrets, issues: &issues) {
            if case .environment = secret.source, hostEnvironment == nil { continue }
            if case .refused(let issue) = value(of: secret, field: field, hostEnvironment: hostEnvironment ?? [:]) {
                issues.append(issue)
            }
        }
        return issues
    }

    /// Each secret with its field, and an issue for each variable named twice.
    static func fields(_ secrets: [Profile.Secret], issues: inout [ProfileIssue]) -> [(String, Profile.Secret)] {
        var seen: [String: Int] = [:]
        var out: [(String, Profile.Secret)] = []
        for (index, secret) in secrets.enumerated() {
            if let earlier = seen[secret.env] {
                issues.append(ProfileIssue("secrets[\(index)].env", "\(secret.env) is already the variable of secrets[\(earlier)]"))
                continue
            }
            seen[secret.env] = index
            out.append(("secrets[\(index)]", secret))
        }
        return out
    }

    enum SecretValue {
        case value(String)
        case refused(ProfileIssue)
    }

    static func value(of secret: Profile.Secret, field: String, hostEnvironment: [String: String]) -> SecretValue {
        let raw: [UInt8]
        let location: String
        switch secret.source {
        case .file(let path):
            location = "\(field).file"
            switch read(path) {
            case .success(let bytes): raw = bytes
            case .failure(let problem): return .refused(ProfileIssue(location, problem.reason))
            }
        case .environment(let name):
            location = "\(field).fromEnv"
            guard let value = hostEnvironment[name] else {
                return .refused(ProfileIssue(location, "\(name) is not set in the supervisor's environment"))
            }
            raw = Array(value.utf8)
        }
        var bytes = raw
        if bytes.last == 0x0A {
            bytes.removeLast()
            if bytes.last == 0x0D { bytes.removeLast() }
        }
        if bytes.count > maxBytes {
            return .refused(ProfileIssue(location, "the secret is larger than \(maxBytes / 1024) KiB"))
        }
        if bytes.contains(0) {
            return .refused(ProfileIssue(location, "the secret contains a NUL byte, which an environment variable cannot hold"))
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            return .refused(ProfileIssue(location, "the secret is not UTF-8 text"))
        }
        guard bytes.count >= minimumLength else {
            return .refused(ProfileIssue(location, "the secret is \(bytes.count) bytes; at least \(minimumLength) are needed so that redacting it cannot garble ordinary output"))
        }
        return .value(text)
    }

    struct Problem: Error {
        let reason: String
    }

    /// The file's bytes, read without following a final symlink and only if
    /// it is a regular file no one but its owner can read or write.
    static func read(_ path: String) -> Result<[UInt8], Problem> {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY)
        guard fd >= 0 else {
            let e = errno
            switch e {
            case ENOENT: return .failure(Problem(reason: "\(path) does not exist"))
            case ELOOP: return .failure(Problem(reason: "\(path) is a symbolic link; name the file itself"))
            default: return .failure(Problem(reason: "cannot open \(path): \(String(cString: strerror(e)))"))
            }
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            return .failure(Problem(reason: "cannot inspect \(path): \(String(cString: strerror(errno)))"))
        }
        guard st.st_mode & S_IFMT == S_IFREG else {
            return .failure(Problem(reason: "\(path) is not a regular file"))
        }
        let mode = st.st_mode & 0o7777
        guard mode & 0o7177 == 0 else {
            let octal = String(mode, radix: 8)
            return .failure(Problem(reason: "\(path) has mode \(String(repeating: "0", count: max(0, 4 - octal.count)) + octal); a secret file must be 0600 or stricter (chmod 600 \(path))"))
        }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16384)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { return .failure(Problem(reason: "cannot read \(path): \(String(cString: strerror(errno)))")) }
            if n == 0 { break }
            out += buffer[0..<n]
            // A trailing newline may follow the largest allowed value.
            if out.count > maxBytes + 2 {
                return .failure(Problem(reason: "\(path) is larger than \(maxBytes / 1024) KiB"))
            }
        }
        return .success(out)
    }
}
