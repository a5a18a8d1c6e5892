import CStockade
import Glibc
import StockadePolicy

/// Owns the C memory of one `stk_plan`: every string, array and the BPF
/// program, allocated before the clone and freed after it.
final class SpawnPlan {
    private var allocations: [UnsafeMutableRawPointer] = []
    /// Detached bind mounts of the sources, made with the supervisor's credentials.
    private var sourceDescriptors: [Int32] = []
    /// The C plan; zero-filled by calloc, so pointers never set stay NULL.
    private(set) var plan: UnsafeMutablePointer<stk_plan>

    init(_ spec: SandboxSpec, stdin: Int32, stdout: Int32, stderr: Int32) throws(LinuxError) {
        let raw = calloc(1, MemoryLayout<stk_plan>.stride)!
        plan = raw.bindMemory(to: stk_plan.self, capacity: 1)
        allocations.append(raw)
        let candidates = spec.execCandidates()
        let candidateArray = allocate(UnsafePointer<CChar>.self, count: max(candidates.count, 1))
        for (i, c) in candidates.enumerated() { (candidateArray + i).initialize(to: cString(c)) }
        plan.pointee.exec_candidates = UnsafePointer(candidateArray)
        plan.pointee.exec_candidate_count = candidates.count
        plan.pointee.argv = UnsafePointer(stringArray(spec.argv, terminated: true))
        plan.pointee.envp = UnsafePointer(stringArray(spec.environment.map { "\($0.0)=\($0.1)" }, terminated: true))
        plan.pointee.root = cString(spec.rootDirectory)
        plan.pointee.root_data = cString("size=1m,nr_inodes=4096,mode=0755")
        plan.pointee.root_fd = spec.rootMount ?? -1
        plan.pointee.root_readonly = 1
        plan.pointee.workdir = cString(spec.workdir)
        plan.pointee.hostname = cString(spec.hostname)
        plan.pointee.uid_map = cString("0 \(spec.hostIdBase) \(spec.idCount)\n")
        plan.pointee.gid_map = cString("0 \(spec.hostIdBase) \(spec.idCount)\n")
        plan.pointee.uid = spec.uid
        plan.pointee.gid = spec.gid
        plan.pointee.last_cap = Self.lastCap
        plan.pointee.stdin_fd = stdin
        plan.pointee.stdout_fd = stdout
        plan.pointee.stderr_fd = stderr
        plan.pointee.loopback_up = spec.loopback ? 1 : 0
        plan.pointee.listen_port = Int32(spec.listenPort)
        plan.pointee.cgroup_dir_fd = spec.cgroupDirectoryDescriptor ?? -1
        // The run's own host uid owns its user namespace, so per-user kernel
        // quotas (inotify instances, user namespaces, ...) are the run's alone.
        plan.pointee.ns_owner_uid = getuid() == 0 ? spec.hostIdBase : 0

        let ops = allocate(stk_mount_op.self, count: max(spec.mounts.count, 1))
        for (i, op) in spec.mounts.enumerated() { ops[i] = try mountOp(op) }
        plan.pointee.ops = UnsafePointer(ops)
        plan.pointee.op_count = spec.mounts.count
        plan.pointee.fresh_op_count = min(max(spec.freshMountCount, 0), spec.mounts.count)

        let limits = allocate(stk_rlimit.self, count: max(spec.rlimits.count, 1))
        for (i, r) in spec.rlimits.enumerated() {
            limits[i] = stk_rlimit(resource: r.0, limit: rlimit(rlim_cur: rlim_t(r.1), rlim_max: rlim_t(r.2)))
        }
        plan.pointee.rlimits = UnsafePointer(limits)
        plan.pointee.rlimit_count = spec.rlimits.count

        let joins = allocate(Int32.self, count: max(spec.cgroupJoinDescriptors.count, 1))
        for (i, fd) in spec.cgroupJoinDescriptors.enumerated() { joins[i] = fd }
        plan.pointee.cgroup_procs_fds = UnsafePointer(joins)
        plan.pointee.cgroup_procs_count = spec.cgroupJoinDescriptors.count

        if let program = spec.seccomp {
            let filter = allocate(UInt8.self, count: program.bytes.count)
            filter.initialize(from: program.bytes, count: program.bytes.count)
            plan.pointee.filter = UnsafeRawPointer(filter).assumingMemoryBound(to: sock_filter.self)
            plan.pointee.filter_len = UInt16(program.instructionCount)
            plan.pointee.notify = spec.seccompNotify ? 1 : 0
        }
    }

