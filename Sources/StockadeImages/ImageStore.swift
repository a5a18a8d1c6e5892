import CStockade
import Glibc
import StockadeBundles
import StockadePolicy

/// An imported image, as recorded under `<state>/images/names/`.
public struct ImageRecord: Sendable, Equatable {
    /// NAME:TAG.
    public var name: String
    /// The manifest's digest: what the report and `run.created` record.
    public var digest: Digest
    public var configDigest: Digest
    /// Layer blob digests, bottom first; each is a directory `<state>/images/layers/<hex>`.
    public var layers: [Digest]
    public var config: ImageConfig
    /// `User` of the config as ids inside the worker's namespace (nil: the profile's user).
    public var uid: UInt32?
    public var gid: UInt32?
    public var entries: Int
    public var bytes: Int64
    public var importedAt: Int64

    public var json: JSONValue {
        var o: [String: JSONValue] = [
            "name": .string(name), "digest": .string(digest.description), "config": .string(configDigest.description),
            "layers": .array(layers.map { .string($0.description) }),
            "env": .array(config.env.map { .string($0) }),
            "entries": .number(entries), "bytes": .number(bytes), "importedAt": .number(importedAt),
        ]
        if let e = config.entrypoint { o["entrypoint"] = .array(e.map { .string($0) }) }
        if let c = config.cmd { o["cmd"] = .array(c.map { .string($0) }) }
        if let w = config.workingDir { o["workingDir"] = .string(w) }
        if let u = config.user { o["user"] = .string(u) }
        if let uid { o["uid"] = .number(uid) }
        if let gid { o["gid"] = .number(gid) }
        return .object(o)
    }

    init(json: JSONValue, file: String) throws(ImageError) {
        func bad() -> ImageError { ImageError(.cache, entry: file, "the image record \(file) is damaged: remove it with `stockade image rm` and import again") }
        guard let o = json.object, let name = o["name"]?.string, let digest = o["digest"]?.string.flatMap(Digest.parse),
              let config = o["config"]?.string.flatMap(Digest.parse), let layers = o["layers"]?.array,
              let entries = o["entries"]?.exactInt64, let bytes = o["bytes"]?.exactInt64, let at = o["importedAt"]?.exactInt64 else { throw bad() }
        self.name = name
        self.digest = digest
        self.configDigest = config
        self.layers = []
        for layer in layers {
            guard let d = layer.string.flatMap(Digest.parse) else { throw bad() }
            self.layers.append(d)
        }
        func strings(_ key: String) -> [String]? { o[key]?.array?.compactMap(\.string) }
        var c = ImageConfig()
        c.env = strings("env") ?? []
        c.entrypoint = strings("entrypoint")
        c.cmd = strings("cmd")
        c.workingDir = o["workingDir"]?.string
        c.user = o["user"]?.string
        self.config = c
        uid = o["uid"]?.exactInt64.flatMap { UInt32(exactly: $0) }
        gid = o["gid"]?.exactInt64.flatMap { UInt32(exactly: $0) }
        self.entries = Int(entries)
        self.bytes = bytes
        importedAt = at
    }

    init(name: String, image: LayoutImage, uid: UInt32?, gid: UInt32?, entries: Int, bytes: Int64) {
        self.name = name
        digest = image.manifestDigest
        configDigest = image.configDigest
        layers = image.layers.map(\.digest)
        config = image.config
        self.uid = uid
        self.gid = gid
        self.entries = entries
        self.bytes = bytes
        importedAt = Int64(time(nil))
    }
}

/// What one import did.
public struct ImportResult: Sendable {
    public var record: ImageRecord
    /// Layers unpacked by this import, and layers another import had already unpacked.
    public var unpacked: [Digest: LayerStats]
    public var reused: [Digest]
}

/// The image cache under `<state>/images`: `layers/<sha256>/` (each layer unpacked once, named
/// by its blob's digest, renamed into place only when whole and verified), `names/` (one record
/// per NAME:TAG), `tmp/` (layers being unpacked), and `lock` (imports and runs hold it shared,
/// `gc` exclusive, so nothing in use is collected).
public struct ImageStore: Sendable {
    public let path: String
    public var bounds = ImageBounds()

    public init(stateDirectory: String) {
        path = stateDirectory + "/images"
    }

    public func layerPath(_ digest: Digest) -> String { path + "/layers/" + digest.hex }

