import CStockade
import Glibc
import StockadeTestSupport
import Testing
@testable import StockadeLinux

@Suite("the worker's root layout")
struct RootLayoutTests {
    func layout() -> RootLayout {
        RootLayout(uid: 1000, gid: 1000, hostname: "stockade", tmpBytes: 64 << 20, workspace: .empty(sizeBytes: 1 << 20), resultBytes: 1 << 20)
    }

    @Test("host system directories are bound read-only, or recreated as the symlinks they are")
    func systemDirectories() {
        let ops = layout().mounts()
        #expect(ops.contains(.bind(source: "/usr", target: "/usr", isFile: false, readOnly: true)))
        for dir in ["/bin", "/lib", "/sbin", "/lib64"] {
            var st = stat()
            guard lstat(dir, &st) == 0 else { continue }
            let asSymlink = ops.contains { if case .symlink(dir, _) = $0 { return true } else { return false } }
            let asBind = ops.contains { if case .bind(_, dir, _, true, _, _, _) = $0 { return true } else { return false } }
            #expect(st.st_mode & S_IFMT == S_IFLNK ? asSymlink : asBind, "\(dir)")
        }
    }

    @Test("every bind is read-only except the device nodes, and nothing else of the host is shown")
    func onlyListedHostPaths() {
        let allowed: Set = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache",
                            "/etc/localtime", "/etc/alternatives", "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"]
        for op in layout().mounts() {
            guard case let .bind(source, target, _, readOnly, _, devices, _) = op else { continue }
            #expect(allowed.contains(source), "unexpected host path \(source)")
            #expect(readOnly || target.hasPrefix("/dev/"), "\(target) is writable")
            #expect(devices == target.hasPrefix("/dev/"), "\(target) device access")
        }
    }

    @Test("/dev is sealed read-only after its nodes are placed (with the root, or as an image root's own tmpfs), /tmp and /workspace are bounded tmpfs")
    func devAndTmpfs() throws {
        let ops = layout().mounts()
        // With the host's directories /dev is a directory of the root tmpfs, which the child seals
        // read-only after pivot_root, after every step.
        #expect(ops.contains(.mkdir("/dev", mode: 0o755)))
        #expect(!ops.contains { if case .tmpfs("/dev", _, _, _, _) = $0 { return true } else { return false } })
        let plan = try SpawnPlan(SandboxSpec(argv: ["/bin/true"], environment: [], mounts: []), stdin: 0, stdout: 1, stderr: 2)
        #expect(plan.plan.pointee.root_readonly == 1)
        var image = layout()
        image.fromImage = true
        let imageOps = image.mounts()
        let devSeal = imageOps.firstIndex(of: .readOnly(target: "/dev"))
        let lastDevNode = imageOps.lastIndex { if case .bind(_, let t, _, _, _, _, _) = $0 { return t.hasPrefix("/dev/") } else { return false } }
        #expect(imageOps.contains { if case .tmpfs("/dev", _, _, _, true) = $0 { return true } else { return false } })
        #expect(devSeal != nil && lastDevNode != nil && devSeal! > lastDevNode!)
        #expect(ops.contains { if case .tmpfs("/tmp", 64 << 20, 0o1777, _, _) = $0 { return true } else { return false } })
        #expect(ops.contains { if case .tmpfs("/workspace", 1 << 20, _, _, _) = $0 { return true } else { return false } })
    }

    @Test("right after /proc is mounted its host details are masked and its tunables made read-only; there is no /sys")
    func procMasks() {
        let ops = layout().mounts()
        let proc = ops.firstIndex(of: .proc(target: "/proc"))
        let masks = ops.indices.filter { if case .mask = ops[$0] { return true } else { return false } }
        let readOnly = ops.indices.filter { if case .readOnlyInPlace = ops[$0] { return true } else { return false } }
        #expect(proc != nil && masks.first == proc.map { $0 + 1 })
        #expect(masks.last.map { $0 + 1 } == readOnly.first)
        for path in ["/proc/cmdline", "/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug", "/proc/acpi", "/proc/scsi"] {
            #expect(ops.contains(.mask(target: path)), "\(path)")
        }
        for path in ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"] {
            #expect(ops.contains(.readOnlyInPlace(target: path)), "\(path)")
        }
        #expect(!ops.contains { String(describing: $0).contains("\"/sys") })
    }

    @Test("a volume gets its parent directories created before the bind")
    func volumeParents() {
        var l = layout()
        l.volumes = [.init(source: "/usr/share", target: "/data/deep/share", readOnly: true)]
        let ops = l.mounts()
        let mkdirs = ops.compactMap { if case .mkdir(let p, _, _) = $0 { return p } else { return nil } }
        #expect(mkdirs.contains("/data") && mkdirs.contains("/data/deep"))
        #expect(ops.last == .bind(source: "/usr/share", target: "/data/deep/share", isFile: false, readOnly: true, noSymlinks: true))
    }

    @Test("with the worker's host ids known, an rw volume is an idmapped bind to them and an ro one a plain read-only bind")
    func writableVolumesAreOwned() {
        var l = layout()
        l.volumes = [.init(source: "/srv/rw", target: "/rw", readOnly: false), .init(source: "/srv/ro", target: "/ro", readOnly: true)]
        l.workerHostIds = (uid: 1_000_066_536, gid: 1_000_066_537)
        let ops = l.mounts()
        #expect(ops.contains(.bindOwned(source: "/srv/rw", target: "/rw", isFile: false, owner: (uid: 1_000_066_536, gid: 1_000_066_537))))
        #expect(ops.contains(.bind(source: "/srv/ro", target: "/ro", isFile: false, readOnly: true, noSymlinks: true)))
        #expect(!ops.contains { if case .bind(_, "/rw", _, _, _, _, _) = $0 { return true } else { return false } })
    }
}

