import CStockade
import Glibc
import Synchronization
import StockadePolicy

/// The part of a worker's root that is the same for every run of a profile, made once and shared
/// read-only: the directories, the generated `/etc` files, the links of a merged-`/usr` host and every
/// mount point. Without it, each run's init mounted a tmpfs of its own and made all of that in it
/// (about thirty `mkdir`, `symlink` and file writes, and a superblock set up and torn down per run).
///
/// The supervisor makes a skeleton in a detached tmpfs that no mount namespace holds, owned by host
/// root, and seals it read-only at the superblock (`stk_superblock_seal`): only
/// `CAP_SYS_ADMIN` in the host's user namespace can make it writable again, so no worker can change
/// what another run sees, whatever it holds in its own namespaces. A read-only superblock updates no
/// access times either. The skeleton is attached in the mount namespace of a thread of the supervisor's
/// own (`stk_keeper_attach`: nothing of the host is in that namespace but what skeletons bind), where
/// the host's system directories, `/etc` files and device nodes are mounted on it and each run's
/// recursive clone is made.
/// Each run attaches a clone of its mount (one `open_tree`) as the root it builds
/// on, as it attaches an image's overlay; its init then mounts only what is mounted (the host
/// directories, `/proc`, `/dev`'s nodes, the run's tmpfs and volumes) on the mount points made here.
/// Inside the worker the skeleton's files belong to an id its namespace does not map (shown as nobody);
/// each run's own mounts keep their owners.
public enum RootSkeleton {
    public struct Entry: Hashable, Sendable {
        public enum Kind: Hashable, Sendable {
            case directory(mode: UInt32)
            case file(mode: UInt32, contents: [UInt8])
            case symlink(String)
            /// A host tree bound read-only (or, for a device node, as the node) on the entry's
            /// path, which an earlier entry made; `device` and `inode` are the source's when the
            /// run asked (`stat`, following links, as `open_tree` does): a source replaced since
            /// (a new `ld.so.cache`, another time zone) is another entry list, so another skeleton.
            case bind(source: String, isFile: Bool, readOnly: Bool, noexec: Bool, devices: Bool, device: UInt64, inode: UInt64)
        }
        public var path: String
        public var kind: Kind
    }

    /// A root's steps, divided: what goes into the skeleton, and the steps an init still runs on it.
    public struct Split: Sendable {
        public var entries: [Entry]
        public var steps: [MountOp]
        /// How many leading `steps` act only on paths of the skeleton or of mounts made earlier in the
        /// same steps (the `fresh` of `RootLayout.mountSteps`, counted again without the removed steps).
        public var fresh: Int
    }

    /// Moves every `mkdir`, `symlink` and generated file, and the mount point of every mount, into the
    /// skeleton, keeping each step whose path is beneath a mount made earlier (it is made in that mount
    /// at run time, as before) or whose parent is not a skeleton directory (a link, say: the init's
    /// checks refuse it as before). Steps keep their order; a path the skeleton cannot hold stays a step.
    ///
    /// A bind of the host's among the fixed steps whose target is in `sharedBinds` (the host's system
    /// directories, `ld.so.cache`, `localtime`, `alternatives`, the device nodes: never a run's own
    /// request or volume) moves into the skeleton too, mounted on its mount point there: each run then
    /// gets all of them with the one recursive clone of its root.
    public static func split(_ steps: [MountOp], fresh: Int, sharedBinds: Set<String> = []) -> Split {
        var made: [String: Entry.Kind] = [:]
        made.reserveCapacity(steps.count)
        var directories: Set<String> = ["/"]
        directories.reserveCapacity(steps.count)
        /// Each mount target with a slash after it: a path is beneath one when it starts with it.
        var mountedPrefixes: [String] = []
        var mountedTargets: Set<String> = []
        var entries: [Entry] = []
        entries.reserveCapacity(steps.count)
        var kept: [MountOp] = []
        var keptFresh = 0

        func mounted(_ target: String) {
            mountedTargets.insert(target)
            mountedPrefixes.append(target + "/")
        }
        /// Makes `path` part of the skeleton; true when it is there, of this kind, afterwards.
        func add(_ path: String, _ kind: Entry.Kind) -> Bool {
            // Beneath a mount first: a directory the skeleton already has is hidden there once an
            // earlier step mounts over it (volumes /x/y, then /x, then /x/y/z: /x/y must be made again,
            // in the volume at /x).
            if mountedPrefixes.contains(where: { path.utf8.starts(with: $0.utf8) }) { return false }
            if let existing = made[path] {
                if case .directory = existing, case .directory = kind { return true }
                return false
            }
            guard isPlain(path), !mountedTargets.contains(path), directories.contains(parent(of: path)) else { return false }
            made[path] = kind
            entries.append(Entry(path: path, kind: kind))
            if case .directory = kind { directories.insert(path) }
            return true
        }

        for (index, step) in steps.enumerated() {
            switch step {
            case let .mkdir(path, mode, nil):
                if add(path, .directory(mode: mode)) { continue }
            case let .symlink(path, pointsTo):
                if made[path] == nil, add(path, .symlink(pointsTo)) { continue }
            case let .file(path, contents, mode):
                if made[path] == nil, add(path, .file(mode: mode, contents: contents)) { continue }
            case let .bind(source, target, isFile, readOnly, noexec, devices, _):
                let placed = add(target, isFile ? .file(mode: 0o444, contents: []) : .directory(mode: 0o755))
                mounted(target)
                var st = stat()
                if placed, index < fresh, sharedBinds.contains(target), stat(source, &st) == 0 {
                    entries.append(Entry(path: target, kind: .bind(source: source, isFile: isFile, readOnly: readOnly, noexec: noexec,
                                                                   devices: devices, device: UInt64(st.st_dev), inode: UInt64(st.st_ino))))
                    continue
                }
            case let .bindOwned(_, target, isFile, _):
                _ = add(target, isFile ? .file(mode: 0o444, contents: []) : .directory(mode: 0o755))
                mounted(target)
            case let .tmpfs(target, _, _, _, _), let .attach(_, target):
                _ = add(target, .directory(mode: 0o755))
                mounted(target)
            case let .proc(target):
                _ = add(target, .directory(mode: 0o555))
                mounted(target)
            case .mkdir, .readOnly, .mask, .readOnlyInPlace:
                break
            }
            kept.append(step)
            if index < fresh { keptFresh += 1 }
        }
        return Split(entries: entries, steps: kept, fresh: keptFresh)
    }

