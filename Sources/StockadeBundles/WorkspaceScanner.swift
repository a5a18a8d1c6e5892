import Glibc
import SystemPackage

/// Turns an overlayfs upper directory into the list of changes the worker made to `/workspace`.
///
/// The upper tree is hostile: the worker chose every name, type, mode and byte in it. The scanner
/// never follows a link (each entry is looked at with `fstatat(AT_SYMLINK_NOFOLLOW)` and opened with
/// `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, `O_NOFOLLOW | O_NONBLOCK`, then checked with
/// `fstat` to be the inode it looked at), never opens anything but regular files and directories,
/// and enforces every `ScanLimits` bound while reading.
///
/// Overlay semantics it implements (checked against kernel 6.18, both root mounts with `trusted.`
/// xattrs and user-namespace mounts with `userxattr`):
/// - a character device 0:0 is a whiteout: the lower entry is deleted (a whole directory expands to
///   one deletion per regular file beneath it);
/// - a directory whose `overlay.opaque` xattr is `y` hides everything in the lower directory, and
///   every directory beneath it: lower entries not in upper are deleted;
/// - a regular file is a creation or a modification; a copy-up that changed neither content nor
///   normalised mode is not a change;
/// - a directory only in upper with no files in it is no change;
/// - a symlink, FIFO, socket or device is reported as `.special`, never read.
/// Overlay features that would make the upper tree not self-describing (redirects, metacopy, xattr
/// whiteouts) are refused with `workspaceUnsupportedOverlay`: mount without them.
public enum WorkspaceScanner {
    /// Scans `upper` (an `O_DIRECTORY` descriptor of the overlay upper directory) against `lower`
    /// (one of the real workspace) and returns the changes sorted by path (bytewise).
    /// Throws naming the entry when a bound is exceeded or an entry cannot be read safely.
    public static func scan(upper: Int32, lower: Int32, limits: ScanLimits,
                            xattrs: OverlayXattrNamespace = .user) throws(BundleError) -> [WorkspaceChange] {
        var walk = Walk(limits: limits, xattrs: xattrs)
        for (fd, role) in [(upper, "upper"), (lower, "lower")] {
            var st = stat()
            let failed = fstat(fd, &st) != 0
            guard !failed, st.st_mode & S_IFMT == S_IFDIR else {
                throw BundleError(.workspaceScanFailed, errno: failed ? errno : ENOTDIR,
                                  "the \(role) descriptor given to the workspace scanner is not an open directory")
            }
        }
        let opaque = try walk.isOpaque(upper, path: ".")
        try walk.directory(upper: upper, lower: lower, path: "", depth: 0, hidesLower: opaque)
        return walk.changes.sorted { $0.path.utf8.lexicographicallyPrecedes($1.path.utf8) }
    }
}

private struct Walk {
    let limits: ScanLimits
    let xattrs: OverlayXattrNamespace
    var entries = 0
    var totalBytes: Int64 = 0
    var changes: [WorkspaceChange] = []

    init(limits: ScanLimits, xattrs: OverlayXattrNamespace) {
        self.limits = limits
        self.xattrs = xattrs
    }

    /// The entries of the upper directory `upper` at `path`; with `hidesLower`, also the deletion of
    /// every lower entry that upper does not name.
    mutating func directory(upper: Int32, lower: Int32?, path: String, depth: Int,
                            hidesLower: Bool) throws(BundleError) {
        // Compared as bytes: String equality would merge canonically equivalent names ("é" and
        // "e" + U+0301), which are different files.
        var seen = Set<[UInt8]>()
        for name in try list(upper, path: path) {
            seen.insert(Array(name.utf8))
            let child = try childPath(path, name, depth: depth + 1)
            try entry(upperDir: upper, lowerDir: lower, name: name, path: child, depth: depth + 1,
                      hidesLower: hidesLower)
        }
        guard hidesLower, let lower else { return }
        for name in try list(lower, path: path) where !seen.contains(Array(name.utf8)) {
            let child = try childPath(path, name, depth: depth + 1)
            if let st = try lstat(lower, name, path: child) {
                try removal(lowerDir: lower, name: name, st: st, path: child, depth: depth + 1)
            }
        }
    }

