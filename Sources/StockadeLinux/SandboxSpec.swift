import Glibc

/// One step of building the worker's root (executed in order by the child).
public enum MountOp: Sendable, Equatable {
    case mkdir(String, mode: UInt32, owner: (uid: UInt32, gid: UInt32)? = nil)
    /// Bind `source` (host) at `target`, recursively, with these MOUNT_ATTR_* flags. `noSymlinks`: the
    /// source was resolved when it was checked (a volume's), so no link is followed on the way to it
    /// now: one met there was put there since, and the run fails instead of showing what it points to.
    case bind(source: String, target: String, isFile: Bool, readOnly: Bool, noexec: Bool = false, devices: Bool = false,
              noSymlinks: Bool = false)
    /// Bind `source` (host) at `target` writable through an idmapped mount: the owner of `source` (uid
    /// and gid, read from the cloned tree itself) is shown as host `owner` (the worker's host ids), so
    /// the worker writes there as that owner and what it creates belongs to that owner on the host.
    /// Ids other than the owner's are unmapped: the worker sees them as nobody and cannot take them.
    /// The source is a volume's, resolved when it was checked: no link is followed on the way to it.
    case bindOwned(source: String, target: String, isFile: Bool, owner: (uid: UInt32, gid: UInt32))
    case tmpfs(target: String, sizeBytes: Int64, mode: UInt32, owner: (uid: UInt32, gid: UInt32)? = nil, noexec: Bool = false)
    case proc(target: String)
    case symlink(target: String, pointsTo: String)
    case file(target: String, contents: [UInt8], mode: UInt32)
    /// Attach a detached mount (from `stk_tmpfs_detached`) at `target`.
    case attach(fd: Int32, target: String)
    case readOnly(target: String)
    /// Hides `target` when it exists: a directory under an empty read-only
    /// tmpfs, anything else under a read-only bind of /dev/null. An absent
    /// target is skipped (not every kernel has every file); one that exists
    /// but cannot be covered fails the setup.
    case mask(target: String)
    /// Binds `target` onto itself read-only, nosuid, nodev, noexec when it
    /// exists (skipped when absent).
    case readOnlyInPlace(target: String)

    public static func == (l: MountOp, r: MountOp) -> Bool { String(describing: l) == String(describing: r) }
}

/// Everything the child needs, as Swift values; `SpawnPlan` turns it into the C plan.
public struct SandboxSpec: Sendable {
    public var argv: [String]
    /// The worker's whole environment (nothing else passes).
    public var environment: [(String, String)]
    public var hostname: String = "stockade"
    /// The worker's ids inside its user namespace.
    public var uid: UInt32 = 1000
    public var gid: UInt32 = 1000
    /// In-namespace ids 0..<idCount map to host ids hostIdBase..<hostIdBase+idCount: never host 0.
    public var hostIdBase: UInt32 = SandboxSpec.defaultHostIdBase
    public var idCount: UInt32 = 65536
    /// Where the child mounts its new root's tmpfs, inside its own mount
    /// namespace only (the host never sees it). `/tmp`, as bubblewrap does: a
    /// directory every uid can reach; bind sources come as descriptors. The
    /// spawn helper's own mount namespace holds an empty `/tmp` for this and
    /// no other directory (stk_helper.c, stk_helper_minimal_mounts).
    public var rootDirectory: String = "/tmp"
    public var mounts: [MountOp]
    /// How many leading `mounts` act only on paths the child has just made itself
    /// (`RootLayout.mountSteps`): the child checks the rest for links, step by step.
    public var freshMountCount = 0
    /// A detached mount (an image's root overlay, `ImageRoot`) the child attaches as its new root
    /// instead of an empty tmpfs; the mounts are then made on top of it.
    public var rootMount: Int32?
    public var workdir: String = "/workspace"
    public var loopback: Bool = false
    /// Nonzero: a listener on 127.0.0.1:`listenPort` is made in the worker's network namespace
    /// before the worker is released (`SpawnedWorker.listenFD`): the egress proxy's, there before
    /// the worker's first connection attempt.
    public var listenPort: UInt16 = 0
    /// (resource, soft, hard)
    public var rlimits: [(Int32, UInt64, UInt64)] = []
    public var seccomp: SeccompProgram?
    public var seccompNotify: Bool = false
    public var cgroupJoinDescriptors: [Int32] = []
    public var cgroupDirectoryDescriptor: Int32?

    public static let defaultHostIdBase: UInt32 = 1_000_000_000

    public init(argv: [String], environment: [(String, String)], mounts: [MountOp]) {
        self.argv = argv
        self.environment = environment
        self.mounts = mounts
    }

    /// The host uid a worker id maps to.
    public func hostID(_ inside: UInt32) -> UInt32 { hostIdBase + inside }

    /// execve candidates: the command itself when it has a slash, else each PATH entry.
    public func execCandidates() -> [String] {
        guard let command = argv.first, !command.isEmpty else { return [] }
        if command.contains("/") { return [command] }
        let path = environment.last(where: { $0.0 == "PATH" })?.1 ?? "/usr/local/bin:/usr/bin:/bin"
        return path.split(separator: ":").filter { $0.hasPrefix("/") }.map { "\($0)/\(command)" }
    }
}
