import Crypto
import FoundationEssentials
import Glibc
import StockadePolicy
import Synchronization

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

    /// Every profile this catalogue can name: the built-in ones and each `NAME.json` directly in its
    /// directories (a name found twice once: the first directory wins, as `load` finds it), sorted.
    public func names() -> [String] {
        var found = Set(BuiltinProfiles.documents.keys)
        for directory in directories {
            guard let dir = opendir(directory) else { continue }
            defer { closedir(dir) }
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self) }
                guard name.hasSuffix(".json"), !name.hasPrefix("."), name.count > 5 else { continue }
                found.insert(String(name.dropLast(5)))
            }
        }
        return found.sorted()
    }

    /// Loads and resolves `nameOrPath` (a path when it contains `/` or ends in `.json`).
    ///
    /// A batch loads the same profile for every run: the resolved profile is kept with, for every link
    /// of its `extends` chain, the name asked for, the file it led to and that file's bytes, and reused
    /// only while every name still leads to the same file with the same bytes. Reading a few small files
    /// is cheap; parsing, decoding and digesting them is what is saved. Nothing is trusted on timestamps.
    public func load(_ nameOrPath: String) throws(ProfileError) -> LoadedProfile {
        let key = directories.joined(separator: "\u{0}") + "\u{0}" + nameOrPath
        if let entry = Self.cache.withLock({ $0[key] }), entry.stamps.allSatisfy({ isCurrent($0) }) {
            return entry.loaded
        }
        var seen: [String] = []
        var stamps: [SourceStamp] = []
        let (profile, source) = try resolve(nameOrPath, seen: &seen, stamps: &stamps)
        let canonical = profile.jsonValue.serialized()
        let digest = Hex.lowercase(SHA256.hash(data: Array(canonical.utf8)))
        let loaded = LoadedProfile(profile: profile, source: source, digest: digest)
        Self.cache.withLock { cache in
            if cache.count >= Self.cacheLimit { cache.removeAll() }
            cache[key] = CacheEntry(loaded: loaded, stamps: stamps)
        }
        return loaded
    }

    /// One link of a resolved chain: the name or path asked for, where it led, and the bytes read there.
    struct SourceStamp: Sendable {
        let nameOrPath: String
        let source: String
        let builtin: Bool
        let bytes: [UInt8]
    }

    struct CacheEntry: Sendable {
        let loaded: LoadedProfile
        let stamps: [SourceStamp]
    }

    private static let cache = Mutex<[String: CacheEntry]>([:])
    private static let cacheLimit = 64

    private func isCurrent(_ stamp: SourceStamp) -> Bool {
        guard let now = try? locate(stamp.nameOrPath), now.source == stamp.source, now.builtin == stamp.builtin else { return false }
        return (try? bytes(of: now.source, builtin: now.builtin)) == stamp.bytes
    }

    private func resolve(_ nameOrPath: String, seen: inout [String], stamps: inout [SourceStamp]) throws(ProfileError) -> (Profile, String) {
        let (source, builtin) = try locate(nameOrPath)
        let text = try bytes(of: source, builtin: builtin)
        let document = try parse(text, source: source)
        stamps.append(SourceStamp(nameOrPath: nameOrPath, source: source, builtin: builtin, bytes: text))
        if seen.contains(source) {
            throw ProfileError(source: source, issues: [ProfileIssue("extends", "cycle: \((seen + [source]).joined(separator: " -> "))")])
        }
        seen.append(source)
        guard seen.count <= 8 else {
            throw ProfileError(source: source, issues: [ProfileIssue("extends", "more than 8 levels of extends")])
        }
        var base = Profile()
        if let parent = ProfileDecoder.extends(of: document) {
            base = try resolve(Self.relative(parent, to: source, builtin: builtin), seen: &seen, stamps: &stamps).0
        }
        var profile = try ProfileDecoder.decode(document, onto: base, source: source)
        if document.object?["name"] == nil {
            profile.name = ProfileCatalog.isPath(nameOrPath) ? ProfileCatalog.stem(nameOrPath) : nameOrPath
        }
        return (profile, source)
    }

    static func isPath(_ s: String) -> Bool { s.contains("/") || s.hasSuffix(".json") }

    /// A relative `extends` path read from the profile file `source` names a
    /// file beside it, wherever the supervisor was started; names and absolute
    /// paths are left as they are.
    static func relative(_ parent: String, to source: String, builtin: Bool) -> String {
        guard !builtin, isPath(parent), !parent.hasPrefix("/") else { return parent }
        guard let slash = source.lastIndex(of: "/") else { return parent }
        return String(source[...slash]) + parent
    }

    static func stem(_ path: String) -> String {
        let file = path.split(separator: "/").last.map(String.init) ?? path
        return file.hasSuffix(".json") ? String(file.dropLast(5)) : file
    }

    /// Where `nameOrPath` leads: the path itself, the first `<dir>/<name>.json` that exists, or
    /// `builtin:<name>`.
    private func locate(_ nameOrPath: String) throws(ProfileError) -> (source: String, builtin: Bool) {
        if ProfileCatalog.isPath(nameOrPath) { return (nameOrPath, false) }
        guard ProfileDecoder.isValidName(nameOrPath) else {
            throw ProfileError(source: nil, issues: [ProfileIssue("profile", "not a profile name or path: \(nameOrPath)")])
        }
        for dir in directories {
            let path = dir + "/" + nameOrPath + ".json"
            if access(path, F_OK) == 0 { return (path, false) }
        }
        if BuiltinProfiles.documents[nameOrPath] != nil { return ("builtin:\(nameOrPath)", true) }
        let searched = (directories + ["the built-in profiles"]).joined(separator: ", ")
        throw ProfileError(source: nil, issues: [ProfileIssue("profile", "no profile named \(nameOrPath) in \(searched)")])
    }

    private func bytes(of source: String, builtin: Bool) throws(ProfileError) -> [UInt8] {
        if builtin, let text = BuiltinProfiles.documents[String(source.dropFirst("builtin:".count))] {
            return Array(text.utf8)
        }
        do {
            return try FileReading.read(source, limit: 1 << 20)
        } catch {
            throw ProfileError(source: source, issues: [ProfileIssue("", error.description)])
        }
    }

    private func parse(_ bytes: [UInt8], source: String) throws(ProfileError) -> JSONValue {
        do {
            return try StrictJSON.parse(bytes, limits: StrictJSON.Limits(maxBytes: 1 << 20, maxDepth: 16))
        } catch {
            throw ProfileError(source: source, issues: [ProfileIssue("", "not valid JSON: \(error)")])
        }
    }
}