extension MountOp {
    /// The in-root path the step acts on.
    var targetPath: String {
        switch self {
        case let .mkdir(path, _, _): path
        case let .bind(_, target, _, _, _, _, _), let .bindOwned(_, target, _, _), let .tmpfs(target, _, _, _, _),
             let .proc(target), let .symlink(target, _), let .file(target, _, _), let .attach(_, target),
             let .readOnly(target), let .mask(target), let .readOnlyInPlace(target): target
        }
    }

    /// Shows something the child did not make (a host path, a volume, the workspace, the request):
    /// what is beneath it is not the child's own.
    var showsForeignTree: Bool {
        switch self {
        case .bind, .bindOwned, .attach: true
        default: false
        }
    }
}

@Suite("which mount steps the child checks for links")
struct FreshMountStepTests {
    func beneath(_ path: String, _ ancestor: String) -> Bool { path == ancestor || path.hasPrefix(ancestor + "/") }

    @Test("with the host's directories, the fixed steps are fresh; every volume, its parents and every profile tmpfs are checked")
    func hostRoot() {
        var l = RootLayout(uid: 1000, gid: 1000, hostname: "stockade", tmpBytes: 64 << 20, workspace: .mount(fd: 7),
                           requestDirectory: "/var/lib/stockade/runs/x/request", resultMount: 8, resultBytes: 1 << 20)
        let bare = l.mountSteps()
        #expect(bare.fresh == bare.steps.count && bare.fresh > 20)
        l.volumes = [.init(source: "/srv/data", target: "/data", readOnly: false), .init(source: "/usr/share", target: "/data/sub/share", readOnly: true),
                     .init(source: "/srv/x", target: "/tmp/x", readOnly: true)]
        l.workerHostIds = (1_000_001_000, 1_000_001_000)
        l.tmpfs = [(target: "/data/scratch", sizeBytes: 1 << 20), (target: "/cache", sizeBytes: 1 << 20)]
        let (steps, fresh) = l.mountSteps()
        #expect(fresh == bare.fresh, "volumes and tmpfs come after the fixed steps")
        #expect(Array(steps[..<fresh]) == bare.steps)
        let foreign = l.volumes.map(\.target) + l.tmpfs.map(\.target)
        for (i, step) in steps.enumerated() {
            if i < fresh {
                #expect(!foreign.contains { beneath(step.targetPath, $0) }, "fresh step \(step) is in a volume or profile tmpfs")
                // Nothing a fresh step acts on lies beneath a tree the child did not make.
                for earlier in steps[..<i] where earlier.showsForeignTree {
                    #expect(!step.targetPath.hasPrefix(earlier.targetPath + "/"), "fresh step \(step) lies beneath \(earlier)")
                }
            } else {
                // A volume, a profile tmpfs, or a directory made on the way to one.
                #expect(foreign.contains { beneath($0, step.targetPath) }, "checked step \(step) is not a profile's")
            }
        }
    }

    @Test("the fresh-step count crosses the helper's wire intact; a count beyond the steps is refused")
    func wire() throws {
        var l = RootLayout(uid: 1000, gid: 1000, hostname: "stockade", tmpBytes: 64 << 20, workspace: .empty(sizeBytes: 1 << 20), resultBytes: 1 << 20)
        l.volumes = [.init(source: "/usr/share", target: "/data", readOnly: true)]
        let (steps, fresh) = l.mountSteps()
        var spec = SandboxSpec(argv: ["/bin/true"], environment: [], mounts: steps)
        spec.freshMountCount = fresh
        let plan = try SpawnPlan(spec, stdin: 0, stdout: 1, stderr: 2)
        var ops = 0, decodedFresh = 0
        #expect(stk_wire_check(plan.plan, &ops, &decodedFresh) == 0)
        #expect(ops == steps.count && decodedFresh == fresh && fresh > 0 && fresh < steps.count)
        plan.plan.pointee.fresh_op_count = steps.count + 1
        #expect(stk_wire_check(plan.plan, &ops, &decodedFresh) == -1)
    }

