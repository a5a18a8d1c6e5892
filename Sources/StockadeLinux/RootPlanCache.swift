import Glibc
import StockadePolicy
import Synchronization

/// A worker root's skeleton split (`RootSkeleton.split` of `RootLayout.mountSteps`), made once per
/// profile and reused for its next runs while nothing it was made from has changed.
///
/// What a split is made from: the layout's own values (ids, hostname, sizes, volumes, tmpfs mounts:
/// the profile's), and the host files it looks at (the system directories, `/usr`, the `/etc` files
/// and device nodes bound from the host, the volumes' sources). The host's files are looked at again
/// for every run (an `lstat` each, and a `stat` through a link): a source replaced since (a new
/// `ld.so.cache`, another time zone, `/lib64` made a directory) is another key, so the split is made
/// again, as it was for every run before. What a reused split saves is building it (the generated
/// `/etc` files, ≈ 40 steps, the split's sets), not the looks.
///
/// Only layouts without per-run values are kept: a run's request directory or the owner of a writable
/// volume (its run's own host ids) would make every key new. The run's own descriptors (its result
/// filesystem, its workspace mount) are put back into the steps of a reused split.
public enum RootPlanCache {
    /// One looked-at host file: `lstat`'s device, inode and mode, and `stat`'s device and inode when
    /// it is a link (zeros when missing).
    struct Look: Hashable {
        var device: UInt64, inode: UInt64, mode: UInt32, targetDevice: UInt64, targetInode: UInt64
    }

    struct Key: Hashable {
        var uid: UInt32, gid: UInt32, hostname: String, tmpBytes: Int64
        /// The empty workspace's size, or -1 for a workspace mount (attached by descriptor).
        var workspaceBytes: Int64
        var resultMount: Bool
        var resultBytes: Int64
        var volumes: [String]
        var tmpfs: [String]
        var tmpfsBytes: [Int64]
        var hostRoot: String
        var looks: [Look]
    }

    private static let splits = Mutex(RecentlyUsed<Key, RootSkeleton.Split>(capacity: 8))

    /// The split for `layout`, and whether it was made before (reused) rather than now.
    public static func split(_ layout: RootLayout) -> (split: RootSkeleton.Split, reused: Bool) {
        guard let key = key(layout) else { return (make(layout), false) }
        if let found = splits.withLock({ $0.value(for: key) }) {
            return (withDescriptors(found, of: layout), true)
        }
        let made = make(layout)
        // Kept only when the host did not change while it was made: else its key would name
        // files other than the ones it holds.
        if Self.key(layout) == key {
            splits.withLock { _ = $0.insert(key, made) }
        }
        return (made, false)
    }

    static func make(_ layout: RootLayout) -> RootSkeleton.Split {
        let steps = layout.mountSteps()
        return RootSkeleton.split(steps.steps, fresh: steps.fresh, sharedBinds: layout.sharedBindTargets)
    }

    /// The key of a layout whose split holds no per-run value, with the host's files looked at now.
    static func key(_ layout: RootLayout) -> Key? {
        guard !layout.fromImage, layout.requestDirectory == nil,
              layout.workerHostIds == nil || layout.volumes.allSatisfy(\.readOnly) else { return nil }
        var looks: [Look] = []
        var paths = [layout.hostRoot + "/usr"] + RootLayout.systemDirectories.map { layout.hostRoot + $0 }
        paths += ["ld.so.cache", "localtime", "alternatives"].map { layout.hostRoot + "/etc/" + $0 }
        paths += RootLayout.deviceNodes.map { "/dev/" + $0 }
        paths += layout.volumes.map(\.source)
        looks.reserveCapacity(paths.count)
        for path in paths { looks.append(look(path)) }
        let workspaceBytes: Int64
        switch layout.workspace {
        case .empty(let size): workspaceBytes = size
        case .mount: workspaceBytes = -1
        }
        return Key(uid: layout.uid, gid: layout.gid, hostname: layout.hostname, tmpBytes: layout.tmpBytes,
                   workspaceBytes: workspaceBytes, resultMount: layout.resultMount != nil, resultBytes: layout.resultBytes,
                   volumes: layout.volumes.flatMap { [$0.source, $0.target, $0.readOnly ? "ro" : "rw"] },
                   tmpfs: layout.tmpfs.map(\.target), tmpfsBytes: layout.tmpfs.map(\.sizeBytes),
                   hostRoot: layout.hostRoot, looks: looks)
    }

    static func look(_ path: String) -> Look {
        var st = stat()
        guard lstat(path, &st) == 0 else { return Look(device: 0, inode: 0, mode: 0, targetDevice: 0, targetInode: 0) }
        var found = Look(device: UInt64(st.st_dev), inode: UInt64(st.st_ino), mode: st.st_mode, targetDevice: 0, targetInode: 0)
        if st.st_mode & S_IFMT == S_IFLNK {
            var target = stat()
            if stat(path, &target) == 0 {
                found.targetDevice = UInt64(target.st_dev)
                found.targetInode = UInt64(target.st_ino)
            }
        }
        return found
    }

    /// `split` with this run's descriptors in its attach steps (the workspace mount, the result filesystem).
    static func withDescriptors(_ split: RootSkeleton.Split, of layout: RootLayout) -> RootSkeleton.Split {
        var split = split
        split.steps = split.steps.map { step in
            guard case let .attach(_, target) = step else { return step }
            if target == "/sandbox/result", let fd = layout.resultMount { return .attach(fd: fd, target: target) }
            if target == "/workspace", case .mount(let fd) = layout.workspace { return .attach(fd: fd, target: target) }
            return step
        }
        return split
    }
}
