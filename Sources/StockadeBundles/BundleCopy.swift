import CStockade
import Glibc
import StockadePolicy

/// Writes files beneath a directory fd, remembering exactly what it created so that a
/// rejected or failed copy can be taken back without touching anything else.
///
/// Every open goes through `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` and new files are
/// created `O_EXCL | O_NOFOLLOW`, so a link placed in the destination is never followed and an
/// existing file is never overwritten.
package struct BundleCopy {
    package let directory: Int32
    /// Paths (relative, in creation order) of the files and directories this copy made.
    private var createdFiles: [[UInt8]] = []
    private var createdDirectories: [[UInt8]] = []
    /// Directories known to exist beneath `directory` (made here or found there).
    private var knownDirectories = Set<[UInt8]>()

    package init(directory: Int32) {
        self.directory = directory
    }

    /// Creates `path` (and its missing parent directories) with mode 0644 and returns its fd.
    package mutating func create(_ path: [UInt8]) throws(BundleError) -> Int32 {
        try makeParents(of: path)
        let fd = stk_openat2(directory, BundleCopy.cString(path), UInt64(O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC), 0o644, BundleCopy.confined)
        guard fd >= 0 else {
            let code = errno
            throw BundleError(.copyFailed, path: BundlePath.display(path), errno: code,
                              "cannot create the copy in the destination" + (code == EEXIST ? ": it already exists; copy into an empty directory" : ""))
        }
        createdFiles.append(path)
        // The umask may have narrowed the mode; verified copies are always 0644.
        _ = fchmod(fd, 0o644)
        return fd
    }

    /// Writes all of `bytes` to `fd`.
    package static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: [UInt8]) throws(BundleError) {
        var offset = 0
        while offset < bytes.count {
            let n = write(fd, bytes.baseAddress.map { $0 + offset }, bytes.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                throw BundleError(.copyFailed, path: BundlePath.display(path), errno: errno, "cannot write the copy in the destination")
            }
            offset += n
        }
    }

    /// Creates a whole file with `contents`.
    package mutating func createFile(_ path: [UInt8], contents: [UInt8]) throws(BundleError) {
        let fd = try create(path)
        defer { close(fd) }
        // Array.withUnsafeBytes rethrows untyped errors: carry the typed one out as a value.
        let failure: BundleError? = contents.withUnsafeBytes { (raw) -> BundleError? in
            do throws(BundleError) { try BundleCopy.writeAll(fd, raw, path: path) } catch { return error }
            return nil
        }
        if let failure { throw failure }
    }

    /// Removes everything this copy created, newest first. Nothing it did not create is touched.
    package mutating func removeAll() {
        for path in createdFiles.reversed() {
            _ = unlinkat(directory, BundleCopy.cString(path), 0)
        }
        for path in createdDirectories.reversed() {
            _ = unlinkat(directory, BundleCopy.cString(path), AT_REMOVEDIR)
        }
        createdFiles.removeAll()
        createdDirectories.removeAll()
        knownDirectories.removeAll()
    }

    private mutating func makeParents(of path: [UInt8]) throws(BundleError) {
        var index = path.startIndex
        while let slash = path[index...].firstIndex(of: UInt8(ascii: "/")) {
            let directoryPath = Array(path[..<slash])
            if !knownDirectories.contains(directoryPath) {
                try makeDirectory(directoryPath, leafStart: index)
                knownDirectories.insert(directoryPath)
            }
            index = slash + 1
        }
    }

    /// Makes `path` (whose last component starts at `leafStart`) inside its parent, opened confined.
    private mutating func makeDirectory(_ path: [UInt8], leafStart: Int) throws(BundleError) {
        let parent = leafStart == 0 ? [UInt8(ascii: ".")] : Array(path[..<(leafStart - 1)])
        let leaf = Array(path[leafStart...])
        let parentFD = stk_openat2(directory, BundleCopy.cString(parent), UInt64(O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC), 0, BundleCopy.confined)
        guard parentFD >= 0 else {
            throw BundleError(.copyFailed, path: BundlePath.display(parent), errno: errno, "cannot open a directory of the copy in the destination")
        }
        defer { close(parentFD) }
        let made = mkdirat(parentFD, BundleCopy.cString(leaf), 0o755)
        if made == 0 {
            createdDirectories.append(path)
            return
        }
        let code = errno
        var st = stat()
        let isDirectory = fstatat(parentFD, BundleCopy.cString(leaf), &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_mode & S_IFMT == S_IFDIR
        guard code == EEXIST, isDirectory else {
            throw BundleError(.copyFailed, path: BundlePath.display(path), errno: code, "cannot make a directory of the copy in the destination")
        }
    }

    package static let confined = UInt64(STK_RESOLVE_BENEATH | STK_RESOLVE_NO_SYMLINKS)

    /// `bytes` as a NUL-terminated C string.
    package static func cString(_ bytes: [UInt8]) -> [CChar] {
        var out = [CChar]()
        out.reserveCapacity(bytes.count + 1)
        for byte in bytes { out.append(CChar(bitPattern: byte)) }
        out.append(0)
        return out
    }
}
