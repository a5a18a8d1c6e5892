import CStockade
import Crypto
import Glibc
import StockadePolicy
import SystemPackage

/// A run's accepted result bundle, read back from the run directory's `result/` (the supervisor's
/// verified copy) for readers such as the API: the manifest, which must hash to the SHA-256
/// recorded when the bundle was accepted, and its listed files, each opened beneath `result/`
/// (`openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, `O_NOFOLLOW`) and checked to be a regular
/// file of the listed size. Nothing but a listed path is ever opened.
public struct AcceptedResult: Sendable {
    public let manifest: BundleManifest
    public let manifestSHA256: String
    /// The run directory's `result/`.
    public let directory: String

    /// Bounds for reading the copy back: the manifest was within the run's own bounds when it was
    /// accepted, and it must hash to what was recorded then, so only sanity limits apply here.
    static let readingBounds: BundleBounds = {
        var bounds = BundleBounds()
        bounds.manifestBytes = 64 << 20
        bounds.jsonDepth = 64
        bounds.maxFiles = 1_000_000
        bounds.maxFileBytes = .max
        bounds.maxTotalBytes = .max
        bounds.maxPathLength = 1 << 16
        bounds.maxPathDepth = 1 << 12
        bounds.maxPatches = 1_000_000
        return bounds
    }()

    /// Reads `directory/manifest.json`; `expectedSHA256` is the manifest's SHA-256 from the
    /// `bundle.accepted` event (a copy that differs is refused, never served).
    public static func open(directory: String, expectedSHA256: String) throws(BundleError) -> AcceptedResult {
        let root = try openDirectory(directory)
        defer { close(root) }
        let name = BundleManifest.fileName
        let fd = stk_openat2(root, name, UInt64(O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY), 0, BundleCopy.confined)
        guard fd >= 0 else {
            throw BundleError(errno == ENOENT ? .missingFile : .bundleUnreadable, path: name, errno: errno,
                              "the accepted result's manifest.json cannot be opened in \(directory)")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
            throw BundleError(.specialFile, path: name, "the accepted result's manifest.json is not a regular file")
        }
        let bytes: [UInt8]
        switch DirectoryEntries.readAll(fd, limit: readingBounds.manifestBytes) {
        case .success(let read?): bytes = read
        case .success(nil): throw BundleError(.tooLarge, path: name, "the accepted result's manifest.json is larger than \(readingBounds.manifestBytes) bytes")
        case .failure(let error): throw BundleError(.bundleUnreadable, path: name, errno: error.rawValue, "cannot read the accepted result's manifest.json")
        }
        let digest = BundleReader.hex(SHA256.hash(data: bytes))
        guard digest == expectedSHA256 else {
            throw BundleError(.hashMismatch, path: name,
                              "the result manifest in \(directory) (SHA-256 \(digest)) is not the one accepted for the run (\(expectedSHA256)): it changed after the run")
        }
        let manifest = try BundleManifest.parse(bytes, bounds: readingBounds, role: .result)
        return AcceptedResult(manifest: manifest, manifestSHA256: digest, directory: directory)
    }

    /// The listed file whose path is exactly `path`, or nil.
    public func listed(_ path: String) -> BundleManifest.File? {
        manifest.files.first { Array($0.path.utf8) == Array(path.utf8) }
    }

    /// Why `path` (as bytes, e.g. percent-decoded from a URL) can never name a bundle file, or nil.
    public static func pathProblem(_ path: [UInt8]) -> String? {
        BundlePath.problem(path, bounds: readingBounds)
    }

    /// Opens a listed file for reading, confined beneath `result/` without following any link, and
    /// checks that it is a regular file with one link and the listed size. The caller closes it.
    public func open(_ file: BundleManifest.File) throws(BundleError) -> Int32 {
        let root = try Self.openDirectory(directory)
        defer { close(root) }
        let fd = stk_openat2(root, BundleCopy.cString(Array(file.path.utf8)), UInt64(O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY),
                             0, BundleCopy.confined)
        guard fd >= 0 else {
            let code = errno
            throw BundleError(code == ENOENT ? .missingFile : (code == ELOOP || code == EXDEV ? .symlink : .bundleUnreadable),
                              path: BundlePath.display(file.path), errno: code, "the accepted result's file cannot be opened")
        }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG, st.st_nlink == 1, Int64(st.st_size) == file.size else {
            close(fd)
            throw BundleError(.sizeMismatch, path: BundlePath.display(file.path),
                              "the accepted result's file is no longer the regular file of \(file.size) bytes that was accepted")
        }
        return fd
    }

    private static func openDirectory(_ directory: String) throws(BundleError) -> Int32 {
        let root = Glibc.open(directory, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard root >= 0 else {
            throw BundleError(errno == ENOENT ? .missingFile : .bundleUnreadable, path: directory, errno: errno,
                              "the run directory's result/ cannot be opened")
        }
        return root
    }
}
