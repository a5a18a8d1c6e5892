import Glibc

/// The worker's minimal root, as the ordered mount steps the child executes:
/// read-only host `/usr` and library directories, a minimal `/etc`, fresh
/// `/proc` with the host's kernel details masked, a device-less `/dev` with the few safe nodes, bounded tmpfs
/// `/tmp`, `/workspace`, `/sandbox/request` and `/sandbox/result`.
public struct RootLayout: Sendable {
    public enum Workspace: Sendable {
        /// An empty writable directory (tmpfs of this size).
        case empty(sizeBytes: Int64)
        /// A detached mount the supervisor made (`WorkspaceOverlay`), attached at /workspace.
        case mount(fd: Int32)
    }

    public struct Volume: Sendable {
        public var source: String, target: String, readOnly: Bool
        public init(source: String, target: String, readOnly: Bool) {
            self.source = source
            self.target = target
            self.readOnly = readOnly
        }
    }

    public var uid: UInt32
    public var gid: UInt32
    public var hostname: String
    public var tmpBytes: Int64
    public var workspace: Workspace
    /// Host directory shown read-only at /sandbox/request.
    public var requestDirectory: String?
    /// A detached tmpfs (from `stk_tmpfs_detached`) shown at /sandbox/result; else a small tmpfs.
    public var resultMount: Int32?
    public var resultBytes: Int64
    public var volumes: [Volume] = []
    /// The worker's host uid and gid (its run's id range base plus its ids). When set, a writable
    /// volume is an idmapped bind: its owner is shown as the worker, so the worker can write there and
    /// what it writes belongs to the directory's owner on the host. Read-only volumes are plain binds.
    public var workerHostIds: (uid: UInt32, gid: UInt32)?
    public var tmpfs: [(target: String, sizeBytes: Int64)] = []
    /// Where host system directories are looked up (tests point it elsewhere).
    public var hostRoot: String = ""
    /// The root is an image's (`ImageRoot`): no host directory is shown, and the generated `/etc`
    /// files and every mount point are made by the supervisor in the image root's upper layer
    /// (`imageFiles()`, `mountPoints()`), never by the child through the image's own links.
    public var fromImage = false

    public init(uid: UInt32, gid: UInt32, hostname: String, tmpBytes: Int64, workspace: Workspace,
                requestDirectory: String? = nil, resultMount: Int32? = nil, resultBytes: Int64) {
        self.uid = uid
        self.gid = gid
        self.hostname = hostname
        self.tmpBytes = tmpBytes
        self.workspace = workspace
        self.requestDirectory = requestDirectory
        self.resultMount = resultMount
        self.resultBytes = resultBytes
    }

