import CStockade
import Glibc
import StockadePolicy

/// A content descriptor of an OCI manifest or index: what a blob is and which blob.
public struct Descriptor: Sendable, Equatable {
    public var mediaType: String
    public var digest: Digest
    public var size: Int64
    public var annotations: [String: String] = [:]
}

/// The defaults an image's config gives a run.
public struct ImageConfig: Sendable, Equatable {
    public var env: [String] = []
    public var entrypoint: [String]?
    public var cmd: [String]?
    public var workingDir: String?
    public var user: String?
    public init() {}
}

/// One image as read from a layout: the manifest's digest, its config and its layers, bottom first.
public struct LayoutImage: Sendable {
    public var manifestDigest: Digest
    public var configDigest: Digest
    public var config: ImageConfig
    public var layers: [Descriptor]
    /// The `org.opencontainers.image.ref.name` the index gave the manifest, if any.
    public var refName: String?
}

/// An OCI image layout directory read as hostile input. Every blob is opened beneath the
/// layout with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` under a name made only from a
/// checked digest, so no descriptor reaches outside `blobs/sha256/`; every JSON blob is bounded,
/// checked against its descriptor's size and SHA-256, then parsed by the strict parser.
public final class OCILayout {
    public let path: String
    let directory: Int32
    let bounds: ImageBounds

    static let layerTypes: [String: LayerCompression] = [
        "application/vnd.oci.image.layer.v1.tar": .none,
        "application/vnd.oci.image.layer.v1.tar+gzip": .gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd": .zstd,
        "application/vnd.oci.image.layer.nondistributable.v1.tar": .none,
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": .gzip,
        "application/vnd.docker.image.rootfs.diff.tar.gzip": .gzip,
    ]
    static let manifestType = "application/vnd.oci.image.manifest.v1+json"
    static let indexType = "application/vnd.oci.image.index.v1+json"

    public init(path: String, bounds: ImageBounds) throws(ImageError) {
        self.path = path
        self.bounds = bounds
        directory = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard directory >= 0 else {
            throw ImageError(.badLayout, entry: path, errno: errno,
                             "cannot open the image layout \(path): \(String(cString: strerror(errno))); give a directory as `skopeo copy ... oci:DIR` or `umoci` writes it")
        }
    }

    deinit { close(directory) }

    /// The image of the layout: the manifest whose ref name is `tag`, else the only one.
    public func image(tag: String?) throws(ImageError) -> LayoutImage {
        let layout = try readJSONFile("oci-layout")
        guard layout.object?["imageLayoutVersion"]?.string == "1.0.0" else {
            throw ImageError(.badLayout, entry: "oci-layout", "\(path)/oci-layout: imageLayoutVersion must be \"1.0.0\"")
        }
        var manifest = try pick(from: try readJSONFile("index.json"), in: "index.json", tag: tag)
        var depth = 0
        while manifest.mediaType == Self.indexType {
            depth += 1
            guard depth <= 4 else { throw ImageError(.badLayout, entry: manifest.digest.description, "indexes nested deeper than 4") }
            manifest = try pick(from: try readJSONBlob(manifest), in: manifest.digest.description, tag: nil)
        }
        let refName = manifest.annotations["org.opencontainers.image.ref.name"]
        guard manifest.mediaType == Self.manifestType else {
            throw ImageError(.badLayout, entry: manifest.digest.description, "manifest \(manifest.digest) has media type \(manifest.mediaType); only \(Self.manifestType) is read")
        }
        let document = try readJSONBlob(manifest)
        let where_ = "manifest \(manifest.digest)"
        guard let object = document.object, let configValue = object["config"], let layerValues = object["layers"]?.array else {
            throw ImageError(.badLayout, entry: manifest.digest.description, "\(where_): needs \"config\" and \"layers\"")
        }
        let configDescriptor = try descriptor(configValue, "\(where_).config")
        guard layerValues.count <= bounds.maxLayers else {
            throw ImageError(.overBound, entry: manifest.digest.description, "\(where_) has \(layerValues.count) layers, over the bound of \(bounds.maxLayers)")
        }
        var layers: [Descriptor] = []
        for (i, value) in layerValues.enumerated() {
            let layer = try descriptor(value, "\(where_).layers[\(i)]")
            guard Self.layerTypes[layer.mediaType] != nil else {
                throw ImageError(.badLayout, entry: layer.digest.description,
                                 "\(where_).layers[\(i)] has media type \(layer.mediaType): only tar, tar+gzip and tar+zstd layers are read")
            }
            guard layer.size <= bounds.maxLayerBlobBytes else {
                throw ImageError(.overBound, entry: layer.digest.description, "layer \(layer.digest) is \(layer.size) bytes, over the bound of \(bounds.maxLayerBlobBytes)")
            }
            layers.append(layer)
        }
        let config = try imageConfig(try readJSONBlob(configDescriptor), digest: configDescriptor.digest)
        return LayoutImage(manifestDigest: manifest.digest, configDigest: configDescriptor.digest, config: config, layers: layers, refName: refName)
    }