    @Test("with an image root every step is checked: the image's own tree may hold links")
    func imageRoot() {
        var l = RootLayout(uid: 1000, gid: 1000, hostname: "stockade", tmpBytes: 64 << 20, workspace: .empty(sizeBytes: 1 << 20), resultBytes: 1 << 20)
        l.fromImage = true
        let (steps, fresh) = l.mountSteps()
        #expect(fresh == 0 && !steps.isEmpty)
    }
}

@Suite("command lookup")
struct ExecCandidateTests {
    @Test("a bare command is looked up along the worker's PATH; a path is used as given")
    func candidates() {
        var spec = SandboxSpec(argv: ["sh", "-c", "true"], environment: [("PATH", "/usr/bin:relative:/bin")], mounts: [])
        #expect(spec.execCandidates() == ["/usr/bin/sh", "/bin/sh"])
        spec.argv = ["./x"]
        #expect(spec.execCandidates() == ["./x"])
        spec.argv = []
        #expect(spec.execCandidates().isEmpty)
    }

    @Test("a volume's clone follows no link on its path (one there now was put there after the check); other binds still do",
          .enabled(if: getuid() == 0, "open_tree needs CAP_SYS_ADMIN"))
    func volumeClonesFollowNoLinks() throws {
        let dir = makeScratchDirectory("clone")
        defer { for path in [dir + "/link", dir + "/real/sub", dir + "/real", dir] { _ = Glibc.remove(path) } }
        try #require(mkdir(dir + "/real", 0o755) == 0 && mkdir(dir + "/real/sub", 0o755) == 0 && symlink("real", dir + "/link") == 0)
        let attr = SpawnPlan.bindAttributes(readOnly: true, noexec: false, devices: false)
        for path in [dir + "/link", dir + "/link/sub"] {
            let followed = stk_clone_tree(path, attr, 0)
            #expect(followed >= 0, "the control: a system bind follows the link (\(path))")
            if followed >= 0 { close(followed) }
            let refused = stk_clone_tree(path, attr, Int32(STK_CLONE_NO_SYMLINKS | STK_CLONE_DIRECTORY))
            let e = errno
            #expect(refused < 0 && e == ELOOP, "\(path): \(refused), errno \(e)")
            if refused >= 0 { close(refused) }
        }
        let exact = stk_clone_tree(dir + "/real/sub", attr, Int32(STK_CLONE_NO_SYMLINKS | STK_CLONE_DIRECTORY))
        #expect(exact >= 0, "a path without links is cloned")
        if exact >= 0 { close(exact) }
        // A volume's steps ask for it, read-only and writable alike.
        var l = RootLayout(uid: 1000, gid: 1000, hostname: "stockade", tmpBytes: 64 << 20, workspace: .empty(sizeBytes: 1 << 20), resultBytes: 1 << 20)
        l.volumes = [RootLayout.Volume(source: dir + "/real", target: "/ro", readOnly: true)]
        #expect(l.mountSteps().steps.contains(.bind(source: dir + "/real", target: "/ro", isFile: false, readOnly: true, noSymlinks: true)))
    }

    @Test("a --rootfs directory's layer follows no link on its path when it was resolved at the check; an image's cached layers still may",
          .enabled(if: getuid() == 0, "idmapped mounts need CAP_SYS_ADMIN"))
    func rootfsLayerFollowsNoLinks() throws {
        let dir = makeScratchDirectory("rootfs")
        defer { for path in [dir + "/link", dir + "/anchor", dir + "/real", dir] { _ = Glibc.remove(path) } }
        try #require(mkdir(dir + "/real", 0o755) == 0 && mkdir(dir + "/anchor", 0o755) == 0 && symlink("real", dir + "/link") == 0)
        let layout = RootLayout(uid: 1000, gid: 1000, hostname: "stockade", tmpBytes: 64 << 20, workspace: .empty(sizeBytes: 1 << 20), resultBytes: 1 << 20)
        func mount(_ layer: String, resolved: Bool) -> Int32? {
            do {
                let fd = try ImageRoot.mount(layers: [layer], anchor: dir + "/anchor", layout: layout, hostIdBase: 3_000_000_000, idCount: 65536,
                                             resolved: resolved)
                close(fd)
                return nil
            } catch {
                return error.errno
            }
        }
        #expect(mount(dir + "/real", resolved: true) == nil, "a path without links is mounted")
        #expect(mount(dir + "/link", resolved: false) == nil, "the control: an image's layer path may pass a link")
        #expect(mount(dir + "/link", resolved: true) == ELOOP)
    }
}