    // MARK: Import

    /// Imports the image of the OCI layout at `layoutPath` (`PATH` or `PATH:REF` picks a manifest by
    /// its ref name) as `name` (NAME[:TAG], default `:latest`).
    public func importLayout(_ layoutPath: String, name: String?) throws(ImageError) -> ImportResult {
        var layoutDir = layoutPath
        var ref: String?
        if let colon = layoutPath.lastIndex(of: ":"), !layoutPath[layoutPath.index(after: colon)...].contains("/") {
            var st = stat()
            if stat(layoutPath, &st) != 0 {
                layoutDir = String(layoutPath[..<colon])
                ref = String(layoutPath[layoutPath.index(after: colon)...])
            }
        }
        let layout = try OCILayout(path: layoutDir, bounds: bounds)
        let image = try layout.image(tag: ref)
        let base = layoutDir.split(separator: "/").last.map(String.init) ?? "image"
        let fullName = try Self.normalize(name ?? (base.lowercased() + ":" + (image.refName ?? "latest")))

        let lock = try openLock(LOCK_SH)
        defer { close(lock) }
        let layers = try directory("layers")
        defer { close(layers) }
        let tmp = try directory("tmp")
        defer { close(tmp) }
        var budget = ImageBudget()
        var unpacked: [Digest: LayerStats] = [:]
        var reused: [Digest] = []
        // New layers wait in tmp/ until everything about the image has been checked (its user too), so
        // a refused import leaves none in layers/; those not moved there are removed on the way out.
        var staged: [(digest: Digest, work: String, stats: LayerStats)] = []
        defer { for layer in staged { try? HostileTree.remove(parent: tmp, name: layer.work) } }
        for descriptor in image.layers {
            var st = stat()
            if fstatat(layers, descriptor.digest.hex, &st, AT_SYMLINK_NOFOLLOW) == 0 || staged.contains(where: { $0.digest == descriptor.digest }) {
                reused.append(descriptor.digest)
                continue
            }
            let (work, stats) = try unpackLayer(descriptor, from: layout, tmp: tmp, budget: &budget)
            staged.append((descriptor.digest, work, stats))
        }
        let (uid, gid) = try resolveUser(image.config.user, layers: image.layers.map { digest in
            staged.first { $0.digest == digest.digest }.map { self.path + "/tmp/" + $0.work } ?? layerPath(digest.digest)
        })
        while let layer = staged.first {
            if stk_renameat2(tmp, layer.work, layers, layer.digest.hex, 1 /* RENAME_NOREPLACE */) == 0 {
                unpacked[layer.digest] = layer.stats
            } else if errno == EEXIST || errno == ENOTEMPTY {
                // Another import moved the same verified layer into place first: theirs is kept.
                reused.append(layer.digest)
                try? HostileTree.remove(parent: tmp, name: layer.work)
            } else {
                throw cacheError("layers/" + layer.digest.hex, errno, "cannot move the unpacked layer into place")
            }
            staged.removeFirst()
        }
        let stats = unpacked.values
        let record = ImageRecord(name: fullName, image: image, uid: uid, gid: gid,
                                 entries: stats.reduce(0) { $0 + $1.entries }, bytes: stats.reduce(0) { $0 + $1.bytes })
        try write(record)
        return ImportResult(record: record, unpacked: unpacked, reused: reused)
    }

