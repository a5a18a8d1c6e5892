import CStockade
import Crypto
import Glibc
import StockadePolicy

/// Produces a valid bundle: the files, then a manifest listing their sizes and SHA-256 digests.
public enum BundleWriter {
    /// Writes `files` and `manifest.json` into `directory` (created with mode 0755 if missing;
    /// existing names are never overwritten). Checks everything the reader would check (path rules,
    /// collisions, bounds, patches and artifacts naming listed files) before writing anything.
    /// On failure, what this call wrote is removed.
    /// - Returns: the manifest that was written.
    @discardableResult
    public static func write(files: [(path: String, contents: [UInt8])], to directory: String,
                             patches: [String] = [], artifacts: [String] = [],
                             command: [String]? = nil, env: [String: String]? = nil,
                             bounds: BundleBounds = BundleBounds()) throws(BundleError) -> BundleManifest {
        let manifest = BundleManifest(
            files: files.map { BundleManifest.File(path: $0.path, size: Int64($0.contents.count), sha256: BundleReader.hex(SHA256.hash(data: $0.contents))) },
            patches: patches, artifacts: artifacts, command: command, env: env)
        let role: BundleRole = command == nil && env == nil ? .result : .request
        // The reader's own rules, so that a written bundle is one the reader accepts.
        let checked = try BundleManifest.parse(manifest.serialized, bounds: bounds, role: role)

        if mkdir(directory, 0o755) != 0 && errno != EEXIST {
            throw BundleError(.writeFailed, path: directory, errno: errno, "cannot create the bundle directory")
        }
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw BundleError(.writeFailed, path: directory, errno: errno, "cannot open the bundle directory") }
        defer { close(fd) }

        var copy = BundleCopy(directory: fd)
        do {
            for file in files { try copy.createFile(Array(file.path.utf8), contents: file.contents) }
            try copy.createFile(Array(BundleManifest.fileName.utf8), contents: manifest.serialized)
        } catch {
            copy.removeAll()
            throw BundleError(.writeFailed, path: error.path.map { directory + "/" + $0 }, errno: error.errno, "cannot write the bundle: \(error.message)")
        }
        return checked
    }
}
