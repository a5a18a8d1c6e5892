import CStockade
import Glibc
import SystemPackage

/// Empties a directory tree a worker may have shaped: symlinks (removed, never followed), FIFOs,
/// sockets, whiteout and other device nodes, files of any mode, directories of mode 000, and
/// chains of directories deeper than any stack.
///
/// Every directory is opened relative to its parent with `STK_O_PATH | O_NOFOLLOW | O_DIRECTORY`,
/// checked to be the inode `fstatat` saw and on the same filesystem, made searchable and writable
/// through that descriptor when it is not, and only then read and emptied with `unlinkat`.
/// Recursion is bounded: a directory at `maxDepth` is renamed up to the top of the tree being
/// removed (`RENAME_NOREPLACE`) and emptied from there when the top-level loop reaches it.
struct TreeRemover {
    let top: Int32
    let device: dev_t
    let topPath: String
    var maxDepth = 32
    private var moved = 0

    init(top: Int32, device: dev_t, topPath: String) {
        self.top = top
        self.device = device
        self.topPath = topPath
    }

    /// Removes every entry of the directory open at `fd`, listing it again after each batch so
    /// that the memory used stays bounded however many entries it has.
    mutating func empty(_ fd: Int32, depth: Int, path: String) throws(BundleError) {
        while true {
            let batch: [[UInt8]]
            switch DirectoryEntries.names(fd, limit: 1024) {
            case .success(let result): batch = result.names
            case .failure(let problem):
                throw failure(path, problem.rawValue, "cannot list the directory")
            }
            if batch.isEmpty { return }
            for name in batch {
                try remove(parent: fd, name: name, depth: depth, path: path + "/" + String(decoding: name, as: UTF8.self))
            }
        }
    }

    private mutating func remove(parent: Int32, name: [UInt8], depth: Int, path: String) throws(BundleError) {
        let cName = name.map { CChar(bitPattern: $0) } + [0]
        var st = stat()
        if fstatat(parent, cName, &st, AT_SYMLINK_NOFOLLOW) != 0 {
            if errno == ENOENT { return }
            throw failure(path, errno, "cannot look at the entry")
        }
        guard st.st_mode & S_IFMT == S_IFDIR else {
            if unlinkat(parent, cName, 0) != 0 && errno != ENOENT { throw failure(path, errno, "cannot remove the entry") }
            return
        }
        guard st.st_dev == device else {
            throw BundleError(.garbageCollectionFailed, path: path,
                              "the directory is on another filesystem (a mount point?); unmount it and run gc again")
        }
        if depth + 1 >= maxDepth {
            try moveToTop(parent: parent, name: cName, path: path)
            return
        }
        let fd = try openForRemoval(parent: parent, name: cName, expected: st, path: path)
        defer { close(fd) }
        try empty(fd, depth: depth + 1, path: path)
        if unlinkat(parent, cName, AT_REMOVEDIR) != 0 && errno != ENOENT {
            throw failure(path, errno, "cannot remove the emptied directory")
        }
    }

    /// Opens a directory for listing and unlinking; a directory the worker left without owner
    /// read, write or search permission is given 0700 first, through an `STK_O_PATH` descriptor so the
    /// mode change lands on the inode that was checked.
    private func openForRemoval(parent: Int32, name: [CChar], expected: stat, path: String) throws(BundleError) -> Int32 {
        let handle = openat(parent, name, STK_O_PATH | O_NOFOLLOW | O_DIRECTORY | O_CLOEXEC)
        if handle < 0 { throw failure(path, errno, "cannot open the directory") }
        defer { close(handle) }
        var st = stat()
        guard fstat(handle, &st) == 0, st.st_ino == expected.st_ino, st.st_dev == expected.st_dev else {
            throw failure(path, ESTALE, "the directory changed while it was being removed")
        }
        if st.st_mode & 0o700 != 0o700 {
            // fchmod refuses STK_O_PATH descriptors; the /proc link names exactly this inode.
            if chmod("/proc/self/fd/\(handle)", 0o700) != 0 {
                throw failure(path, errno, "cannot make the directory searchable to empty it")
            }
        }
        let fd = openat(handle, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd < 0 { throw failure(path, errno, "cannot open the directory for reading") }
        return fd
    }

    private mutating func moveToTop(parent: Int32, name: [CChar], path: String) throws(BundleError) {
        while true {
            moved += 1
            let target = ".gc-deep-\(moved)"
            if stk_renameat2(parent, name, top, target, 1 /* RENAME_NOREPLACE */) == 0 { return }
            if errno != EEXIST { throw failure(path, errno, "cannot move a deep directory up to remove it") }
        }
    }

    private func failure(_ path: String, _ code: Int32, _ what: String) -> BundleError {
        BundleError(.garbageCollectionFailed, path: path, errno: code,
                    "\(what): \(DirectoryEntries.describe(code)); the run directory \(topPath) is left partly removed, run gc again after fixing this")
    }
}

/// Removes the hostile tree `name` in the directory open at `parent` (for other targets:
/// the image cache's half-unpacked layers). A missing entry is not an error.
package enum HostileTree {
    package static func remove(parent: Int32, name: String) throws(BundleError) {
        let directory = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard directory >= 0 else {
            if errno == ENOENT { return }
            if errno == ENOTDIR || errno == ELOOP, unlinkat(parent, name, 0) == 0 { return }
            throw BundleError(.garbageCollectionFailed, path: name, errno: errno, "cannot open \(name) to remove it: \(DirectoryEntries.describe(errno))")
        }
        defer { close(directory) }
        var st = stat()
        guard fstat(directory, &st) == 0 else {
            throw BundleError(.garbageCollectionFailed, path: name, errno: errno, "cannot stat \(name): \(DirectoryEntries.describe(errno))")
        }
        var remover = TreeRemover(top: directory, device: st.st_dev, topPath: name)
        try remover.empty(directory, depth: 0, path: name)
        if unlinkat(parent, name, AT_REMOVEDIR) != 0 && errno != ENOENT {
            throw BundleError(.garbageCollectionFailed, path: name, errno: errno,
                              "emptied \(name) but cannot remove it: \(DirectoryEntries.describe(errno))")
        }
    }
}
