import Crypto
import FoundationEssentials
import Glibc
import StockadePolicy

/// A profile ready to run, with where it came from and its digest (SHA-256 of
/// the resolved profile's canonical JSON, recorded in the audit trail).
public struct LoadedProfile: Sendable {
    public var profile: Profile
    public var source: String
    public var digest: String
}

/// Finds profiles by name or path: `$STOCKADE_PROFILES_DIR`, then the
/// project's `Profiles/` folder, then the profiles built into the binary.
public struct ProfileCatalog: Sendable {
    public var directories: [String]

    public init(directories: [String]) {
        self.directories = directories
    }

    /// The standard search path for this process.
    public static func standard() -> ProfileCatalog {
        var dirs: [String] = []
        if let env = getenv("STOCKADE_PROFILES_DIR") { dirs.append(String(cString: env)) }
        if let project = projectProfilesDirectory() { dirs.append(project) }
        return ProfileCatalog(directories: dirs)
    }

    /// `Profiles/` of the source tree this binary was built from, found by
    /// walking up from the executable (`.build/<config>/stockade`).
    static func projectProfilesDirectory() -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        var dir = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        for _ in 0..<5 {
            guard let slash = dir.lastIndex(of: "/"), slash != dir.startIndex else { return nil }
            dir = String(dir[..<slash])
            if access(dir + "/Package.swift", F_OK) == 0, access(dir + "/Profiles", F_OK) == 0 { return dir + "/Profiles" }
        }
        return nil
    }

    /// Loads and resolves `nameOrPath` (a path when it contains `/` or ends in `.json`).
    public func load(_ nameOrPath: String) throws(ProfileError) -> LoadedProfile {
        var seen: [String] = []
        let (profile, source) = try resolve(nameOrPath, seen: &seen)
        let canonical = profile.jsonValue.serialized()
        let digest = SHA256.hash(data: Array(canonical.utf8)).map { String(format: "%02x", $0) }.joined()
        return LoadedProfile(profile: profile, source: source, digest: digest)
    }

    private func resolve(_ nameOrPath: String, seen: inout [String]) throws(ProfileError) -> (Profile, String) {
        let (document, source) = try read(nameOrPath)
        if seen.contains(source) {
            throw ProfileError(source: source, issues: [ProfileIssue("extends", "cycle: \((seen + [source]).joined(separator: " -> "))")])
        }
        seen.append(source)
        guard seen.count <= 8 else {
            throw ProfileError(source: source, issues: [ProfileIssue("extends", "more than 8 levels of extends")])
        }
        var base = Profile()
        if let parent = ProfileDecoder.extends(of: document) {
            base = try resolve(parent, seen: &seen).0
        }
        var profile = try ProfileDecoder.decode(document, onto: base, source: source)
        if document.object?["name"] == nil {
            profile.name = ProfileCatalog.isPath(nameOrPath) ? ProfileCatalog.stem(nameOrPath) : nameOrPath
        }
        return (profile, source)
    }

    static func isPath(_ s: String) -> Bool { s.contains("/") || s.hasSuffix(".json") }

    static func stem(_ path: String) -> String {
        let file = path.split(separator: "/").last.map(String.init) ?? path
        return file.hasSuffix(".json") ? String(file.dropLast(5)) : file
    }

    private func read(_ nameOrPath: String) throws(ProfileError) -> (JSONValue, String) {
        if ProfileCatalog.isPath(nameOrPath) {
            return (try parse(file: nameOrPath), nameOrPath)
        }
        guard ProfileDecoder.isValidName(nameOrPath) else {
            throw ProfileError(source: nil, issues: [ProfileIssue("profile", "not a profile name or path: \(nameOrPath)")])
        }
        for dir in directories {
            let path = dir + "/" + nameOrPath + ".json"
            if access(path, F_OK) == 0 { return (try parse(file: path), path) }
        }
        if let text = BuiltinProfiles.documents[nameOrPath] {
            return (try parse(Array(text.utf8), source: "builtin:\(nameOrPath)"), "builtin:\(nameOrPath)")
        }
        let searched = (directories + ["the built-in profiles"]).joined(separator: ", ")
        throw ProfileError(source: nil, issues: [ProfileIssue("profile", "no profile named \(nameOrPath) in \(searched)")])
    }

    private func parse(file path: String) throws(ProfileError) -> JSONValue {
        let bytes: [UInt8]
        do {
            bytes = try FileReading.read(path, limit: 1 << 20)
        } catch {
            throw ProfileError(source: path, issues: [ProfileIssue("", error.description)])
        }
        return try parse(bytes, source: path)
    }

    private func parse(_ bytes: [UInt8], source: String) throws(ProfileError) -> JSONValue {
        do {
            return try StrictJSON.parse(bytes, limits: StrictJSON.Limits(maxBytes: 1 << 20, maxDepth: 16))
        } catch {
            throw ProfileError(source: source, issues: [ProfileIssue("", "not valid JSON: \(error)")])
        }
    }
}