    deinit {
        for p in allocations { free(p) }
        for fd in sourceDescriptors { close(fd) }
    }

    private func allocate<T>(_ type: T.Type, count: Int) -> UnsafeMutablePointer<T> {
        let raw = calloc(count, MemoryLayout<T>.stride)!
        allocations.append(raw)
        return raw.bindMemory(to: T.self, capacity: count)
    }

    private func cString(_ s: String) -> UnsafePointer<CChar> {
        let utf8 = Array(s.utf8)
        let p = allocate(CChar.self, count: utf8.count + 1)
        for (i, b) in utf8.enumerated() { p[i] = CChar(bitPattern: b) }
        p[utf8.count] = 0
        return UnsafePointer(p)
    }

    private func bytes(_ b: [UInt8]) -> UnsafePointer<CChar> {
        let p = allocate(CChar.self, count: max(b.count, 1))
        for (i, x) in b.enumerated() { p[i] = CChar(bitPattern: x) }
        return UnsafePointer(p)
    }

    private func stringArray(_ strings: [String], terminated: Bool) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?> {
        let array = allocate(UnsafeMutablePointer<CChar>?.self, count: strings.count + 1)
        for (i, s) in strings.enumerated() { array[i] = UnsafeMutablePointer(mutating: cString(s)) }
        array[strings.count] = nil
        return array
    }

    /// `stk_clone_tree`'s flags for a bind of a file or a directory.
    static func cloneFlags(noSymlinks: Bool, isFile: Bool) -> Int32 {
        guard noSymlinks else { return 0 }
        return Int32(STK_CLONE_NO_SYMLINKS) | (isFile ? 0 : Int32(STK_CLONE_DIRECTORY))
    }

    /// Why `stk_clone_tree` failed for `source` (errno as it left it).
    private static func cloneFailure(_ source: String, _ target: String, noSymlinks: Bool) -> LinuxError {
        let e = errno
        if e == ELOOP && noSymlinks {
            return LinuxError(.setup, stage: .mounts, errno: e, "\(source) is not shown at \(target): \(LinuxError.linkSwappedIn); nothing is bound")
        }
        return LinuxError(.setup, stage: .mounts, errno: e, "cannot open \(source) to show it at \(target): \(String(cString: strerror(e)))")
    }

    // MOUNT_ATTR_* (linux/mount.h)
    /// A writable detached clone of `source` whose owner is shown as `owner` through an idmapped mount.
    /// The owner is read from the clone itself, not from the path, so a path swapped after the volume
    /// was checked cannot lend the worker another owner's files.
    private static func ownedTree(_ source: String, target: String, isFile: Bool, attr: UInt64,
                                  owner: (uid: UInt32, gid: UInt32)) throws(LinuxError) -> Int32 {
        let fd = stk_clone_tree(source, attr, Self.cloneFlags(noSymlinks: true, isFile: isFile))
        guard fd >= 0 else { throw Self.cloneFailure(source, target, noSymlinks: true) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = errno
            close(fd)
            throw LinuxError(.setup, stage: .mounts, errno: e, "cannot read the owner of the volume \(source): \(String(cString: strerror(e)))")
        }
        let ns: Int32
        do {
            ns = try IdMappedUserNamespace.make(uidMap: "\(st.st_uid) \(owner.uid) 1\n", gidMap: "\(st.st_gid) \(owner.gid) 1\n",
                                                stage: .mounts, purpose: "the writable volume \(source)")
        } catch {
            close(fd)
            throw error
        }
        defer { close(ns) }
        guard stk_tree_idmap(fd, ns) == 0 else {
            let e = errno
            close(fd)
            throw LinuxError(.setup, stage: .mounts, errno: e, """
                cannot make the volume \(source) writable at \(target): its filesystem cannot map the owner \
                (uid \(st.st_uid), gid \(st.st_gid)) to the worker with an idmapped mount (\(String(cString: strerror(e)))); \
                it needs Linux 5.12+ and a filesystem that supports idmapped mounts (ext4, xfs, btrfs; tmpfs since 6.3): \
                mount it read-only (:ro) or use a directory on such a filesystem
                """)
        }
        return fd
    }

    /// The kernel's highest capability number: fixed while it runs, so read once per process. When it
    /// cannot be read, 63, the most a capability set holds: init drops every number up to it, and the
    /// kernel's refusal of one it does not know (EINVAL) is expected there.
    private static let lastCap: Int32 = {
        let read = stk_cap_last_cap()
        return read >= 0 ? read : 63
    }()