    mutating func entry(upperDir: Int32, lowerDir: Int32?, name: String, path: String, depth: Int,
                        hidesLower: Bool) throws(BundleError) {
        guard let st = try lstat(upperDir, name, path: path) else {
            throw BundleError(.workspaceScanFailed, path: path,
                              "the entry vanished from the upper directory while it was scanned; scan only after the worker's cgroup is empty")
        }
        let lowerSt: stat? = if let lowerDir { try lstat(lowerDir, name, path: path) } else { nil }
        let kind = DirectoryEntries.Kind(mode: st.st_mode)
        switch kind {
        case .characterDevice where st.st_rdev == 0:
            if let lowerDir, let lowerSt {
                try removal(lowerDir: lowerDir, name: name, st: lowerSt, path: path, depth: depth)
            }
        case .regular:
            try regularFile(upperDir: upperDir, lowerDir: lowerDir, name: name, st: st, lowerSt: lowerSt,
                            path: path, depth: depth)
        case .directory:
            let fd = try open(upperDir, name, st, directory: true, path: path)
            defer { close(fd) }
            try refuseUnsupported(fd, path: path)
            let opaque = try isOpaque(fd, path: path)
            var lowerFd: Int32?
            if let lowerDir, let lowerSt {
                switch DirectoryEntries.Kind(mode: lowerSt.st_mode) {
                case .directory: lowerFd = try open(lowerDir, name, lowerSt, directory: true, path: path)
                default: try removal(lowerDir: lowerDir, name: name, st: lowerSt, path: path, depth: depth)
                }
            }
            defer { if let lowerFd { close(lowerFd) } }
            try directory(upper: fd, lower: lowerFd, path: path, depth: depth, hidesLower: hidesLower || opaque)
        default:
            changes.append(.special(path: path, kind: kind.name))
        }
    }

    mutating func regularFile(upperDir: Int32, lowerDir: Int32?, name: String, st: stat, lowerSt: stat?,
                              path: String, depth: Int) throws(BundleError) {
        let fd = try open(upperDir, name, st, directory: false, path: path)
        defer { close(fd) }
        try refuseUnsupported(fd, path: path)
        let content = try read(fd, path: path)
        let mode = WorkspaceChange.normalizedMode(UInt32(st.st_mode))
        guard let lowerDir, let lowerSt else {
            changes.append(.created(path: path, content: content, mode: mode))
            return
        }
        guard DirectoryEntries.Kind(mode: lowerSt.st_mode) == .regular else {
            // A directory or special entry of the real workspace replaced by a file.
            try removal(lowerDir: lowerDir, name: name, st: lowerSt, path: path, depth: depth)
            changes.append(.created(path: path, content: content, mode: mode))
            return
        }
        let lowerFd = try open(lowerDir, name, lowerSt, directory: false, path: path)
        defer { close(lowerFd) }
        let old = try read(lowerFd, path: path)
        let oldMode = WorkspaceChange.normalizedMode(UInt32(lowerSt.st_mode))
        if old != content || oldMode != mode {
            changes.append(.modified(path: path, old: old, new: content, oldMode: oldMode, newMode: mode))
        }
    }

    /// The deletion of the lower entry `name`: a file is one deletion, a directory one per regular
    /// file beneath it, anything else is a special change the diff cannot carry.
    mutating func removal(lowerDir: Int32, name: String, st: stat, path: String, depth: Int) throws(BundleError) {
        let kind = DirectoryEntries.Kind(mode: st.st_mode)
        switch kind {
        case .regular:
            let fd = try open(lowerDir, name, st, directory: false, path: path)
            defer { close(fd) }
            let old = try read(fd, path: path)
            changes.append(.deleted(path: path, old: old, oldMode: WorkspaceChange.normalizedMode(UInt32(st.st_mode))))
        case .directory:
            let fd = try open(lowerDir, name, st, directory: true, path: path)
            defer { close(fd) }
            for child in try list(fd, path: path) {
                let childPath = try childPath(path, child, depth: depth + 1)
                if let childSt = try lstat(fd, child, path: childPath) {
                    try removal(lowerDir: fd, name: child, st: childSt, path: childPath, depth: depth + 1)
                }
            }
        default:
            changes.append(.special(path: path, kind: "workspace-" + kind.name))
        }
    }

    // MARK: Overlay markers

    /// Whether the directory open at `fd` carries the opaque marker of the configured namespace.
    func isOpaque(_ fd: Int32, path: String) throws(BundleError) -> Bool {
        let name = xattrs.rawValue + "opaque"
        switch DirectoryEntries.xattr(fd, name) {
        case .failure(let problem):
            let code = problem.rawValue
            throw BundleError(.workspaceScanFailed, path: path, errno: code,
                              "cannot read the \(name) attribute: \(DirectoryEntries.describe(code))")
        case .success(nil):
            return false
        case .success(let value?):
            if value == Array("y".utf8) { return true }
            // "x" (kernel 6.7+) announces xattr whiteouts inside, which upper dirs never hold.
            throw BundleError(.workspaceUnsupportedOverlay, path: path,
                              "the directory's \(name) attribute is not \"y\"; the scanner cannot interpret it: mount the workspace overlay without xattr whiteouts")
        }
    }