    private func pick(from index: JSONValue, in name: String, tag: String?) throws(ImageError) -> Descriptor {
        guard let manifests = index.object?["manifests"]?.array else {
            throw ImageError(.badLayout, entry: name, "\(name): needs a \"manifests\" array")
        }
        var all: [Descriptor] = []
        for (i, value) in manifests.enumerated() { all.append(try descriptor(value, "\(name).manifests[\(i)]")) }
        let refs = all.compactMap { $0.annotations["org.opencontainers.image.ref.name"] }
        if let tag {
            let matching = all.filter { $0.annotations["org.opencontainers.image.ref.name"] == tag }
            guard matching.count == 1, let only = matching.first else {
                throw ImageError(.notFound, entry: name, "\(name) has \(matching.count) manifests named \(tag) (names: \(refs.joined(separator: ", ")))")
            }
            return only
        }
        guard all.count == 1, let only = all.first else {
            throw ImageError(.badLayout, entry: name,
                             "\(name) lists \(all.count) manifests: name one with PATH:REF (refs: \(refs.joined(separator: ", ")))")
        }
        return only
    }

    func descriptor(_ value: JSONValue, _ field: String) throws(ImageError) -> Descriptor {
        guard let o = value.object, let mediaType = o["mediaType"]?.string, let digestText = o["digest"]?.string,
              let size = o["size"]?.exactInt64, size >= 0 else {
            throw ImageError(.badDescriptor, entry: field, "\(field): a descriptor needs mediaType, digest and a non-negative integer size")
        }
        guard let digest = Digest(digestText) else {
            throw ImageError(.badDescriptor, entry: field,
                             "\(field) names blob \(digestText.debugDescription): not sha256: and 64 lowercase hex digits, so not a blob under blobs/sha256/ (refused)")
        }
        var annotations: [String: String] = [:]
        for (k, v) in o["annotations"]?.object ?? [:] { if let s = v.string { annotations[k] = s } }
        return Descriptor(mediaType: mediaType, digest: digest, size: size, annotations: annotations)
    }

    /// The blob's descriptor, opened for reading: a regular file directly under `blobs/sha256/`.
    /// Opened without blocking (a FIFO put there would otherwise hold the import, and the layer
    /// cache's lock, until someone writes to it), then checked to be a regular file.
    func openBlob(_ d: Descriptor) throws(ImageError) -> Int32 {
        let fd = stk_openat2(directory, "blobs/sha256/" + d.digest.hex, UInt64(O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK), 0,
                             UInt64(STK_RESOLVE_BENEATH | STK_RESOLVE_NO_SYMLINKS))
        guard fd >= 0 else {
            throw ImageError(.badDescriptor, entry: d.digest.description, errno: errno,
                             "blob \(d.digest) (\(d.mediaType)): cannot open blobs/sha256/\(d.digest.hex) beneath \(path) without following a link: \(String(cString: strerror(errno)))")
        }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & Mode.type == Mode.regular, Int64(st.st_size) == d.size else {
            close(fd)
            throw ImageError(.digestMismatch, entry: d.digest.description,
                             "blob \(d.digest) is not a regular file of the descriptor's \(d.size) bytes")
        }
        return fd
    }

