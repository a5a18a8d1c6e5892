import Glibc
import StockadePolicy

/// `--env-file FILE` in docker's format: one `KEY=VALUE` a line (the value taken as written,
/// quotes included), `KEY` alone for the supervisor's own value (left out when it has none),
/// `#` comments and blank lines; leading whitespace is ignored. Errors name the file and line.
public enum EnvFile {
    public static func read(_ path: String, hostEnvironment: [String: String]) throws(RunValues.Invalid) -> [(String, String)] {
        return try parse(try contents(path), path: path, hostEnvironment: hostEnvironment)
    }

    /// The caller's own file, so links are followed and a pipe is read too (`--env-file <(...)`);
    /// at most 1 MiB.
    static func contents(_ path: String) throws(RunValues.Invalid) -> [UInt8] {
        func fail(_ reason: String) -> RunValues.Invalid { RunValues.Invalid(description: "--env-file \(path): \(reason)") }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw fail(String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG || st.st_mode & S_IFMT == S_IFIFO else {
            throw fail("not a regular file or a pipe")
        }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw fail(String(cString: strerror(errno))) }
            if n == 0 { return out }
            out += buffer[0..<n]
            if out.count > 1 << 20 { throw fail("larger than 1 MiB") }
        }
    }

    public static func parse(_ bytes: [UInt8], path: String, hostEnvironment: [String: String]) throws(RunValues.Invalid) -> [(String, String)] {
        var out: [(String, String)] = []
        for (index, raw) in bytes.split(separator: 0x0A, omittingEmptySubsequences: false).enumerated() {
            func fail(_ reason: String) -> RunValues.Invalid {
                RunValues.Invalid(description: "--env-file \(path):\(index + 1): \(reason)")
            }
            var line = raw
            if line.last == 0x0D { line = line.dropLast() }
            guard let text = String(validating: line, as: UTF8.self) else { throw fail("not valid UTF-8") }
            let trimmed = text.drop { $0 == " " || $0 == "\t" }
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            guard !trimmed.contains("\0") else { throw fail("holds a NUL byte") }
            let key: Substring, value: String?
            if let eq = trimmed.firstIndex(of: "=") {
                key = trimmed[..<eq]
                value = String(trimmed[trimmed.index(after: eq)...])
            } else {
                key = trimmed
                value = hostEnvironment[String(trimmed)]
                if value == nil && ProfileDecoder.isValidEnvName(String(key)) { continue }
            }
            guard ProfileDecoder.isValidEnvName(String(key)) else {
                throw fail("\"\(key)\" is not a variable name: write KEY=VALUE (letters, digits and _, not starting with a digit)")
            }
            if let value { out.append((String(key), value)) }
        }
        return out
    }
}
