import CStockade
import Foundation
import Glibc
import Testing
@testable import StockadeLinux

@Suite("the shared root skeleton", .serialized)
struct RootSkeletonTests {
    func isMount(_ step: MountOp) -> Bool {
        switch step {
        case .mkdir, .symlink, .file: return false
        default: return true
        }
    }

    func path(_ step: MountOp) -> String? {
        switch step {
        case let .mkdir(path, _, _), let .symlink(path, _), let .file(path, _, _): return path
        default: return nil
        }
    }

    func layout() -> RootLayout {
        var l = RootLayout(uid: 1000, gid: 1000, hostname: "skeleton", tmpBytes: 64 << 20, workspace: .mount(fd: 7),
                           requestDirectory: "/var/lib/stockade/runs/x/request", resultMount: 8, resultBytes: 1 << 20)
        l.volumes = [.init(source: "/srv/data", target: "/data", readOnly: false), .init(source: "/usr/share", target: "/data/sub/share", readOnly: true),
                     .init(source: "/srv/x", target: "/tmp/x", readOnly: true), .init(source: "/srv/y", target: "/opt/tools/y", readOnly: true)]
        l.workerHostIds = (1_000_001_000, 1_000_001_000)
        l.tmpfs = [(target: "/data/scratch", sizeBytes: 1 << 20), (target: "/cache", sizeBytes: 1 << 20)]
        return l
    }