    /// Unpacks into `tmp/`, checks the digest and syncs: the directory's name under `tmp/`, which the
    /// caller moves into `layers/` (or removes).
    private func unpackLayer(_ descriptor: Descriptor, from layout: OCILayout, tmp: Int32,
                             budget: inout ImageBudget) throws(ImageError) -> (work: String, stats: LayerStats) {
        let work = "\(descriptor.digest.hex).\(getpid()).\(UInt32.random(in: 0...UInt32.max))"
        guard mkdirat(tmp, work, 0o755) == 0 else { throw cacheError("tmp/" + work, errno, "cannot create a directory to unpack the layer into") }
        var keep = false
        defer { if !keep { try? HostileTree.remove(parent: tmp, name: work) } }
        let root = openat(tmp, work, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard root >= 0 else { throw cacheError("tmp/" + work, errno, "cannot open the layer's directory") }
        defer { close(root) }
        let blob = try layout.openBlob(descriptor)
        defer { close(blob) }
        var unpacker = LayerUnpacker(root: root, bounds: bounds, compression: OCILayout.layerTypes[descriptor.mediaType] ?? .none)
        let (digest, size): (Digest, Int64)
        do {
            (digest, size) = try unpacker.unpack(fd: blob, budget: &budget)
        } catch {
            throw ImageError(error.code, entry: error.entry, errno: error.errno, "layer \(descriptor.digest): \(error.message)")
        }
        guard digest == descriptor.digest, size == descriptor.size else {
            throw ImageError(.digestMismatch, entry: descriptor.digest.description,
                             "layer blob \(descriptor.digest) has SHA-256 \(digest.hex) and \(size) bytes: it is not what the manifest names (refused, nothing kept)")
        }
        // Every file of the layer on disk before it can be named verified: syncfs, since a sync of the
        // top directory alone leaves the files' data and the directories below it to writeback, and a
        // power cut could then leave a cached layer with empty files that is reused as it is.
        guard stk_syncfs(root) == 0 else { throw cacheError("tmp/" + work, errno, "cannot sync the layer's filesystem") }
        keep = true
        return (work, unpacker.stats)
    }

    /// `User` of the config as ids: numbers, or names looked up in the image's own /etc/passwd
    /// and /etc/group (the topmost layer that has them). Root, stated or implied, gives way to the
    /// profile's user.
    /// `layers`: each layer's directory, bottom first.
    private func resolveUser(_ user: String?, layers: [String]) throws(ImageError) -> (UInt32?, UInt32?) {
        guard let user, !user.isEmpty else { return (nil, nil) }
        // "user", "user:group": neither may be empty (":" or ":0" names no user; "0:" no group).
        let parts = user.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        guard parts.allSatisfy({ !$0.isEmpty }) else {
            throw ImageError(.badLayout, entry: "User", "the image's User \(user.debugDescription) has an empty user or group: expected USER or USER:GROUP")
        }
        func id(_ text: String, file: String) throws(ImageError) -> UInt32 {
            if let n = UInt32(text) { return n }
            for layer in layers.reversed() {
                guard let bytes = readImageFile(layer, file) else { continue }
                for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
                    let fields = line.split(separator: ":", omittingEmptySubsequences: false)
                    if fields.count >= 3, fields[0] == text, let n = UInt32(fields[2]) { return n }
                }
                break
            }
            throw ImageError(.badLayout, entry: "User", "the image's User \(user.debugDescription) names \(text.debugDescription), which is not in the image's /\(file)")
        }
        let uid = try id(parts[0], file: "etc/passwd")
        var gid = uid
        if parts.count == 2 {
            gid = try id(parts[1], file: "etc/group")
        } else if UInt32(parts[0]) == nil, let layer = layers.last(where: { readImageFile($0, "etc/passwd") != nil }),
                  let bytes = readImageFile(layer, "etc/passwd") {
            for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n") {
                let f = line.split(separator: ":", omittingEmptySubsequences: false)
                if f.count >= 4, f[0] == parts[0], let g = UInt32(f[3]) { gid = g }
            }
        }
        guard uid < LayerUnpacker.maxIds, gid < LayerUnpacker.maxIds else {
            throw ImageError(.badLayout, entry: "User", "the image's User \(user) is \(uid):\(gid), outside the \(LayerUnpacker.maxIds) ids of a worker's range")
        }
        if uid == 0 { return (nil, nil) }
        return (uid, gid)
    }

    /// `name` beneath the layer's directory, as the image has it: no link followed on the way (an
    /// image's `etc -> /etc`, or a chain of relative links, would otherwise have root read the host's
    /// files), opened without blocking, a regular file of at most 1 MiB; nil otherwise.
    private func readImageFile(_ layer: String, _ name: String) -> [UInt8]? {
        let dir = open(layer, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)
        guard dir >= 0 else { return nil }
        defer { close(dir) }
        let fd = stk_openat2(dir, name, UInt64(O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK), 0,
                             UInt64(STK_RESOLVE_BENEATH | STK_RESOLVE_NO_SYMLINKS))
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & Mode.type == Mode.regular, st.st_size <= 1 << 20 else { return nil }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        return n >= 0 ? Array(bytes.prefix(n)) : nil
    }

    // MARK: Names

    /// NAME[:TAG] with `:latest` added; names are lowercase [a-z0-9._/-], tags [A-Za-z0-9._-].
    public static func normalize(_ text: String) throws(ImageError) -> String {
        var name = text, tag = "latest"
        if let colon = text.lastIndex(of: ":"), !text[text.index(after: colon)...].contains("/") {
            name = String(text[..<colon])
            tag = String(text[text.index(after: colon)...])
        }
        let nameOK = !name.isEmpty && name.utf8.count <= 200 && name.utf8.allSatisfy {
            (0x61...0x7a).contains($0) || (0x30...0x39).contains($0) || $0 == 0x2e || $0 == 0x5f || $0 == 0x2d || $0 == 0x2f
        } && !name.hasPrefix("/") && !name.hasPrefix(".")
        let tagOK = !tag.isEmpty && tag.utf8.count <= 128 && tag.utf8.allSatisfy {
            (0x61...0x7a).contains($0) || (0x41...0x5a).contains($0) || (0x30...0x39).contains($0) || $0 == 0x2e || $0 == 0x5f || $0 == 0x2d
        }
        guard nameOK, tagOK else {
            throw ImageError(.badName, entry: text, "image name \(text.debugDescription): use NAME[:TAG], NAME of a-z 0-9 . _ - /, TAG of A-Z a-z 0-9 . _ -")
        }
        let full = name + ":" + tag
        // The record's file is the name's hex, and its temporary file adds ".PID.tmp": both must fit in
        // a file name (255 bytes), checked before any layer is unpacked.
        guard full.utf8.count <= maxNameBytes else {
            throw ImageError(.badName, entry: text, "image name \(full.debugDescription) is \(full.utf8.count) bytes with its tag: at most \(maxNameBytes)")
        }
        return full
    }

    /// NAME:TAG at most this long.
    public static let maxNameBytes = 119

    private static func fileName(_ name: String) -> String {
        name.utf8.map { b in let s = String(b, radix: 16); return s.count == 1 ? "0" + s : s }.joined() + ".json"
    }

    private func write(_ record: ImageRecord) throws(ImageError) {
        let names = try directory("names")
        defer { close(names) }
        let file = Self.fileName(record.name)
        let temp = file + ".\(getpid()).tmp"
        let bytes = Array(record.json.serialized(pretty: true).utf8)
        let fd = openat(names, temp, O_CREAT | O_TRUNC | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw cacheError("names/" + temp, errno, "cannot write the image record") }
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        let ok = n == bytes.count && fsync(fd) == 0
        close(fd)
        guard ok, renameat(names, temp, names, file) == 0 else {
            _ = unlinkat(names, temp, 0)
            throw cacheError("names/" + file, errno, "cannot write the image record")
        }
    }

    /// Every imported image, by name.
    public func list() throws(ImageError) -> [ImageRecord] {
        guard let dir = opendir(path + "/names") else {
            if errno == ENOENT { return [] }
            throw cacheError("names", errno, "cannot list the images")
        }
        defer { closedir(dir) }
        var records: [ImageRecord] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            guard name.hasSuffix(".json"), !name.hasPrefix(".") else { continue }
            records.append(try readRecord(path + "/names/" + name))
        }
        return records.sorted { $0.name < $1.name }
    }

    private func readRecord(_ file: String) throws(ImageError) -> ImageRecord {
        let fd = open(file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw cacheError(file, errno, "cannot read the image record") }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 1 << 20)
        let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        guard n > 0, n < bytes.count else { throw cacheError(file, errno, "cannot read the image record") }
        do {
            return try ImageRecord(json: try StrictJSON.parse(Array(bytes.prefix(n)), limits: .init(maxBytes: 1 << 20, maxDepth: 8)), file: file)
        } catch let error as ImageError {
            throw error
        } catch {
            throw ImageError(.cache, entry: file, "the image record \(file) is not strict JSON: \(error)")
        }
    }

    /// The image named NAME[:TAG], or whose manifest digest is `sha256:...` (a unique prefix of 12+ hex digits will do).
    public func find(_ reference: String) throws(ImageError) -> ImageRecord {
        let all = try list()
        if reference.hasPrefix("sha256:") {
            let hex = reference.dropFirst(7)
            let matches = all.filter { hex.count >= 12 && $0.digest.hex.hasPrefix(hex) }
            if let first = matches.first, matches.allSatisfy({ $0.digest == first.digest }) { return first }
        } else if let name = try? Self.normalize(reference), let record = all.first(where: { $0.name == name }) {
            return record
        }
        throw ImageError(.notFound, entry: reference, "no image \(reference) in \(path): import one with `stockade image import PATH --name NAME`; `stockade image list` shows what there is")
    }

    /// Removes the name; its layers stay until `gc` finds no image using them.
    public func remove(_ reference: String) throws(ImageError) {
        let record = try find(reference)
        guard unlink(path + "/names/" + Self.fileName(record.name)) == 0 else {
            throw cacheError("names/" + record.name, errno, "cannot remove the image record")
        }
    }

    /// Whether every layer of `record` is in the cache.
    public func verifyPresent(_ record: ImageRecord) throws(ImageError) {
        for layer in record.layers {
            var st = stat()
            guard lstat(layerPath(layer), &st) == 0, st.st_mode & Mode.type == Mode.directory else {
                throw ImageError(.cache, entry: layer.description, "image \(record.name): layer \(layer) is missing from the cache: import the image again")
            }
        }
    }

    // MARK: Garbage collection

    /// Removes layers no image record names and half-unpacked leftovers; skipped (empty result)
    /// while an import or a run holds the cache.
    public func collectGarbage() throws(ImageError) -> (removed: [String], busy: Bool) {
        var st = stat()
        guard stat(path, &st) == 0 else { return ([], false) }
        let lock = open(path + "/lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard lock >= 0 else { throw cacheError("lock", errno, "cannot open the image cache's lock") }
        defer { close(lock) }
        guard flock(lock, LOCK_EX | LOCK_NB) == 0 else { return ([], true) }
        let used = Set(try list().flatMap { $0.layers.map(\.hex) })
        var removed: [String] = []
        for sub in ["tmp", "layers"] {
            guard let dir = opendir(path + "/" + sub) else { continue }
            var names: [String] = []
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
                if name == "." || name == ".." { continue }
                if sub == "tmp" || !used.contains(name) { names.append(name) }
            }
            closedir(dir)
            let parent = open(path + "/" + sub, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard parent >= 0 else { continue }
            defer { close(parent) }
            for name in names {
                do {
                    try HostileTree.remove(parent: parent, name: name)
                } catch {
                    throw ImageError(.cache, entry: name, "cannot remove \(sub)/\(name): \(error)")
                }
                if sub == "layers" { removed.append("sha256:" + name) }
            }
        }
        return (removed, false)
    }

    /// A shared hold on the cache for a run's lifetime: `gc` leaves every layer alone while it is open.
    public func hold() throws(ImageError) -> Int32 { try openLock(LOCK_SH) }

    // MARK: Files

    private func openLock(_ operation: Int32) throws(ImageError) -> Int32 {
        try makeRoot()
        let fd = open(path + "/lock", O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw cacheError("lock", errno, "cannot open the image cache's lock") }
        while flock(fd, operation) != 0 {
            guard errno == EINTR else {
                close(fd)
                throw cacheError("lock", errno, "cannot lock the image cache")
            }
        }
        return fd
    }

    private func makeRoot() throws(ImageError) {
        var prefix = ""
        for part in path.split(separator: "/") {
            prefix += "/" + part
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST { throw cacheError(prefix, errno, "cannot create the image cache") }
        }
        var st = stat()
        guard lstat(path, &st) == 0, st.st_mode & Mode.type == Mode.directory, st.st_uid == geteuid() else {
            throw ImageError(.cache, entry: path, "\(path) must be a directory owned by the supervisor's user (not a link)")
        }
        if st.st_mode & 0o077 != 0 { _ = chmod(path, 0o700) }
    }

    private func directory(_ name: String) throws(ImageError) -> Int32 {
        try makeRoot()
        if mkdir(path + "/" + name, 0o700) != 0 && errno != EEXIST { throw cacheError(name, errno, "cannot create the cache directory") }
        let fd = open(path + "/" + name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw cacheError(name, errno, "cannot open the cache directory") }
        return fd
    }

    private func cacheError(_ entry: String, _ code: Int32, _ what: String) -> ImageError {
        ImageError(.cache, entry: entry, errno: code, "\(path)/\(entry): \(what): \(String(cString: strerror(code)))")
    }
}