    /// An absolute path without empty, `.` or `..` components.
    static func isPlain(_ path: String) -> Bool {
        let slash = UInt8(ascii: "/"), dot = UInt8(ascii: ".")
        var bytes = path.utf8.makeIterator()
        guard bytes.next() == slash else { return false }
        // The length of the current component, and whether it is only dots so far.
        var length = 0, dots = true
        while let byte = bytes.next() {
            if byte == slash {
                if length == 0 || (dots && length <= 2) { return false }
                length = 0
                dots = true
            } else {
                length += 1
                dots = dots && byte == dot
            }
        }
        return length > 0 && !(dots && length <= 2)
    }

    static func parent(of path: String) -> String {
        guard let slash = path.utf8.lastIndex(of: UInt8(ascii: "/")), slash != path.utf8.startIndex else { return "/" }
        return String(path[..<slash])
    }

    /// The skeletons this process made for the last few distinct entry lists (a batch of runs under
    /// one profile makes one), each a sealed detached mount.
    private typealias Made = (skeletons: RecentlyUsed<[Entry], (fd: Int32, slot: UInt32)>, next: UInt32)
    static let kept = 8
    private static let made = Mutex<Made>((RecentlyUsed(capacity: kept), 0))

    /// A detached clone of the skeleton holding `entries`, made (and sealed) the first time it is asked
    /// for: the caller owns the descriptor and attaches it as the worker's root.
    public static func clone(_ entries: [Entry]) throws(LinuxError) -> Int32 {
        try made.withLock { (state) throws(LinuxError) -> Int32 in
            let fd = try skeleton(entries, &state)
            let copy = stk_keeper_clone(fd)
            guard copy >= 0 else {
                throw LinuxError(.setup, stage: .root, errno: errno, "cannot clone the worker's root skeleton: \(String(cString: strerror(errno)))")
            }
            return copy
        }
    }

    /// Makes the skeleton holding `entries` if this process has none yet, so that the run that
    /// asks for it next only clones it (`stockade run` makes it while its store opens).
    public static func prepare(_ entries: [Entry]) throws(LinuxError) {
        try made.withLock { (state) throws(LinuxError) in _ = try skeleton(entries, &state) }
    }

    /// The skeleton holding `entries`: the one made before, or one made now (evicting the least
    /// recently used beyond `kept`). Called with `made` locked.
    private static func skeleton(_ entries: [Entry], _ state: inout Made) throws(LinuxError) -> Int32 {
        if let made = state.skeletons.value(for: entries) { return made.fd }
        let slot = state.next
        state.next &+= 1
        let fd = try build(entries, slot: slot)
        if let evicted = state.skeletons.insert(entries, (fd, slot))?.value {
            if stk_keeper_detach(evicted.slot) != 0 {
                // Not fatal for this run: the evicted skeleton stays mounted (read-only) in the
                // keeper's namespace until the process ends. Said once per eviction.
                let reason = String(cString: strerror(errno))
                let line = "stockade: warning: cannot unmount an evicted root skeleton (slot \(evicted.slot)) in the keeper's namespace: \(reason)\n"
                _ = line.withCString { write(STDERR_FILENO, $0, strlen($0)) }
            }
            close(evicted.fd)
        }
        return fd
    }

