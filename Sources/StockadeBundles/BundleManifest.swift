import StockadePolicy

/// A bundle's `manifest.json`, decoded strictly.
///
/// `{"version":1,"files":[{"path":"rel/path","size":N,"sha256":"hex"}],"patches":["patches/x.diff"],
/// "artifacts":["out/report.txt"],"command":["prog","arg"],"env":{"K":"V"}}`. `version` and `files`
/// are required; `patches` and `artifacts` default to empty and must name listed files; `command`
/// and `env` are allowed only in a request. Unknown keys are refused, so a manifest cannot carry
/// something one reader sees and another ignores.
public struct BundleManifest: Sendable, Equatable {
    public struct File: Sendable, Equatable {
        public var path: String
        public var size: Int64
        /// 64 lowercase hex digits.
        public var sha256: String

        public init(path: String, size: Int64, sha256: String) {
            self.path = path
            self.size = size
            self.sha256 = sha256
        }
    }

    /// The only manifest version this reader knows.
    public static let version = 1
    /// The manifest's name at the bundle root; no listed file may use it.
    public static let fileName = "manifest.json"

    public var files: [File]
    public var patches: [String]
    public var artifacts: [String]
    public var command: [String]?
    public var env: [String: String]?

    public init(files: [File], patches: [String] = [], artifacts: [String] = [], command: [String]? = nil, env: [String: String]? = nil) {
        self.files = files
        self.patches = patches
        self.artifacts = artifacts
        self.command = command
        self.env = env
    }

    /// Sum of the declared file sizes.
    public var declaredBytes: Int64 {
        files.reduce(0) { total, file in
            let (sum, overflow) = total.addingReportingOverflow(file.size)
            return overflow ? .max : sum
        }
    }

    /// Parses and decodes manifest bytes: the size bound first, then strict JSON with the bounds'
    /// depth, then the rules of `init(json:bounds:role:)`.
    public static func parse(_ bytes: [UInt8], bounds: BundleBounds, role: BundleRole) throws(BundleError) -> BundleManifest {
        guard Int64(bytes.count) <= bounds.manifestBytes else {
            throw BundleError(.tooLarge, path: fileName,
                              "the manifest is larger than the limit of \(bounds.manifestBytes) bytes; list fewer files or raise bundles.manifestBytes")
        }
        let limit = Int(clamping: bounds.manifestBytes)
        let json: JSONValue
        do {
            json = try StrictJSON.parse(bytes, limits: StrictJSON.Limits(maxBytes: limit, maxDepth: bounds.jsonDepth))
        } catch {
            throw BundleError(.badManifest, path: fileName, "the manifest is not strict JSON (\(error.reason.rawValue)): \(error)")
        }
        return try BundleManifest(json: json, bounds: bounds, role: role)
    }

