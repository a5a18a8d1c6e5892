import Foundation
import Testing

/// Writable volumes that work: an rw volume's owner is shown as the worker through an idmapped mount, so the
/// worker can write into a directory that is not world-writable, and what it writes belongs to the directory's
/// owner on the host, never to the run's host id range.
@Suite("writable volumes are idmapped to their owner, end to end", .serialized,
       .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"), .timeLimit(.minutes(2)))
struct VolumeOwnerTests {
    func directory(owner: (uid: UInt32, gid: UInt32), mode: mode_t = 0o755) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-vol-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        // /tmp's own mode lets the worker's bind reach it; the directory's owner and mode are the point.
        #expect(chown(dir, owner.uid, owner.gid) == 0 && chmod(dir, mode) == 0)
        return dir
    }

    func owner(_ path: String) -> String {
        var st = stat()
        return lstat(path, &st) == 0 ? "\(st.st_uid):\(st.st_gid)" : "missing"
    }

    @Test("a user's 0755 directory as an rw volume: the worker sees it as its own, writes, and the new files belong to that user")
    func userOwned() throws {
        let h = try Harness()
        let dir = try directory(owner: (4242, 4343))
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try h.stockade(["run", "--json", "--volume", "\(dir):/data:rw", "--", "/bin/sh", "-c",
                                "stat -c %u:%g /data && echo hi > /data/new.txt && mkdir /data/sub && echo x > /data/sub/f && echo wrote"])
        let report = try r.report()
        #expect(report.string("stdout") == "1000:1000\nwrote\n", "\(report.string("stdout") ?? "") \(report.string("stderr") ?? "") \(r.stderr)")
        for path in ["/new.txt", "/sub", "/sub/f"] {
            #expect(owner(dir + path) == "4242:4343", "\(path) belongs to the directory's owner, not the run's host ids")
        }
        #expect(try String(contentsOfFile: dir + "/new.txt", encoding: .utf8) == "hi\n")
    }

    @Test("a root-owned 0755 directory as an rw volume: the worker writes, and the new file belongs to root")
    func rootOwned() throws {
        let h = try Harness()
        let dir = try directory(owner: (0, 0))
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try h.stockade(["run", "--json", "--volume", "\(dir):/data:rw", "--", "/bin/sh", "-c", "echo hi > /data/new.txt && echo wrote"])
        #expect(try r.report().string("stdout") == "wrote\n", "\(r.stdout) \(r.stderr)")
        #expect(owner(dir + "/new.txt") == "0:0")
    }

    @Test("files of another owner inside an rw volume stay out of reach; a read-only volume still refuses every write")
    func othersAndReadOnly() throws {
        let h = try Harness()
        let dir = try directory(owner: (4242, 4343))
        let ro = try directory(owner: (4242, 4343))
        defer { for p in [dir, ro] { try? FileManager.default.removeItem(atPath: p) } }
        try "theirs\n".write(toFile: dir + "/theirs.txt", atomically: false, encoding: .utf8)
        #expect(chown(dir + "/theirs.txt", 5555, 5555) == 0 && chmod(dir + "/theirs.txt", 0o644) == 0)
        let r = try h.stockade(["run", "--json", "--volume", "\(dir):/data:rw", "--volume", "\(ro):/ro", "--", "/bin/sh", "-c", """
            echo mine >> /data/theirs.txt && echo append-worked
            chmod 666 /data/theirs.txt && echo chmod-worked
            echo x > /ro/new && echo ro-write-worked
            stat -c %u /data/theirs.txt
            """])
        let out = try r.report().string("stdout") ?? ""
        #expect(!out.contains("append-worked") && !out.contains("chmod-worked") && !out.contains("ro-write-worked"), "\(out)")
        #expect(out.contains("65534"), "another owner's file shows as nobody: \(out)")
        #expect(try String(contentsOfFile: dir + "/theirs.txt", encoding: .utf8) == "theirs\n")
        #expect(!FileManager.default.fileExists(atPath: ro + "/new"))
    }

    @Test("a file volume whose mount point inside an rw volume is a FIFO is refused without waiting; a regular file there is mounted on")
    func fifoAtFileMountPoint() throws {
        let h = try Harness()
        let dir = try directory(owner: (0, 0))
        let source = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-file-\(UUID().uuidString)").path
        defer { for p in [dir, source] { try? FileManager.default.removeItem(atPath: p) } }
        try "from the host\n".write(toFile: source, atomically: false, encoding: .utf8)
        // What a worker could leave in its rw volume for the next run: a FIFO where a file is mounted.
        #expect(mkfifo(dir + "/f", 0o644) == 0)
        let args = ["run", "--json", "--volume", "\(dir):/data:rw", "--volume", "\(source):/data/f", "--", "/bin/cat", "/data/f"]
        let refused = try h.stockade(args)
        let said = refused.stdout + refused.stderr
        #expect(refused.status != 0 && !said.contains("from the host"), "\(said)")
        #expect(said.contains("/data/f"), "the error names the mount point: \(said)")
        // The positive control: a regular file at the same place is mounted on, and the host file read.
        try FileManager.default.removeItem(atPath: dir + "/f")
        try "placeholder\n".write(toFile: dir + "/f", atomically: false, encoding: .utf8)
        let fine = try h.stockade(args)
        #expect(try fine.report().string("stdout") == "from the host\n", "\(fine.stdout) \(fine.stderr)")
    }

    @Test("an rw volume on a filesystem that cannot be idmapped is refused naming the volume and what to do")
    func cannotIdmap() throws {
        let h = try Harness()
        // ramfs has no idmapped-mount support (as FUSE or 9p shares in real use): a fresh one for the test.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-noidmap-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        defer { _ = umount2(dir, Int32(MNT_DETACH)); try? FileManager.default.removeItem(atPath: dir) }
        guard mount("stockade-test", dir, "ramfs", 0, nil) == 0 else {
            Issue.record("cannot mount a ramfs for the test: errno \(errno)")
            return
        }
        let r = try h.stockade(["run", "--json", "--volume", "\(dir):/data:rw", "--", "/bin/true"])
        #expect(r.status == 125, "\(r.stdout) \(r.stderr)")
        let message = ((try r.report()["setupError"] as? [String: Any])?["message"] as? String) ?? ""
        #expect(message.contains(dir) && message.contains("idmapped") && message.contains(":ro"), "\(message)")
        // Read-only, the same directory works.
        #expect(try h.stockade(["run", "--json", "--volume", "\(dir):/data:ro", "--", "/bin/true"]).status == 0)
    }

    @Test("a volume nested in another whose host source is a shared mount leaves no mount on the host (the control: a bind of it is its peer and does)")
    func nestedVolumeOnSharedMountStaysInTheRun() throws {
        let h = try Harness()
        let outer = try directory(owner: (0, 0)), inner = try directory(owner: (0, 0)), peer = try directory(owner: (0, 0))
        try "inner\n".write(toFile: inner + "/file", atomically: false, encoding: .utf8)
        try FileManager.default.createDirectory(atPath: outer + "/sub", withIntermediateDirectories: false)
        try FileManager.default.createDirectory(atPath: peer + "/sub", withIntermediateDirectories: false)
        // In a mount namespace of its own (nothing of it reaches the test's): `outer` made a shared mount, as
        // systemd makes `/`. The control: a tmpfs on a bind of it (its peer) shows at outer/sub. Then a run
        // with `outer` at /x and `inner` at /x/sub, and what shows at outer/sub afterwards.
        let script = """
            set -e
            mount --bind \(outer) \(outer)
            mount --make-shared \(outer)
            mount --bind \(outer) \(peer)
            mount -t tmpfs control \(peer)/sub
            echo "control: $(grep -c ' \(outer)/sub ' /proc/self/mountinfo)"
            umount \(peer)/sub
            umount \(peer)
            echo "before: $(grep -c ' \(outer)/sub ' /proc/self/mountinfo || true)"
            \(Harness.stockade) run --volume \(outer):/x:ro --volume \(inner):/x/sub:ro -- /bin/cat /x/sub/file
            echo "after: $(grep -c ' \(outer)/sub ' /proc/self/mountinfo || true)"
            """
        let r = try Harness.exec("/usr/bin/unshare", ["-m", "--propagation", "private", "/bin/sh", "-c", script],
                                 environment: ["STOCKADE_STATE_DIR": h.stateDirectory])
        #expect(r.status == 0, "\(r.stdout) \(r.stderr)")
        let lines = r.stdout.split(separator: "\n").map(String.init)
        #expect(lines.contains("control: 1"), "a bind of a shared mount is its peer: \(r.stdout) \(r.stderr)")
        #expect(lines.contains("inner"), "the nested volume is shown in the run: \(r.stdout) \(r.stderr)")
        #expect(lines.contains("before: 0") && lines.contains("after: 0"), "the run's nested volume reached the host's tree: \(r.stdout)")
    }
}