    @Test("every directory, link and generated file moves into the skeleton, with a mount point for every mount; the mounts stay, in order")
    func splitKeepsEveryMount() throws {
        let l = layout()
        let (steps, fresh) = l.mountSteps()
        let split = RootSkeleton.split(steps, fresh: fresh, sharedBinds: l.sharedBindTargets)
        // The host's own binds move into the skeleton; every other mount stays, in order.
        let moved = Set(split.entries.compactMap { if case .bind = $0.kind { $0.path } else { nil } })
        #expect(moved.contains("/usr") && moved.contains("/dev/null") && !moved.contains("/sandbox/request") && !moved.contains("/data"))
        #expect(moved.isSubset(of: l.sharedBindTargets))
        #expect(split.steps.filter(isMount) == steps.filter(isMount).filter { step in
            if case let .bind(_, target, _, _, _, _, _) = step { return !moved.contains(target) } else { return true }
        }, "the same mounts, in the same order")
        for case let .bind(source, target, isFile, readOnly, noexec, devices, _) in steps where moved.contains(target) {
            var st = stat()
            #expect(stat(source, &st) == 0)
            #expect(split.entries.contains(.init(path: target, kind: .bind(source: source, isFile: isFile, readOnly: readOnly, noexec: noexec, devices: devices,
                                                                            device: UInt64(st.st_dev), inode: UInt64(st.st_ino)))), "\(target)")
        }
        let entries = Dictionary(uniqueKeysWithValues: split.entries.compactMap { entry -> (String, RootSkeleton.Entry.Kind)? in
            if case .bind = entry.kind { return nil }
            return (entry.path, entry.kind)
        })
        // Every other step is either still a step or an entry of the same kind.
        for step in steps where !isMount(step) {
            guard !split.steps.contains(step) else { continue }
            let p = try #require(path(step))
            switch (step, entries[p]) {
            case let (.mkdir(_, mode, _), .directory(kept)?): #expect(mode == kept, "\(p)")
            case let (.symlink(_, to), .symlink(kept)?): #expect(to == kept, "\(p)")
            case let (.file(_, contents, mode), .file(keptMode, kept)?): #expect(contents == kept && mode == keptMode, "\(p)")
            default: Issue.record("\(step) is neither a step nor a skeleton entry")
            }
        }
        // What stays is a mount, or made beneath a mount at run time (inside the volume /data).
        for step in split.steps where !isMount(step) {
            #expect(path(step)?.hasPrefix("/data/") == true || path(step) == "/tmp", "\(step) stayed a step")
        }
        // A mount point for each mount that is not beneath another; each entry's parent comes first.
        for case let .bind(_, target, isFile, _, _, _, _) in steps where !target.hasPrefix("/data/") && !target.hasPrefix("/tmp/") {
            if isFile { #expect(entries[target] == .file(mode: 0o444, contents: []), "\(target)") } else { #expect(entries[target] == .directory(mode: 0o755), "\(target)") }
        }
        for target in ["/proc", "/tmp", "/workspace", "/sandbox/request", "/sandbox/result", "/dev/shm", "/data", "/cache", "/opt/tools/y"] {
            #expect(entries[target] != nil, "no mount point \(target)")
        }
        #expect(entries["/data/scratch"] == nil && entries["/tmp/x"] == nil && entries["/data/sub"] == nil, "made in the volume or tmpfs at run time")
        var seen: Set = ["/"]
        for entry in split.entries {
            #expect(seen.contains(RootSkeleton.parent(of: entry.path)), "\(entry.path) before its parent")
            seen.insert(entry.path)
        }
        let passwd = try #require(entries["/etc/passwd"])
        guard case let .file(_, contents) = passwd else { Issue.record("passwd is \(passwd)"); return }
        #expect(String(decoding: contents, as: UTF8.self).contains("worker:x:1000:1000:"))
        // The fixed steps stay fresh; the profile's stay checked.
        #expect(split.fresh == split.steps.prefix(split.fresh).count && split.fresh < split.steps.count)
        #expect(Array(split.steps[split.fresh...]) == Array(steps[fresh...]).filter { step in split.steps.contains(step) })
        for step in split.steps[split.fresh...] { #expect(steps[fresh...].contains(step), "\(step) was fresh, now checked") }
    }

    @Test("a directory the skeleton has, hidden by a later mount over its parent, is made again at run time")
    func hiddenDirectoryStaysAStep() throws {
        var l = layout()
        l.volumes = [.init(source: "/srv/y", target: "/x/y", readOnly: true), .init(source: "/srv/x", target: "/x", readOnly: false),
                     .init(source: "/srv/z", target: "/x/y/z", readOnly: true)]
        l.tmpfs = []
        let (steps, fresh) = l.mountSteps()
        let split = RootSkeleton.split(steps, fresh: fresh)
        func index(_ match: (MountOp) -> Bool) -> Int? { split.steps.firstIndex(where: match) }
        let bindX = try #require(index { if case .bindOwned(_, "/x", _, _) = $0 { true } else { false } })
        let bindZ = try #require(index { if case .bind(_, "/x/y/z", _, _, _, _, _) = $0 { true } else { false } })
        // /x/y is in the skeleton (for the first volume), and made again inside the volume at /x
        // before /x/y/z is mounted there.
        #expect(split.entries.contains(.init(path: "/x/y", kind: .directory(mode: 0o755))))
        let remade = split.steps.indices.filter { i in
            if case .mkdir("/x/y", _, _) = split.steps[i] { return i > bindX && i < bindZ } else { return false }
        }
        #expect(remade.count == 1, "mkdir /x/y between the mount of /x and that of /x/y/z: \(split.steps)")
    }

    @Test("a path under a link, or with a dot-dot, never enters the skeleton: it stays a step the init checks")
    func linksStaySteps() throws {
        let host = FileManager.default.temporaryDirectory.appendingPathComponent("skeleton-host-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: host) }
        try FileManager.default.createDirectory(atPath: host + "/usr/bin", withIntermediateDirectories: true)
        #expect(symlink("usr/bin", host + "/bin") == 0)
        var l = layout()
        l.hostRoot = host
        l.volumes = [.init(source: "/srv/y", target: "/bin/tool", readOnly: true), .init(source: "/srv/z", target: "/srv/../etc", readOnly: true)]
        l.tmpfs = []
        let (steps, fresh) = l.mountSteps()
        let split = RootSkeleton.split(steps, fresh: fresh)
        #expect(split.entries.contains(.init(path: "/bin", kind: .symlink("usr/bin"))))
        #expect(!split.entries.contains { $0.path.hasPrefix("/bin/") || $0.path.contains("..") })
        #expect(split.steps[split.fresh...].contains { if case .bind(_, "/bin/tool", _, _, _, _, _) = $0 { return true } else { return false } })
        for bad in ["/srv/../etc", "/a//b", "/a/", "/", "", "a/b", "/./a", "/a/.", "/a/..", "/.."] { #expect(!RootSkeleton.isPlain(bad), "\(bad)") }
        for good in ["/a/b", "/a", "/.a", "/a../b", "/...", "/a/.b."] { #expect(RootSkeleton.isPlain(good), "\(good)") }
    }

    @Test("prepare makes the skeleton that later clones of the same entries share, and makes it once",
          .enabled(if: getuid() == 0, "needs root: fsopen and open_tree"))
    func preparedAhead() throws {
        var l = layout()
        l.hostname = "ahead-\(UUID().uuidString.prefix(8))"
        let entries = RootSkeleton.split(l.mountSteps().steps, fresh: 0).entries
        #expect(!RootSkeleton.holds(entries))
        try RootSkeleton.prepare(entries)
        #expect(RootSkeleton.holds(entries))
        let made = try #require(RootSkeleton.descriptor(entries))
        try RootSkeleton.prepare(entries)
        #expect(RootSkeleton.descriptor(entries) == made, "a second prepare made another skeleton")
        let a = try RootSkeleton.clone(entries)
        defer { close(a) }
        var sa = stat(), sm = stat()
        #expect(fstat(a, &sa) == 0 && fstat(made, &sm) == 0)
        #expect(sa.st_dev == sm.st_dev, "the clone is not of the prepared skeleton")
        #expect(RootSkeleton.descriptor(entries) == made)
    }

    @Test("a skeleton is made once per entry list and sealed read-only; each clone is a mount of that one filesystem",
          .enabled(if: getuid() == 0, "needs root: fsopen and open_tree"))
    func madeOnceAndSealed() throws {
        let (steps, fresh) = layout().mountSteps()
        let entries = RootSkeleton.split(steps, fresh: fresh).entries
        var other = layout()
        other.hostname = "other-\(UUID().uuidString.prefix(8))"
        let otherEntries = RootSkeleton.split(other.mountSteps().steps, fresh: 0).entries
        #expect(entries != otherEntries)
        let a = try RootSkeleton.clone(entries), b = try RootSkeleton.clone(entries), c = try RootSkeleton.clone(otherEntries)
        defer { close(a); close(b); close(c) }
        var sa = stat(), sb = stat(), sc = stat()
        #expect(fstat(a, &sa) == 0 && fstat(b, &sb) == 0 && fstat(c, &sc) == 0)
        #expect(sa.st_dev == sb.st_dev && sa.st_dev != sc.st_dev, "one filesystem per entry list")
        // Its contents, through the clone.
        let passwd = openat(a, "etc/passwd", O_RDONLY | O_CLOEXEC)
        #expect(passwd >= 0)
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = read(passwd, &buffer, buffer.count)
        close(passwd)
        #expect(String(decoding: buffer.prefix(max(n, 0)), as: UTF8.self).contains("worker:x:1000:1000:"))
        var st = stat()
        #expect(fstatat(a, "etc/passwd", &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_mode & 0o7777 == 0o644 && st.st_uid == 0)
        #expect(fstatat(a, "proc", &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_mode & 0o7777 == 0o555)
        // Sealed: nothing can be made or changed in it, even by the host's root through a clone.
        #expect(mkdirat(a, "new", 0o755) == -1 && errno == EROFS)
        #expect(openat(b, "etc/passwd", O_WRONLY | O_CLOEXEC) == -1 && errno == EROFS)
        #expect(symlinkat("/", c, "link") == -1 && errno == EROFS)
        var fs = statvfs()
        #expect(fstatvfs(a, &fs) == 0 && fs.f_flag & UInt(ST_RDONLY) != 0)
        // The refusal is the superblock's, not only the clone's mount flag: a clone made writable at
        // the mount (MOUNT_ATTR_RDONLY cleared, which the host's root may do to a mount it holds) is
        // still refused. Control: the same on a detached tmpfs that was not sealed succeeds.
        let rdonly: UInt64 = 0x1 // MOUNT_ATTR_RDONLY
        let writableClone = try RootSkeleton.clone(entries)
        defer { close(writableClone) }
        #expect(stk_mount_attr_clear(writableClone, rdonly) == 0, "\(String(cString: strerror(errno)))")
        #expect(fstatvfs(writableClone, &fs) == 0)
        #expect(mkdirat(writableClone, "new", 0o755) == -1 && errno == EROFS, "the superblock refuses what the mount allows")
        let unsealed = stk_tmpfs_detached(1 << 20, 64, 0, 0, 0o755)
        #expect(unsealed >= 0)
        defer { close(unsealed) }
        #expect(mkdirat(unsealed, "new", 0o755) == 0, "control: an unsealed tmpfs takes the same write")
        #expect(stk_mount_attr_clear(unsealed, rdonly) == 0)
        // Kept: the last few entry lists only.
        for i in 0..<(RootSkeleton.kept + 2) {
            var l = layout()
            l.hostname = "evict-\(i)"
            close(try RootSkeleton.clone(RootSkeleton.split(l.mountSteps().steps, fresh: 0).entries))
        }
        #expect(RootSkeleton.count == RootSkeleton.kept)
        // They are held in the mount namespace of a thread of this process that holds nothing of the
        // host's but what the skeletons bind: here (no binds) only tmpfs mounts, its root and the last
        // few skeletons, the evicted ones unmounted.
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")
        let after = tasks.compactMap { try? String(contentsOfFile: "/proc/self/task/\($0)/mountinfo", encoding: .utf8) }
            .first { info in info.split(separator: "\n").allSatisfy { $0.contains(" - tmpfs ") } }
        #expect(after?.split(separator: "\n").count == RootSkeleton.kept + 1, "evicted skeletons are unmounted: \(after ?? "")")
    }

    @Test("the host's own binds are mounted in the skeleton, never a run's; a source replaced since makes another skeleton",
          .enabled(if: getuid() == 0, "needs root: fsopen and open_tree"))
    func hostBindsInSkeleton() throws {
        let host = FileManager.default.temporaryDirectory.appendingPathComponent("skeleton-binds-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: host) }
        try FileManager.default.createDirectory(atPath: host + "/usr/bin", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: host + "/etc", withIntermediateDirectories: true)
        try Data("tool".utf8).write(to: URL(fileURLWithPath: host + "/usr/bin/tool"))
        try Data("one".utf8).write(to: URL(fileURLWithPath: host + "/etc/ld.so.cache"))
        var l = layout()
        l.hostRoot = host
        l.volumes = []
        l.tmpfs = []
        func read(_ fd: Int32, _ path: String) -> String? {
            let file = openat(fd, path, O_RDONLY | O_CLOEXEC)
            guard file >= 0 else { return nil }
            defer { close(file) }
            var buffer = [UInt8](repeating: 0, count: 64)
            let n = Glibc.read(file, &buffer, buffer.count)
            return String(decoding: buffer.prefix(max(n, 0)), as: UTF8.self)
        }
        let first = RootSkeleton.split(l.mountSteps().steps, fresh: l.mountSteps().fresh, sharedBinds: l.sharedBindTargets)
        #expect(!first.steps.contains { if case .bind(_, let t, _, _, _, _, _) = $0 { return t != "/sandbox/request" } else { return false } },
                "only the request's bind is left to the init: \(first.steps)")
        let a = try RootSkeleton.clone(first.entries)
        defer { close(a) }
        #expect(read(a, "usr/bin/tool") == "tool" && read(a, "etc/ld.so.cache") == "one")
        var st = stat()
        #expect(fstatat(a, "dev/null", &st, 0) == 0 && st.st_mode & S_IFMT == S_IFCHR, "the device node is bound")
        #expect(openat(a, "usr/new", O_CREAT | O_WRONLY | O_CLOEXEC, 0o644) == -1 && errno == EROFS, "the host tree is read-only")
        // ldconfig writes a new cache and renames it over the old one: the next run gets a skeleton showing it.
        try Data("two".utf8).write(to: URL(fileURLWithPath: host + "/etc/ld.so.cache.new"))
        #expect(rename(host + "/etc/ld.so.cache.new", host + "/etc/ld.so.cache") == 0)
        let second = RootSkeleton.split(l.mountSteps().steps, fresh: l.mountSteps().fresh, sharedBinds: l.sharedBindTargets)
        #expect(second.entries != first.entries)
        let b = try RootSkeleton.clone(second.entries)
        defer { close(b) }
        #expect(read(b, "etc/ld.so.cache") == "two" && read(a, "etc/ld.so.cache") == "one")
    }
}
