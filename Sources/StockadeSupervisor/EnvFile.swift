import StockadePolicy

/// `--env-file FILE` in docker's format: one `KEY=VALUE` a line (the value taken as written,
/// quotes included), `KEY` alone for the supervisor's own value (left out when it has none),
/// `#` comments and blank lines; leading whitespace is ignored. Errors name the file and line.
public enum EnvFile {
    public static func read(_ path: String, hostEnvironment: [String: String]) throws(RunValues.Invalid) -> [(String, String)] {
        let bytes: [UInt8]
        do {
            bytes = try FileReading.read(path, limit: 1 << 20)
        } catch {
            throw RunValues.Invalid(description: "--env-file \(path): \(error.description)")
        }
        return try parse(bytes, path: path, hostEnvironment: hostEnvironment)
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