    /// Refuses entries marked with overlay features that keep data or names outside the upper tree
    /// (`redirect`, `metacopy`, xattr `whiteout`), in either xattr namespace, and opaque markers of
    /// the other namespace (a mount of another kind than the caller said).
    func refuseUnsupported(_ fd: Int32, path: String) throws(BundleError) {
        let names: [String]
        switch DirectoryEntries.xattrNames(fd) {
        case .failure(let problem):
            let code = problem.rawValue
            throw BundleError(.workspaceScanFailed, path: path, errno: code,
                              "cannot list the entry's extended attributes: \(DirectoryEntries.describe(code))")
        case .success(let list): names = list
        }
        for name in names {
            for space in OverlayXattrNamespace.allCases where name.hasPrefix(space.rawValue) {
                let feature = String(name.dropFirst(space.rawValue.count))
                let refused = ["redirect", "metacopy", "whiteout"].contains(feature)
                    || (feature == "opaque" && space != xattrs)
                if refused {
                    throw BundleError(.workspaceUnsupportedOverlay, path: path,
                                      "the entry carries \(name), which the workspace scanner does not interpret (expected \(xattrs.rawValue)* markers only): mount the overlay with userxattr, redirect_dir=off and metacopy=off")
                }
            }
        }
    }

    // MARK: Bounded primitives

    func lstat(_ dir: Int32, _ name: String, path: String) throws(BundleError) -> stat? {
        switch DirectoryEntries.lstatAt(dir, name) {
        case .success(let st): return st
        case .failure(let problem):
            let code = problem.rawValue
            throw BundleError(.workspaceScanFailed, path: path, errno: code,
                              "cannot look at the entry: \(DirectoryEntries.describe(code))")
        }
    }

    func open(_ dir: Int32, _ name: String, _ st: stat, directory: Bool, path: String) throws(BundleError) -> Int32 {
        switch DirectoryEntries.openVerified(dir, name, expected: st, directory: directory) {
        case .success(let fd): return fd
        case .failure(let problem):
            let code = problem.rawValue
            let why = code == ESTALE || code == ELOOP || code == ENOTDIR
                ? "it changed between being looked at and being opened"
                : DirectoryEntries.describe(code)
            throw BundleError(.workspaceScanFailed, path: path, errno: code,
                              "cannot open the entry safely: \(why); scan only after the worker's cgroup is empty")
        }
    }

    mutating func read(_ fd: Int32, path: String) throws(BundleError) -> [UInt8] {
        switch DirectoryEntries.readAll(fd, limit: limits.maxFileBytes) {
        case .failure(let problem):
            let code = problem.rawValue
            throw BundleError(.workspaceScanFailed, path: path, errno: code,
                              "cannot read the file: \(DirectoryEntries.describe(code))")
        case .success(nil):
            throw BundleError(.workspaceFileTooLarge, path: path,
                              "the file is larger than \(limits.maxFileBytes) bytes, the most one workspace file may hold: raise the profile's bundles.maxFileBytes or leave the file out of /workspace")
        case .success(let content?):
            totalBytes += Int64(content.count)
            if totalBytes > limits.maxTotalBytes {
                throw BundleError(.workspaceTooLarge, path: path,
                                  "reading this file takes the workspace changes past \(limits.maxTotalBytes) bytes in all: raise the profile's bundles.maxTotalBytes or change less of the workspace")
            }
            return content
        }
    }

    /// The names in the directory at `fd`, counted against `maxEntries` as they are read.
    mutating func list(_ fd: Int32, path: String) throws(BundleError) -> [String] {
        let shown = path.isEmpty ? "." : path
        let budget = max(0, limits.maxEntries - entries)
        switch DirectoryEntries.names(fd, limit: budget) {
        case .failure(let problem):
            let code = problem.rawValue
            throw BundleError(.workspaceScanFailed, path: shown, errno: code,
                              "cannot list the directory: \(DirectoryEntries.describe(code))")
        case .success(let (raw, truncated)):
            if truncated {
                throw BundleError(.workspaceTooManyEntries, path: shown,
                                  "listing this directory takes the workspace changes past \(limits.maxEntries) entries: raise the profile's bundles.maxFiles or create fewer files")
            }
            entries += raw.count
            var names: [String] = []
            names.reserveCapacity(raw.count)
            // Sorted so that the walk, and so which entry a bound names, does not depend on
            // the filesystem's directory order.
            for bytes in raw.sorted(by: { $0.lexicographicallyPrecedes($1) }) {
                guard let name = String(validating: bytes, as: UTF8.self) else {
                    let lossy = String(decoding: bytes, as: UTF8.self)
                    throw BundleError(.workspaceBadName, path: path.isEmpty ? lossy : path + "/" + lossy,
                                      "the file name is not valid UTF-8, so no diff can name it: rename or remove it")
                }
                names.append(name)
            }
            return names
        }
    }

    func childPath(_ parent: String, _ name: String, depth: Int) throws(BundleError) -> String {
        let path = parent.isEmpty ? name : parent + "/" + name
        if depth > limits.maxDepth {
            throw BundleError(.workspacePathTooLong, path: path,
                              "the path has more than \(limits.maxDepth) components: raise the profile's bundles.maxPathDepth or nest less deeply")
        }
        if path.utf8.count > limits.maxPathLength {
            throw BundleError(.workspacePathTooLong, path: path,
                              "the path is longer than \(limits.maxPathLength) bytes: raise the profile's bundles.maxPathLength or use shorter names")
        }
        return path
    }
}
