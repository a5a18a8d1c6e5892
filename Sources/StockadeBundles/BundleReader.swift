import CStockade
import Crypto
import Glibc
import StockadePolicy

/// Reads a bundle the worker controls, byte by byte, without trusting any of it.
///
/// Steps, each bounded: (1) `manifest.json` is checked with `fstatat` (no open of a FIFO,
/// device, socket or link), opened confined and re-checked with `fstat`, read up to
/// `manifestBytes + 1` bytes and decoded strictly; (2) the whole tree is walked without following
/// links, counting entries as it goes, refusing links, special files, hard-linked files, bad
/// names and anything the manifest does not list; (3) each listed file is opened confined, checked
/// with `fstat`, read only up to its declared size + 1 while being hashed and, when a destination
/// is given, copied: the copy holds exactly the bytes that were hashed, so nothing can change
/// between verification and use. A rejected or failed read leaves no copy behind.
public enum BundleReader {
    /// - Parameters:
    ///   - directory: an `O_DIRECTORY` fd of the bundle root (not closed here).
    ///   - copyTo: an `O_DIRECTORY` fd where verified files and the manifest are written; it
    ///     should be empty (existing names are never overwritten: that fails the copy).
    public static func read(directory: Int32, bounds: BundleBounds, role: BundleRole, copyTo destination: Int32? = nil) -> BundleVerdict {
        var copy = destination.map { BundleCopy(directory: $0) }
        do {
            return .accepted(try verify(root: directory, bounds: bounds, role: role, copy: &copy))
        } catch {
            copy?.removeAll()
            if let rejection = BundleRejection(error) { return .rejected(rejection) }
            return .failed(error)
        }
    }