    private static let attrReadOnly: UInt64 = 0x1, attrNoSuid: UInt64 = 0x2, attrNoDev: UInt64 = 0x4, attrNoExec: UInt64 = 0x8

    /// The MOUNT_ATTR_* flags of a host bind: always nosuid; nodev unless it shows device nodes.
    static func bindAttributes(readOnly: Bool, noexec: Bool, devices: Bool) -> UInt64 {
        attrNoSuid | (devices ? 0 : attrNoDev) | (readOnly ? attrReadOnly : 0) | (noexec ? attrNoExec : 0)
    }

    private func mountOp(_ op: MountOp) throws(LinuxError) -> stk_mount_op {
        var m = stk_mount_op()
        m.uid = -1
        m.gid = -1
        m.fd = -1
        let nosuidNodev = UInt(MS_NOSUID) | UInt(MS_NODEV)
        switch op {
        case let .mkdir(path, mode, owner):
            m.kind = Int32(STK_OP_MKDIR.rawValue)
            m.target = cString(path)
            m.mode = mode
            if let owner { m.uid = Int64(owner.uid); m.gid = Int64(owner.gid) }
        case let .bind(source, target, isFile, readOnly, noexec, devices, noSymlinks):
            m.kind = Int32(STK_OP_BIND.rawValue)
            let attr = Self.bindAttributes(readOnly: readOnly, noexec: noexec, devices: devices)
            let fd = stk_clone_tree(source, attr, Self.cloneFlags(noSymlinks: noSymlinks, isFile: isFile))
            guard fd >= 0 else { throw Self.cloneFailure(source, target, noSymlinks: noSymlinks) }
            sourceDescriptors.append(fd)
            m.fd = fd
            m.source = cString(source)
            m.target = cString(target)
            m.bind_flags = isFile ? UInt32(STK_BIND_FILE) : 0
            m.attr = attr
        case let .bindOwned(source, target, isFile, owner):
            m.kind = Int32(STK_OP_BIND.rawValue)
            let attr = Self.attrNoSuid | Self.attrNoDev
            let fd = try Self.ownedTree(source, target: target, isFile: isFile, attr: attr, owner: owner)
            sourceDescriptors.append(fd)
            m.fd = fd
            m.source = cString(source)
            m.target = cString(target)
            m.bind_flags = isFile ? UInt32(STK_BIND_FILE) : 0
            m.attr = attr
        case let .tmpfs(target, size, mode, owner, noexec):
            m.kind = Int32(STK_OP_TMPFS.rawValue)
            m.target = cString(target)
            m.data = cString("size=\(size),mode=\(String(mode, radix: 8))")
            m.flags = nosuidNodev | (noexec ? UInt(MS_NOEXEC) : 0)
            if let owner { m.uid = Int64(owner.uid); m.gid = Int64(owner.gid) }
        case let .proc(target):
            m.kind = Int32(STK_OP_PROC.rawValue)
            m.target = cString(target)
        case let .symlink(target, pointsTo):
            m.kind = Int32(STK_OP_SYMLINK.rawValue)
            m.target = cString(target)
            m.source = cString(pointsTo)
        case let .file(target, contents, mode):
            m.kind = Int32(STK_OP_FILE.rawValue)
            m.target = cString(target)
            m.source = bytes(contents)
            m.length = contents.count
            m.mode = mode
        case let .attach(fd, target):
            m.kind = Int32(STK_OP_MOVE_FD.rawValue)
            m.target = cString(target)
            m.fd = fd
        case let .readOnly(target):
            m.kind = Int32(STK_OP_SETATTR.rawValue)
            m.target = cString(target)
            m.attr = Self.attrReadOnly | Self.attrNoSuid | Self.attrNoDev
        case let .mask(target):
            m.kind = Int32(STK_OP_MASK.rawValue)
            m.target = cString(target)
            // Device access stays on the /dev/null bind so that a read finds
            // end of file, as in Docker, rather than an error.
            m.source = cString("/dev/null")
            m.attr = Self.attrReadOnly | Self.attrNoSuid | Self.attrNoExec
            m.data = cString("size=4k,nr_inodes=2,mode=0555")
            m.flags = UInt(MS_RDONLY) | nosuidNodev | UInt(MS_NOEXEC)
        case let .readOnlyInPlace(target):
            m.kind = Int32(STK_OP_READONLY_IN_PLACE.rawValue)
            m.target = cString(target)
            m.attr = Self.attrReadOnly | Self.attrNoSuid | Self.attrNoDev | Self.attrNoExec
        }
        return m
    }
}