    public init(json: JSONValue, bounds: BundleBounds, role: BundleRole) throws(BundleError) {
        guard case .object(let top) = json else {
            throw Self.bad("the manifest must be a JSON object, not \(json.typeName)")
        }
        let known: Set<String> = ["version", "files", "patches", "artifacts", "command", "env"]
        for key in top.keys.sorted() where !known.contains(key) {
            throw Self.bad("unknown key \(Self.quoted(key)); a manifest has only version, files, patches, artifacts, command and env")
        }
        guard let version = top["version"] else { throw Self.bad("the manifest has no \"version\"; write \"version\": 1") }
        guard case .number("1") = version else {
            throw Self.bad("unsupported manifest version \(Self.shown(version)); this reader knows only version 1")
        }
        guard let filesValue = top["files"] else { throw Self.bad("the manifest has no \"files\" array") }
        guard case .array(let items) = filesValue else { throw Self.bad("\"files\" must be an array, not \(filesValue.typeName)") }
        guard items.count <= bounds.maxFiles else {
            throw BundleError(.tooManyFiles, path: nil,
                              "the manifest lists \(items.count) files, more than the limit of \(bounds.maxFiles)")
        }

        var files: [File] = []
        files.reserveCapacity(items.count)
        var total: Int64 = 0
        var layout = Layout()
        for (index, item) in items.enumerated() {
            let file = try Self.file(item, index: index, bounds: bounds)
            try layout.add(file.path)
            let (sum, overflow) = total.addingReportingOverflow(file.size)
            total = sum
            guard !overflow, total <= bounds.maxTotalBytes else {
                throw BundleError(.tooLarge, path: BundlePath.display(file.path),
                                  "the declared sizes add up to more than the limit of \(bounds.maxTotalBytes) bytes")
            }
            files.append(file)
        }
        // Compared as bytes: Swift's String equality would let an NFD spelling name an NFC file.
        let listed = Set(files.map { Array($0.path.utf8) })

        let patches = try Self.references(top["patches"], key: "patches", listed: listed)
        guard patches.count <= bounds.maxPatches else {
            throw Self.bad("the manifest declares \(patches.count) patches, more than the limit of \(bounds.maxPatches)")
        }
        let artifacts = try Self.references(top["artifacts"], key: "artifacts", listed: listed)

        var command: [String]?
        var env: [String: String]?
        if let value = top["command"] {
            guard role == .request else { throw Self.bad("only a request bundle may carry \"command\"") }
            command = try Self.command(value)
        }
        if let value = top["env"] {
            guard role == .request else { throw Self.bad("only a request bundle may carry \"env\"") }
            env = try Self.environment(value)
        }
        self.init(files: files, patches: patches, artifacts: artifacts, command: command, env: env)
    }

    /// The manifest as JSON (keys sorted, so equal manifests serialise to equal bytes).
    public var jsonValue: JSONValue {
        var top: [String: JSONValue] = [
            "version": .number(Self.version),
            "files": .array(files.map { .object(["path": .string($0.path), "size": .number($0.size), "sha256": .string($0.sha256)]) }),
            "patches": .array(patches.map { .string($0) }),
            "artifacts": .array(artifacts.map { .string($0) }),
        ]
        if let command { top["command"] = .array(command.map { .string($0) }) }
        if let env { top["env"] = .object(env.mapValues { .string($0) }) }
        return .object(top)
    }

    /// The manifest.json bytes for this manifest.
    public var serialized: [UInt8] { Array(jsonValue.serialized(pretty: true).utf8) + [0x0A] }

    // MARK: - Decoding pieces