    private func readJSONFile(_ name: String) throws(ImageError) -> JSONValue {
        let fd = stk_openat2(directory, name, UInt64(O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK), 0, UInt64(STK_RESOLVE_BENEATH | STK_RESOLVE_NO_SYMLINKS))
        guard fd >= 0 else {
            throw ImageError(.badLayout, entry: name, errno: errno, "\(path)/\(name): \(String(cString: strerror(errno))); is this an OCI image layout?")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & Mode.type == Mode.regular else {
            throw ImageError(.badLayout, entry: name, "\(path)/\(name) is not a regular file")
        }
        return try parse(try readBounded(fd, name: name), name: name)
    }

    func readJSONBlob(_ d: Descriptor) throws(ImageError) -> JSONValue {
        guard d.size <= Int64(bounds.maxJSONBytes) else {
            throw ImageError(.overBound, entry: d.digest.description, "blob \(d.digest) is \(d.size) bytes, over the JSON bound of \(bounds.maxJSONBytes)")
        }
        let fd = try openBlob(d)
        defer { close(fd) }
        let bytes = try readBounded(fd, name: d.digest.description)
        let actual = Digest.of(bytes)
        guard actual == d.digest, Int64(bytes.count) == d.size else {
            throw ImageError(.digestMismatch, entry: d.digest.description,
                             "blob \(d.digest) has SHA-256 \(actual.hex) and \(bytes.count) bytes: it is not what the descriptor names (refused)")
        }
        return try parse(bytes, name: d.digest.description)
    }

    private func readBounded(_ fd: Int32, name: String) throws(ImageError) -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw ImageError(.badLayout, entry: name, errno: errno, "cannot read \(name): \(String(cString: strerror(errno)))") }
            if n == 0 { return bytes }
            bytes += chunk[0..<n]
            guard bytes.count <= bounds.maxJSONBytes else {
                throw ImageError(.overBound, entry: name, "\(name) is over the JSON bound of \(bounds.maxJSONBytes) bytes")
            }
        }
    }

    private func parse(_ bytes: [UInt8], name: String) throws(ImageError) -> JSONValue {
        do {
            return try StrictJSON.parse(bytes, limits: .init(maxBytes: bounds.maxJSONBytes, maxDepth: bounds.maxJSONDepth))
        } catch {
            throw ImageError(.badLayout, entry: name, "\(name) is not strict JSON: \(error)")
        }
    }

    private func imageConfig(_ document: JSONValue, digest: Digest) throws(ImageError) -> ImageConfig {
        let name = "config \(digest)"
        guard let root = document.object else { throw ImageError(.badLayout, entry: digest.description, "\(name) is not an object") }
        if let os = root["os"]?.string, os != "linux" {
            throw ImageError(.badLayout, entry: digest.description, "\(name) is for os \(os): only linux images run")
        }
        if let arch = root["architecture"]?.string, let host = Self.hostArchitecture, arch != host {
            throw ImageError(.badLayout, entry: digest.description, "\(name) is for architecture \(arch); this host runs \(host)")
        }
        var config = ImageConfig()
        guard let c = root["config"]?.object else { return config }
        func strings(_ key: String) throws(ImageError) -> [String]? {
            guard let v = c[key], v != .null else { return nil }
            guard let a = v.array else { throw ImageError(.badLayout, entry: digest.description, "\(name): config.\(key) must be an array of strings") }
            var out: [String] = []
            for item in a {
                guard let s = item.string else { throw ImageError(.badLayout, entry: digest.description, "\(name): config.\(key) must be an array of strings") }
                out.append(s)
            }
            return out
        }
        config.env = try strings("Env") ?? []
        for entry in config.env where !entry.contains("=") || entry.hasPrefix("=") {
            throw ImageError(.badLayout, entry: digest.description, "\(name): config.Env entry \(entry.debugDescription) is not NAME=VALUE")
        }
        config.entrypoint = try strings("Entrypoint")
        config.cmd = try strings("Cmd")
        if let dir = c["WorkingDir"]?.string, !dir.isEmpty {
            guard dir.hasPrefix("/"), !dir.split(separator: "/").contains("..") else {
                throw ImageError(.badLayout, entry: digest.description, "\(name): config.WorkingDir \(dir.debugDescription) must be an absolute path without ..")
            }
            config.workingDir = dir
        }
        if let user = c["User"]?.string, !user.isEmpty { config.user = user }
        return config
    }

    static let hostArchitecture: String? = {
        var u = utsname()
        guard uname(&u) == 0 else { return nil }
        let machine = withUnsafeBytes(of: u.machine) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        switch machine {
        case "x86_64": return "amd64"
        case "aarch64": return "arm64"
        default: return nil
        }
    }()
}

enum LayerCompression: Sendable { case none, gzip, zstd }