    /// `read(directory:...)` on paths: each is opened `O_DIRECTORY | O_NOFOLLOW`. A bundle
    /// directory that cannot be opened (absent, a link, not a directory) is a `failed` verdict.
    public static func read(path: String, bounds: BundleBounds, role: BundleRole, copyTo destinationPath: String? = nil) -> BundleVerdict {
        let root = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard root >= 0 else {
            return .failed(BundleError(.bundleUnreadable, path: path, errno: errno, "cannot open the bundle directory"))
        }
        defer { close(root) }
        guard let destinationPath else { return read(directory: root, bounds: bounds, role: role, copyTo: nil) }
        let destination = open(destinationPath, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard destination >= 0 else {
            return .failed(BundleError(.copyFailed, path: destinationPath, errno: errno, "cannot open the copy's destination directory"))
        }
        defer { close(destination) }
        return read(directory: root, bounds: bounds, role: role, copyTo: destination)
    }

    /// True when the directory holds no entry at all: a worker that left no result bundle
    /// (report `result.status` "none") rather than a broken one. Reads at most one entry.
    public static func isEmpty(directory: Int32) -> Bool {
        let fd = stk_openat2(directory, ".", UInt64(O_RDONLY | O_DIRECTORY | O_CLOEXEC), 0, BundleCopy.confined)
        guard fd >= 0, let stream = fdopendir(fd) else {
            if fd >= 0 { close(fd) }
            return false
        }
        defer { closedir(stream) }
        while let record = readdir(stream) {
            let name = withUnsafeBytes(of: &record.pointee.d_name) { raw in Array(raw.prefix { $0 != 0 }) }
            if name != [0x2E] && name != [0x2E, 0x2E] { return false }
        }
        return true
    }

    private static func verify(root: Int32, bounds: BundleBounds, role: BundleRole, copy: inout BundleCopy?) throws(BundleError) -> VerifiedBundle {
        let manifestBytes = try readManifest(root: root, bounds: bounds)
        let manifest = try BundleManifest.parse(manifestBytes, bounds: bounds, role: role)
        try TreeWalk(manifest: manifest, bounds: bounds).run(root: root)

        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var total: Int64 = 0
        for file in manifest.files {
            total += try readFile(file, root: root, bounds: bounds, total: total, buffer: &buffer, copy: &copy)
        }
        if copy != nil {
            try copy?.createFile(Array(BundleManifest.fileName.utf8), contents: manifestBytes)
        }
        return VerifiedBundle(manifest: manifest, totalBytes: total, fileCount: manifest.files.count,
                              manifestSHA256: hex(SHA256.hash(data: manifestBytes)))
    }

    // MARK: - The manifest

    private static func readManifest(root: Int32, bounds: BundleBounds) throws(BundleError) -> [UInt8] {
        let name = BundleManifest.fileName
        var st = stat()
        guard fstatat(root, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else {
            let code = errno
            if code == ENOENT { throw BundleError(.missingFile, path: name, errno: code, "the bundle has no manifest.json at its root") }
            throw BundleError(.bundleUnreadable, path: name, errno: code, "cannot inspect the bundle's manifest.json")
        }
        try checkType(st, entry: name, isManifest: true)
        let fd = stk_openat2(root, name, UInt64(O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY), 0, BundleCopy.confined)
        guard fd >= 0 else { throw openFailure(errno, entry: name) }
        defer { close(fd) }
        guard fstat(fd, &st) == 0 else { throw BundleError(.bundleUnreadable, path: name, errno: errno, "cannot fstat manifest.json") }
        try checkType(st, entry: name, isManifest: true)

        let limit = min(Int(clamping: bounds.manifestBytes), Int.max - 1) + 1
        var bytes = [UInt8](repeating: 0, count: min(limit, max(Int(clamping: st.st_size), 0) + 1, 1 << 20))
        var count = 0
        while count < limit {
            if count == bytes.count { bytes.append(contentsOf: repeatElement(0, count: min(bytes.count, limit - bytes.count))) }
            let n = bytes.withUnsafeMutableBytes { raw in Glibc.read(fd, raw.baseAddress.map { $0 + count }, raw.count - count) }
            if n == 0 { break }
            if n < 0 {
                if errno == EINTR { continue }
                throw BundleError(.bundleUnreadable, path: name, errno: errno, "cannot read manifest.json")
            }
            count += n
        }
        if count >= limit {
            throw BundleError(.tooLarge, path: name,
                              "the manifest is larger than the limit of \(bounds.manifestBytes) bytes; list fewer files or raise bundles.manifestBytes")
        }
        bytes.removeSubrange(count...)
        return bytes
    }

    // MARK: - One listed file

    /// Reads, hashes and copies one listed file; returns its size.
    private static func readFile(_ file: BundleManifest.File, root: Int32, bounds: BundleBounds, total: Int64,
                                 buffer: inout [UInt8], copy: inout BundleCopy?) throws(BundleError) -> Int64 {
        let path = Array(file.path.utf8)
        let entry = BundlePath.display(path)
        let fd = stk_openat2(root, BundleCopy.cString(path), UInt64(O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY), 0, BundleCopy.confined)
        guard fd >= 0 else { throw openFailure(errno, entry: entry) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw BundleError(.bundleUnreadable, path: entry, errno: errno, "cannot fstat the file") }
        try checkType(st, entry: entry, isManifest: false)

        let output = try copy?.create(path)
        defer { if let output { close(output) } }

        var hasher = SHA256()
        var got: Int64 = 0
        // Never trust the declared size: read one byte past it to see a longer file.
        let limit = file.size == Int64.max ? file.size : file.size + 1
        while got < limit {
            let want = Int(min(Int64(buffer.count), limit - got))
            let n = buffer.withUnsafeMutableBytes { raw in Glibc.read(fd, raw.baseAddress, want) }
            if n == 0 { break }
            if n < 0 {
                if errno == EINTR { continue }
                throw BundleError(.bundleUnreadable, path: entry, errno: errno, "cannot read the file")
            }
            got += Int64(n)
            if got > file.size {
                throw BundleError(.sizeMismatch, path: entry, "the file holds more than the \(file.size) bytes the manifest declares; write the manifest after the files are final")
            }
            // Defence in depth: the manifest's declared sizes are already within these bounds.
            if got > bounds.maxFileBytes {
                throw BundleError(.tooLarge, path: entry, "the file is larger than the limit of \(bounds.maxFileBytes) bytes")
            }
            if total + got > bounds.maxTotalBytes {
                throw BundleError(.tooLarge, path: entry, "the bundle is larger than the limit of \(bounds.maxTotalBytes) bytes")
            }
            let failure: BundleError? = buffer.withUnsafeBytes { (raw) -> BundleError? in
                let chunk = UnsafeRawBufferPointer(rebasing: raw[..<n])
                hasher.update(bufferPointer: chunk)
                guard let output else { return nil }
                do throws(BundleError) { try BundleCopy.writeAll(output, chunk, path: path) } catch { return error }
                return nil
            }
            if let failure { throw failure }
        }
        if got < file.size {
            throw BundleError(.sizeMismatch, path: entry, "the file holds \(got) bytes, fewer than the \(file.size) the manifest declares; write the manifest after the files are final")
        }
        let digest = hex(hasher.finalize())
        if digest != file.sha256 {
            throw BundleError(.hashMismatch, path: entry, "the file's SHA-256 is \(digest), not the \(file.sha256) the manifest declares; write the manifest after the files are final")
        }
        return got
    }

    // MARK: - Shared checks

    /// Refuses anything but a regular file with one link (the manifest: a directory is a bad manifest).
    static func checkType(_ st: stat, entry: String, isManifest: Bool) throws(BundleError) {
        switch st.st_mode & S_IFMT {
        case S_IFREG:
            if st.st_nlink > 1 {
                throw BundleError(.hardlink, path: entry, "the file has \(st.st_nlink) hard links; a bundle file must have exactly one: copy it instead of linking it")
            }
        case S_IFLNK:
            throw BundleError(.symlink, path: entry, "the entry is a symbolic link; links are never followed: put a copy of the target in the bundle")
        case S_IFDIR:
            if isManifest { throw BundleError(.badManifest, path: entry, "manifest.json is a directory, not a file") }
            throw BundleError(.missingFile, path: entry, "the manifest lists a file here but the entry is a directory")
        default:
            throw BundleError(.specialFile, path: entry, "the entry is a \(kind(st.st_mode)); bundles hold regular files and directories only: remove it")
        }
    }

    static func kind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFIFO: "FIFO"
        case S_IFSOCK: "socket"
        case S_IFCHR: "character device"
        case S_IFBLK: "block device"
        case S_IFDIR: "directory"
        case S_IFLNK: "symbolic link"
        case S_IFREG: "regular file"
        default: "file of unknown type"
        }
    }

    /// The rule an `openat2` failure on a bundle entry stands for.
    static func openFailure(_ code: Int32, entry: String) -> BundleError {
        switch code {
        case ENOENT: BundleError(.missingFile, path: entry, errno: code, "the manifest lists this file but the bundle does not hold it")
        case ELOOP: BundleError(.symlink, path: entry, errno: code, "the path is or passes through a symbolic link")
        case ENXIO, ENODEV: BundleError(.specialFile, path: entry, errno: code, "the entry is a socket or device, not a regular file")
        case EXDEV: BundleError(.badPath, path: entry, errno: code, "the path leaves the bundle (a mount or '..' crossing)")
        case ENOTDIR: BundleError(.missingFile, path: entry, errno: code, "a directory on the path is not a directory")
        default: BundleError(.bundleUnreadable, path: entry, errno: code, "cannot open the bundle entry")
        }
    }

    static func hex<D: Sequence<UInt8>>(_ digest: D) -> String {
        Hex.lowercase(digest)
    }

    static func hex(_ digest: SHA256.Digest) -> String { hex(Array(digest)) }
}