    /// How many skeletons this process holds (tests).
    static var count: Int { made.withLock { $0.skeletons.count } }

    /// The skeleton this process holds for `entries`, if any (tests).
    static func descriptor(_ entries: [Entry]) -> Int32? { made.withLock { $0.skeletons.peek(entries)?.fd } }
    static func holds(_ entries: [Entry]) -> Bool { descriptor(entries) != nil }

    /// Makes the skeleton, seals it, attaches it in the keeper's namespace as `slot` (only a mount
    /// there can be cloned before Linux 6.15) and mounts its host trees on it.
    static func build(_ entries: [Entry], slot: UInt32) throws(LinuxError) -> Int32 {
        let bytes = entries.reduce(0) { total, entry in
            if case let .file(_, contents) = entry.kind { return total + (contents.count + 4095) / 4096 * 4096 }
            return total
        }
        let fd = stk_tmpfs_detached(UInt64(bytes + (64 << 10)), UInt64(entries.count + 16), 0, 0, 0o755)
        guard fd >= 0 else {
            throw LinuxError(.setup, stage: .root, errno: errno, "cannot make the worker's root skeleton (a detached tmpfs): \(String(cString: strerror(errno)))")
        }
        var attached = false
        do throws(LinuxError) {
            for entry in entries { try make(entry, in: fd) }
            guard stk_superblock_seal(fd) == 0 else {
                throw LinuxError(.setup, stage: .root, errno: errno, "cannot seal the worker's root skeleton read-only: \(String(cString: strerror(errno)))")
            }
            guard stk_keeper_attach(fd, slot) == 0 else {
                throw LinuxError(.setup, stage: .root, errno: errno,
                                 "cannot hold the worker's root skeleton in the supervisor's private mount namespace: \(String(cString: strerror(errno)))")
            }
            attached = true
            for entry in entries { try mountTree(entry, slot: slot) }
        } catch {
            if attached { _ = stk_keeper_detach(slot) }
            close(fd)
            throw error
        }
        return fd
    }

    /// Mounts a `.bind` entry's host tree on its mount point in the attached skeleton `slot`: a
    /// detached clone made here (the supervisor's credentials, the attributes the step had), checked
    /// to be the file the run saw, moved there by the keeper.
    private static func mountTree(_ entry: Entry, slot: UInt32) throws(LinuxError) {
        guard case let .bind(source, _, readOnly, noexec, devices, device, inode) = entry.kind else { return }
        let tree = stk_clone_tree(source, SpawnPlan.bindAttributes(readOnly: readOnly, noexec: noexec, devices: devices), 0)
        guard tree >= 0 else {
            throw LinuxError(.setup, stage: .mounts, errno: errno, "cannot open \(source) to show it at \(entry.path): \(String(cString: strerror(errno)))")
        }
        defer { close(tree) }
        var st = stat()
        guard fstat(tree, &st) == 0, UInt64(st.st_dev) == device, UInt64(st.st_ino) == inode else {
            throw LinuxError(.setup, stage: .mounts, errno: EAGAIN, "\(source) changed while the worker's root skeleton was made: run again")
        }
        guard stk_keeper_mount(tree, slot, String(entry.path.dropFirst())) == 0 else {
            throw LinuxError(.setup, stage: .mounts, errno: errno, "cannot show \(source) at \(entry.path) in the worker's root skeleton: \(String(cString: strerror(errno)))")
        }
    }

    /// Makes one entry beneath the skeleton's root `fd`. Its parent is a directory made earlier here
    /// (`split` guarantees it), so no link is followed; the mode is set exactly, whatever the umask.
    private static func make(_ entry: Entry, in fd: Int32) throws(LinuxError) {
        let relative = String(entry.path.dropFirst())
        func fail(_ what: String) -> LinuxError {
            LinuxError(.setup, stage: .root, errno: errno, "cannot make \(entry.path) in the worker's root skeleton (\(what)): \(String(cString: strerror(errno)))")
        }
        switch entry.kind {
        case let .directory(mode):
            guard mkdirat(fd, relative, mode) == 0 else { throw fail("mkdir") }
            guard fchmodat(fd, relative, mode, 0) == 0 else { throw fail("chmod") }
        case let .file(mode, contents):
            let file = openat(fd, relative, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, mode)
            guard file >= 0 else { throw fail("create") }
            defer { close(file) }
            var written = 0
            while written < contents.count {
                let n = contents.withUnsafeBytes { write(file, $0.baseAddress! + written, contents.count - written) }
                if n < 0, errno == EINTR { continue }
                if n == 0 { errno = EIO }
                guard n > 0 else { throw fail("write") }
                written += n
            }
            guard fchmod(file, mode) == 0 else { throw fail("chmod") }
        case let .symlink(target):
            guard symlinkat(target, fd, relative) == 0 else { throw fail("symlink") }
        case .bind:
            break // mounted once the skeleton is sealed and attached (mountTree)
        }
    }
}