    private static func file(_ item: JSONValue, index: Int, bounds: BundleBounds) throws(BundleError) -> File {
        guard case .object(let fields) = item else { throw bad("files[\(index)] must be an object, not \(item.typeName)") }
        for key in fields.keys.sorted() where !["path", "size", "sha256"].contains(key) {
            throw bad("files[\(index)] has the unknown key \(quoted(key)); a file entry has only path, size and sha256")
        }
        guard case .string(let path)? = fields["path"] else { throw bad("files[\(index)] needs a string \"path\"") }
        if let problem = BundlePath.problem(Array(path.utf8), bounds: bounds) {
            throw BundleError(.badPath, path: BundlePath.display(path), "files[\(index)]: \(problem)")
        }
        if path == fileName {
            throw BundleError(.badPath, path: fileName, "files[\(index)]: \(fileName) is the manifest itself and cannot be listed")
        }
        guard let sizeValue = fields["size"] else { throw bad("files[\(index)] (\(BundlePath.display(path))) needs a \"size\"") }
        guard case .number(let sizeText) = sizeValue, !sizeText.isEmpty, sizeText.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
            throw BundleError(.badManifest, path: BundlePath.display(path),
                              "size \(shown(sizeValue)) is not an exact non-negative integer (no sign, fraction or exponent)")
        }
        guard let size = Int64(sizeText), size <= bounds.maxFileBytes else {
            throw BundleError(.tooLarge, path: BundlePath.display(path),
                              "declared size \(sizeText.prefix(40)) is more than the limit of \(bounds.maxFileBytes) bytes per file")
        }
        guard case .string(let digest)? = fields["sha256"], digest.utf8.count == 64,
              digest.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }) else {
            throw BundleError(.badManifest, path: BundlePath.display(path), "\"sha256\" must be 64 lowercase hex digits")
        }
        return File(path: path, size: size, sha256: digest)
    }

    /// `patches` or `artifacts`: distinct paths of listed files.
    private static func references(_ value: JSONValue?, key: String, listed: Set<[UInt8]>) throws(BundleError) -> [String] {
        guard let value else { return [] }
        guard case .array(let items) = value else { throw bad("\"\(key)\" must be an array of paths, not \(value.typeName)") }
        var seen = Set<[UInt8]>()
        var paths: [String] = []
        for (index, item) in items.enumerated() {
            guard case .string(let path) = item else { throw bad("\(key)[\(index)] must be a string, not \(item.typeName)") }
            guard listed.contains(Array(path.utf8)), seen.insert(Array(path.utf8)).inserted else {
                throw BundleError(.badManifest, path: BundlePath.display(path),
                                  seen.contains(Array(path.utf8)) ? "\(key) names this path twice" : "\(key)[\(index)] names a path that \"files\" does not list")
            }
            paths.append(path)
        }
        return paths
    }

    private static func command(_ value: JSONValue) throws(BundleError) -> [String] {
        guard case .array(let items) = value, !items.isEmpty else {
            throw bad("\"command\" must be a non-empty array of strings, e.g. [\"prog\", \"arg\"]")
        }
        var argv: [String] = []
        for (index, item) in items.enumerated() {
            guard case .string(let arg) = item else { throw bad("command[\(index)] must be a string, not \(item.typeName)") }
            guard !arg.utf8.contains(0) else { throw bad("command[\(index)] holds a NUL byte") }
            argv.append(arg)
        }
        if argv[0].isEmpty { throw bad("command[0], the program, is empty") }
        return argv
    }

    private static func environment(_ value: JSONValue) throws(BundleError) -> [String: String] {
        guard case .object(let members) = value else { throw bad("\"env\" must be an object of strings, not \(value.typeName)") }
        var env: [String: String] = [:]
        for key in members.keys.sorted() {
            guard !key.isEmpty, !key.utf8.contains(0), !key.utf8.contains(UInt8(ascii: "=")) else {
                throw bad("env key \(quoted(key)) is empty or holds '=' or NUL")
            }
            guard case .string(let text)? = members[key], !text.utf8.contains(0) else {
                throw bad("env[\(quoted(key))] must be a string without NUL bytes")
            }
            env[key] = text
        }
        return env
    }

    private static func bad(_ message: String) -> BundleError { BundleError(.badManifest, path: fileName, message) }

    private static func quoted(_ s: String) -> String {
        var out = ""
        JSONValue.quote(String(s.prefix(64)), into: &out)
        return out
    }

    private static func shown(_ value: JSONValue) -> String {
        String(value.serialized().prefix(64))
    }
}

/// The listed paths as a tree, refusing two paths that would be the same file on a
/// case-insensitive or normalising filesystem, a path listed twice, and a path that is both
/// a file and a directory of another listed file.
private struct Layout {
    var entries: [String: (exact: [UInt8], isDirectory: Bool)] = [:]

    mutating func add(_ path: String) throws(BundleError) {
        let bytes = Array(path.utf8)
        let key = BundlePath.collisionKey(path)
        if let existing = entries[key] {
            let what = existing.isDirectory ? "a directory of another listed file"
                : existing.exact == bytes ? "listed twice" : "the same as another listed path on a case-insensitive filesystem"
            throw BundleError(.duplicatePath, path: BundlePath.display(path), "this path is \(what)")
        }
        entries[key] = (bytes, false)
        var end = bytes.startIndex
        while let slash = bytes[end...].firstIndex(of: UInt8(ascii: "/")) {
            let directory = Array(bytes[..<slash])
            let directoryKey = BundlePath.collisionKey(String(decoding: directory, as: UTF8.self))
            if let existing = entries[directoryKey] {
                guard existing.isDirectory, existing.exact == directory else {
                    throw BundleError(.duplicatePath, path: BundlePath.display(path),
                                      "its directory \(BundlePath.display(directory)) collides with another listed path")
                }
            } else {
                entries[directoryKey] = (directory, true)
            }
            end = slash + 1
        }
    }
}