    static let systemDirectories = ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]
    static let deviceNodes = ["null", "zero", "full", "random", "urandom"]
    /// What Docker masks in /proc, and the host's boot command line (boot
    /// parameters, console and debug ports). The worker has no /sys at all
    /// (volumes may not target it), so Docker's /sys/firmware has nothing to cover.
    static let procMasked = ["acpi", "asound", "cmdline", "interrupts", "kcore", "keys", "latency_stats", "sched_debug",
                             "scsi", "timer_list", "timer_stats"]
    /// Kernel interfaces the worker may read but never write, as Docker keeps them.
    static let procReadOnly = ["bus", "fs", "irq", "sys", "sysrq-trigger"]

    public func mounts() -> [MountOp] { mountSteps().steps }

    /// The targets of the host's own binds (system directories, the host's `/etc` files, device
    /// nodes), which `RootSkeleton.split` may mount in a shared skeleton; none with an image root.
    public var sharedBindTargets: Set<String> {
        guard !fromImage else { return [] }
        return Set(["/usr", "/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives"] + Self.systemDirectories
                   + Self.deviceNodes.map { "/dev/" + $0 })
    }

    /// The mount steps, and how many leading ones act only on paths this run's init has just made:
    /// with the host's system directories (not an image root), every step before the first volume
    /// or profile tmpfs targets a path whose every directory init itself created in a filesystem it
    /// had just mounted (the root tmpfs, `/proc`, `/dev`), and nothing of the host, an image, the
    /// workspace or the request is beneath any of them. Nothing in them can be a link a worker left,
    /// so the child skips its per-step link checks (two `openat2` each) for those and keeps them for
    /// the rest: volumes (which a worker may have written in an earlier run), their parents and
    /// profile tmpfs targets, and every step of an image root.
    public func mountSteps() -> (steps: [MountOp], fresh: Int) {
        var ops: [MountOp] = []
        if !fromImage {
            ops.append(.bind(source: hostRoot + "/usr", target: "/usr", isFile: false, readOnly: true))
            for dir in Self.systemDirectories {
                switch fileKind(hostRoot + dir) {
                case .symlink(let target): ops.append(.symlink(target: dir, pointsTo: target))
                case .directory: ops.append(.bind(source: hostRoot + dir, target: dir, isFile: false, readOnly: true))
                default: break
                }
            }
            ops += etc()
        }
        ops.append(.proc(target: "/proc"))
        ops += Self.procMasked.map { .mask(target: "/proc/" + $0) }
        ops += Self.procReadOnly.map { .readOnlyInPlace(target: "/proc/" + $0) }
        ops += dev()
        ops.append(.tmpfs(target: "/tmp", sizeBytes: tmpBytes, mode: 0o1777))
        switch workspace {
        case .empty(let size):
            ops.append(.tmpfs(target: "/workspace", sizeBytes: size, mode: 0o755, owner: (uid, gid)))
        case .mount(let fd):
            ops.append(.attach(fd: fd, target: "/workspace"))
        }
        ops.append(.mkdir("/sandbox", mode: 0o755))
        if let request = requestDirectory {
            ops.append(.bind(source: request, target: "/sandbox/request", isFile: false, readOnly: true, noexec: false))
        } else {
            ops.append(.mkdir("/sandbox/request", mode: 0o555))
        }
        if let fd = resultMount {
            ops.append(.attach(fd: fd, target: "/sandbox/result"))
        } else {
            ops.append(.tmpfs(target: "/sandbox/result", sizeBytes: resultBytes, mode: 0o755, owner: (uid, gid), noexec: true))
        }
        let fresh = fromImage ? 0 : ops.count
        for volume in volumes {
            ops += parents(of: volume.target)
            let isFile = fileKind(volume.source) == .file
            if !volume.readOnly, let owner = workerHostIds {
                ops.append(.bindOwned(source: volume.source, target: volume.target, isFile: isFile, owner: owner))
            } else {
                ops.append(.bind(source: volume.source, target: volume.target, isFile: isFile, readOnly: volume.readOnly, noSymlinks: true))
            }
        }
        for mount in tmpfs {
            ops += parents(of: mount.target)
            ops.append(.tmpfs(target: mount.target, sizeBytes: mount.sizeBytes, mode: 0o755, owner: (uid, gid)))
        }
        return (ops, fresh)
    }

    /// With an image root: the generated `/etc` files, written over the image's own.
    public func imageFiles() -> [(path: String, contents: [UInt8])] {
        generatedEtc().map { ("/etc/" + $0.0, Array($0.1.utf8)) }
    }

    /// With an image root: every directory (and file, for file binds) the mounts are made on,
    /// outside /proc and /dev (made fresh), for the supervisor to create in the upper layer.
    public func mountPoints() -> [(path: String, isFile: Bool, mode: UInt32)] {
        var points: [(String, Bool, UInt32)] = [("/proc", false, 0o555), ("/dev", false, 0o755)]
        for op in mounts() {
            switch op {
            case let .mkdir(path, mode, _): points.append((path, false, mode))
            case let .bind(_, target, isFile, _, _, _, _): points.append((target, isFile, 0o755))
            case let .tmpfs(target, _, mode, _, _): points.append((target, false, mode))
            case let .attach(_, target): points.append((target, false, 0o755))
            default: continue
            }
        }
        return points.filter { !$0.0.hasPrefix("/proc/") && !$0.0.hasPrefix("/dev/") }
    }

    private func generatedEtc() -> [(String, String)] {
        var passwd = "root:x:0:0:root:/root:/bin/sh\n"
        var group = "root:x:0:\n"
        if uid != 0 { passwd += "worker:x:\(uid):\(gid):worker:/workspace:/bin/sh\n" }
        if gid != 0 { group += "worker:x:\(gid):\n" }
        passwd += "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        group += "nogroup:x:65534:\n"
        return [
            ("passwd", passwd), ("group", group),
            ("hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t\(hostname)\n"),
            ("hostname", hostname + "\n"),
            ("nsswitch.conf", "passwd: files\ngroup: files\nhosts: files\n"),
        ]
    }

    private func etc() -> [MountOp] {
        var ops: [MountOp] = [.mkdir("/etc", mode: 0o755)]
        for (name, text) in generatedEtc() { ops.append(.file(target: "/etc/" + name, contents: Array(text.utf8), mode: 0o644)) }
        for name in ["ld.so.cache", "localtime"] where fileKind(hostRoot + "/etc/" + name) != .missing {
            ops.append(.bind(source: hostRoot + "/etc/" + name, target: "/etc/" + name, isFile: true, readOnly: true))
        }
        if fileKind(hostRoot + "/etc/alternatives") == .directory {
            ops.append(.bind(source: hostRoot + "/etc/alternatives", target: "/etc/alternatives", isFile: false, readOnly: true))
        }
        return ops
    }

    /// `/dev`: with the host's directories, a directory of the root tmpfs, sealed read-only with the
    /// root after `pivot_root` (one superblock fewer a run, made and torn down); in an image root, whose
    /// root is the image's overlay, a small tmpfs of its own, sealed here.
    private func dev() -> [MountOp] {
        var ops: [MountOp] = [fromImage ? .tmpfs(target: "/dev", sizeBytes: 64 << 10, mode: 0o755, noexec: true) : .mkdir("/dev", mode: 0o755)]
        for node in Self.deviceNodes {
            ops.append(.bind(source: "/dev/" + node, target: "/dev/" + node, isFile: true, readOnly: false, noexec: true, devices: true))
        }
        ops.append(.symlink(target: "/dev/fd", pointsTo: "/proc/self/fd"))
        ops.append(.symlink(target: "/dev/stdin", pointsTo: "/proc/self/fd/0"))
        ops.append(.symlink(target: "/dev/stdout", pointsTo: "/proc/self/fd/1"))
        ops.append(.symlink(target: "/dev/stderr", pointsTo: "/proc/self/fd/2"))
        ops.append(.tmpfs(target: "/dev/shm", sizeBytes: min(tmpBytes, 64 << 20), mode: 0o1777, noexec: true))
        if fromImage { ops.append(.readOnly(target: "/dev")) }
        return ops
    }

    /// mkdir steps for each missing ancestor of an absolute in-root path.
    private func parents(of path: String) -> [MountOp] {
        let parts = path.split(separator: "/").dropLast()
        var current = ""
        return parts.map { part in
            current += "/" + part
            return .mkdir(current, mode: 0o755)
        }
    }

    enum FileKind: Equatable { case missing, file, directory, symlink(String), other }

    func fileKind(_ path: String) -> FileKind {
        var st = stat()
        guard lstat(path, &st) == 0 else { return .missing }
        switch st.st_mode & S_IFMT {
        case S_IFREG: return .file
        case S_IFDIR: return .directory
        case S_IFLNK:
            var buffer = [CChar](repeating: 0, count: 4096)
            let n = readlink(path, &buffer, buffer.count - 1)
            guard n > 0 else { return .other }
            return .symlink(String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self))
        default: return .other
        }
    }
}
