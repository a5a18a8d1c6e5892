import Glibc
import StockadeBundles
import Testing

let roomy = ScanLimits(maxEntries: 1000, maxFileBytes: 1 << 20, maxTotalBytes: 4 << 20, maxDepth: 16, maxPathLength: 256)

/// Scans `<scratch>/U` against `<scratch>/L`.
func scan(_ s: Scratch, limits: ScanLimits = roomy, xattrs: OverlayXattrNamespace = .user) throws -> Result<[WorkspaceChange], BundleError> {
    let upper = try s.openDirectory("U")
    defer { close(upper) }
    let lower = try s.openDirectory("L")
    defer { close(lower) }
    do {
        return .success(try WorkspaceScanner.scan(upper: upper, lower: lower, limits: limits, xattrs: xattrs))
    } catch {
        return .failure(error)
    }
}

func changes(_ s: Scratch, limits: ScanLimits = roomy, xattrs: OverlayXattrNamespace = .user) throws -> [WorkspaceChange] {
    try scan(s, limits: limits, xattrs: xattrs).get()
}

func scanError(_ s: Scratch, limits: ScanLimits = roomy, xattrs: OverlayXattrNamespace = .user) throws -> BundleError? {
    if case .failure(let error) = try scan(s, limits: limits, xattrs: xattrs) { return error }
    return nil
}

/// How a test mounts the overlay it edits through.
enum OverlayMount: String, CaseIterable, CustomTestStringConvertible {
    /// By real root: markers are `trusted.overlay.*` xattrs.
    case root
    /// Inside `unshare -Urm` with `userxattr`, as the sandboxed worker's mount is: markers are
    /// `user.overlay.*` xattrs.
    case userNamespace

    var testDescription: String { rawValue }
    var xattrs: OverlayXattrNamespace { self == .root ? .trusted : .user }
}

@Suite("The workspace scanner on real overlay mounts", .serialized,
       .enabled(if: isRoot, "needs root to mount overlayfs and make user namespaces"))
struct OverlayMountTests {
    static let edits = """
        printf 'changed\\n' > f && printf 'new\\n' > new && rm del && rm -rf gone && \
        rm -rf keep && mkdir keep && printf 'q\\n' > keep/q && mkdir keep/sub && printf 'n\\n' > keep/sub/n && chmod +x script && chmod 600 quiet && \
        touch a/b/x && ln -s /etc/passwd link && mkfifo fifo && mkdir emptydir && \
        mv olddir newdir && mv oldname newname
        """

    func makeLower(_ s: Scratch) throws {
        try s.write("L/f", "one\n")
        try s.write("L/a/b/x", "two\n")
        try s.write("L/gone/y", "three\n")
        try s.write("L/gone/sub/deep", "deep\n")
        try s.write("L/keep/z", "4\n")
        try s.write("L/keep/sub/inner", "inner\n")
        try s.write("L/script", "s\n")
        try s.write("L/quiet", "quiet\n")
        try s.write("L/del", "del\n")
        try s.write("L/untouched", "same\n")
        try s.write("L/olddir/inner/file", "moved dir\n")
        try s.write("L/oldname", "moved file\n", mode: 0o755)
        for dir in ["U", "W", "M"] { try s.mkdir(dir) }
    }

    func options(_ s: Scratch) -> String { "lowerdir=\(s["L"]),upperdir=\(s["U"]),workdir=\(s["W"])" }

    @Test("edits made through an overlay scan to exactly the changes made", arguments: OverlayMount.allCases)
    func editsThroughOverlay(mount how: OverlayMount) throws {
        let s = Scratch("ovl")
        try makeLower(s)
        switch how {
        case .root:
            try #require(mount("overlay", s["M"], "overlay", 0, options(s)) == 0, "mount: errno \(errno)")
            let status = try run(["/bin/sh", "-c", "cd \(s["M"]) && \(Self.edits)"])
            #expect(umount2(s["M"], 0) == 0)
            try #require(status == 0)
        case .userNamespace:
            let script = "mount -t overlay overlay -o userxattr,\(options(s)) \(s["M"]) && cd \(s["M"]) && \(Self.edits)"
            try #require(try run(["/usr/bin/unshare", "-Urm", "/bin/sh", "-c", script]) == 0)
        }
        // The kernel did copy up the metadata-only edits, so their absence below means something.
        #expect(s.exists("U/a/b/x") && s.exists("U/quiet"))

        let expected: [WorkspaceChange] = [
            .deleted(path: "del", old: bytes("del\n"), oldMode: 0o644),
            .modified(path: "f", old: bytes("one\n"), new: bytes("changed\n"), oldMode: 0o644, newMode: 0o644),
            .special(path: "fifo", kind: "fifo"),
            .deleted(path: "gone/sub/deep", old: bytes("deep\n"), oldMode: 0o644),
            .deleted(path: "gone/y", old: bytes("three\n"), oldMode: 0o644),
            .created(path: "keep/q", content: bytes("q\n"), mode: 0o644),
            // keep/sub carries no opaque marker of its own: keep's hides lower beneath it too.
            .deleted(path: "keep/sub/inner", old: bytes("inner\n"), oldMode: 0o644),
            .created(path: "keep/sub/n", content: bytes("n\n"), mode: 0o644),
            .deleted(path: "keep/z", old: bytes("4\n"), oldMode: 0o644),
            .special(path: "link", kind: "symlink"),
            .created(path: "new", content: bytes("new\n"), mode: 0o644),
            // Directory renames without redirect_dir are copies plus deletions (mv falls back on EXDEV).
            .created(path: "newdir/inner/file", content: bytes("moved dir\n"), mode: 0o644),
            .created(path: "newname", content: bytes("moved file\n"), mode: 0o755),
            .deleted(path: "olddir/inner/file", old: bytes("moved dir\n"), oldMode: 0o644),
            .deleted(path: "oldname", old: bytes("moved file\n"), oldMode: 0o755),
            .modified(path: "script", old: bytes("s\n"), new: bytes("s\n"), oldMode: 0o644, newMode: 0o755),
        ]
        #expect(try changes(s, xattrs: how.xattrs) == expected)
    }

    @Test("whiteouts are 0:0 character devices and opaque markers use the namespace of the mount",
          arguments: OverlayMount.allCases)
    func markerFormat(mount how: OverlayMount) throws {
        let s = Scratch("ovl")
        try makeLower(s)
        let script = "rm -rf gone && rm -rf keep && mkdir keep"
        switch how {
        case .root:
            try #require(mount("overlay", s["M"], "overlay", 0, options(s)) == 0, "mount: errno \(errno)")
            let status = try run(["/bin/sh", "-c", "cd \(s["M"]) && \(script)"])
            #expect(umount2(s["M"], 0) == 0)
            try #require(status == 0)
        case .userNamespace:
            let inner = "mount -t overlay overlay -o userxattr,\(options(s)) \(s["M"]) && cd \(s["M"]) && \(script)"
            try #require(try run(["/usr/bin/unshare", "-Urm", "/bin/sh", "-c", inner]) == 0)
        }
        var st = stat()
        #expect(lstat(s["U/gone"], &st) == 0 && st.st_mode & S_IFMT == S_IFCHR && st.st_rdev == 0)
        var value = [UInt8](repeating: 0, count: 8)
        let length = XattrCalls.get(s["U/keep"], how.xattrs.rawValue + "opaque", &value, value.count)
        #expect(length == 1 && value[0] == UInt8(ascii: "y"))
    }

    @Test("in a user namespace an overlay without userxattr cannot delete a lower directory, so the sandbox must mount with userxattr")
    func userNamespaceNeedsUserxattr() throws {
        let s = Scratch("ovl")
        try makeLower(s)
        let inner = "mount -t overlay overlay -o \(options(s)) \(s["M"]) && cd \(s["M"]) && rm -rf gone"
        #expect(try run(["/usr/bin/unshare", "-Urm", "/bin/sh", "-c", inner]) != 0)
    }
}

@Suite("The workspace scanner on hand-built upper trees")
struct HandBuiltUpperTests {
    func fresh() throws -> Scratch {
        let s = Scratch("upper")
        try s.mkdir("U")
        try s.mkdir("L")
        return s
    }

    @Test("an empty upper directory is no change")
    func emptyUpper() throws {
        let s = try fresh()
        try s.write("L/a", "a")
        try s.mkdir("U/only/in/upper")
        #expect(try changes(s) == [])
    }

    @Test("a whiteout deletes a file and expands a directory into one deletion per file beneath it",
          .enabled(if: isRoot, "needs CAP_MKNOD to make whiteout device nodes"))
    func whiteouts() throws {
        let s = try fresh()
        try s.write("L/file", "f", mode: 0o755)
        try s.write("L/dir/a", "a")
        try s.write("L/dir/sub/b", "b")
        try s.mkdir("L/dir/empty")
        try s.device("U/file")
        try s.device("U/dir")
        try s.device("U/never-existed")
        #expect(try changes(s) == [
            .deleted(path: "dir/a", old: bytes("a"), oldMode: 0o644),
            .deleted(path: "dir/sub/b", old: bytes("b"), oldMode: 0o644),
            .deleted(path: "file", old: bytes("f"), oldMode: 0o755),
        ])
    }

    @Test("a device node other than 0:0, block devices included, is a special change and never opened",
          .enabled(if: isRoot, "needs CAP_MKNOD"))
    func devices() throws {
        let s = try fresh()
        try s.device("U/null", major: 1, minor: 3)
        try s.device("U/disk", major: 7, minor: 0, block: true)
        #expect(try changes(s) == [
            .special(path: "disk", kind: "block-device"),
            .special(path: "null", kind: "char-device"),
        ])
    }

    @Test("symlinks and FIFOs in upper are special changes, even where they shadow a lower file")
    func symlinksAndFifos() throws {
        let s = try fresh()
        try s.write("L/target", "secret")
        try s.symlink("U/target", to: "/etc/shadow")
        try s.symlink("U/dangling", to: "../../outside")
        try s.fifo("U/pipe")
        #expect(try changes(s) == [
            .special(path: "dangling", kind: "symlink"),
            .special(path: "pipe", kind: "fifo"),
            .special(path: "target", kind: "symlink"),
        ])
    }

    @Test("an opaque directory deletes every lower entry beneath it that upper does not hold, at any depth",
          arguments: OverlayXattrNamespace.allCases)
    func opaque(xattrs: OverlayXattrNamespace) throws {
        try #require(xattrs == .user || isRoot, "trusted.* xattrs need root")
        let s = try fresh()
        try s.write("L/d/kept", "old")
        try s.write("L/d/dropped", "x")
        try s.write("L/d/sub/dropped", "y")
        try s.write("L/d/sub/kept", "z")
        try s.write("L/other/untouched", "u")
        try s.write("U/d/kept", "new")
        try s.write("U/d/sub/kept", "z")
        try s.setXattr("U/d", xattrs.rawValue + "opaque", "y")
        #expect(try changes(s, xattrs: xattrs) == [
            .deleted(path: "d/dropped", old: bytes("x"), oldMode: 0o644),
            .modified(path: "d/kept", old: bytes("old"), new: bytes("new"), oldMode: 0o644, newMode: 0o644),
            .deleted(path: "d/sub/dropped", old: bytes("y"), oldMode: 0o644),
        ])
    }

    @Test("without the opaque marker a directory merges with lower: nothing is deleted")
    func notOpaque() throws {
        let s = try fresh()
        try s.write("L/d/kept", "k")
        try s.write("U/d/new", "n")
        try s.setXattr("U/d", "user.overlay.overlay.opaque", "y")  // what a worker's own setxattr becomes
        #expect(try changes(s) == [.created(path: "d/new", content: bytes("n"), mode: 0o644)])
    }

    @Test("a copy-up that changes neither content nor the execute bit is not a change; setuid is reported")
    func modes() throws {
        let s = try fresh()
        try s.write("L/same", "s")
        try s.write("U/same", "s", mode: 0o600)
        try s.write("L/exec", "e")
        try s.write("U/exec", "e", mode: 0o700)
        try s.write("U/suid", "x", mode: 0o4755)
        try s.write("U/sticky", "x", mode: 0o1644)
        #expect(try changes(s) == [
            .modified(path: "exec", old: bytes("e"), new: bytes("e"), oldMode: 0o644, newMode: 0o755),
            .created(path: "sticky", content: bytes("x"), mode: 0o1644),
            .created(path: "suid", content: bytes("x"), mode: 0o4755),
        ])
    }

    @Test("a file replacing a lower directory deletes its files; a directory replacing a lower file deletes it")
    func typeChanges() throws {
        let s = try fresh()
        try s.write("L/was-dir/a", "a")
        try s.write("U/was-dir", "now a file")
        try s.write("L/was-file", "f")
        try s.write("U/was-file/inside", "i")
        #expect(try changes(s) == [
            .created(path: "was-dir", content: bytes("now a file"), mode: 0o644),
            .deleted(path: "was-dir/a", old: bytes("a"), oldMode: 0o644),
            .deleted(path: "was-file", old: bytes("f"), oldMode: 0o644),
            .created(path: "was-file/inside", content: bytes("i"), mode: 0o644),
        ])
    }

    @Test("replacing or deleting a symlink of the real workspace is a special change, never read through",
          .enabled(if: isRoot, "needs CAP_MKNOD for the whiteout"))
    func lowerSymlinks() throws {
        let s = try fresh()
        try s.symlink("L/link", to: "/etc/shadow")
        try s.write("U/link", "replaced")
        try s.write("L/dir/file", "f")
        try s.symlink("L/dir/escape", to: "/etc")
        try s.device("U/dir")
        #expect(try changes(s) == [
            .special(path: "dir/escape", kind: "workspace-symlink"),
            .deleted(path: "dir/file", old: bytes("f"), oldMode: 0o644),
            .special(path: "link", kind: "workspace-symlink"),
            .created(path: "link", content: bytes("replaced"), mode: 0o644),
        ])
    }

    @Test("a mode-000 directory and file left by the worker are still read", .enabled(if: isRoot, "needs CAP_DAC_OVERRIDE"))
    func unreadableModes() throws {
        let s = try fresh()
        try s.write("U/locked/file", "x", mode: 0o000)
        try s.mkdir("U/locked", mode: 0o000)
        #expect(try changes(s) == [.created(path: "locked/file", content: bytes("x"), mode: 0o644)])
    }

    @Test("canonically equivalent names are different files: an opaque directory still deletes the other one")
    func canonicalEquivalence() throws {
        let s = try fresh()
        try s.write("L/d/e\u{301}", "decomposed")
        try s.write("U/d/\u{E9}", "precomposed")
        try s.setXattr("U/d", "user.overlay.opaque", "y")
        let found = try changes(s)
        #expect(found.count == 2)
        #expect(found.contains { if case .deleted(let path, _, _) = $0 { Array(path.utf8) == Array("d/e\u{301}".utf8) } else { false } })
        #expect(found.contains { if case .created(let path, _, _) = $0 { Array(path.utf8) == Array("d/\u{E9}".utf8) } else { false } })
    }

    @Test("paths are sorted bytewise")
    func sorting() throws {
        let s = try fresh()
        for name in ["b", "a/z", "a.txt", "A", "é", "a-b"] { try s.write("U/" + name, name) }
        #expect(try changes(s).map(\.path) == ["A", "a-b", "a.txt", "a/z", "b", "é"])
    }

    @Test("a name that is not UTF-8 is refused naming it")
    func badName() throws {
        let s = try fresh()
        var raw = Array((s["U"] + "/bad").utf8)
        raw.append(0xFF)
        raw.append(0)
        let fd = raw.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) { open($0.baseAddress!, O_CREAT | O_WRONLY | O_CLOEXEC, 0o644) }
        }
        try #require(fd >= 0)
        close(fd)
        let error = try #require(try scanError(s))
        #expect(error.code == .workspaceBadName)
        #expect(error.path == "bad\u{FFFD}")
    }

    @Test("a file with an overlay metacopy or redirect marker is refused: its data is not in upper")
    func unsupportedMarkers() throws {
        let s = try fresh()
        try s.write("U/meta", "")
        try s.setXattr("U/meta", "user.overlay.metacopy", "")
        let error = try #require(try scanError(s))
        #expect(error.code == .workspaceUnsupportedOverlay)
        #expect(error.path == "meta")
    }

    @Test("opaque markers of the other namespace are refused: the mount was not what the caller said",
          .enabled(if: isRoot, "needs CAP_SYS_ADMIN for trusted.* xattrs"))
    func wrongNamespace() throws {
        let s = try fresh()
        try s.mkdir("U/d")
        try s.setXattr("U/d", "trusted.overlay.opaque", "y")
        let error = try #require(try scanError(s, xattrs: .user))
        #expect(error.code == .workspaceUnsupportedOverlay)
        #expect(error.path == "d")
    }
}

@Suite("The workspace scanner's bounds")
struct ScanBoundsTests {
    struct Case: CustomTestStringConvertible, Sendable {
        let name: String
        let limits: ScanLimits
        let code: BundleError.Code
        let path: String
        var testDescription: String { name }
    }

    static let cases: [Case] = [
        Case(name: "too many entries", limits: ScanLimits(maxEntries: 8, maxFileBytes: 1 << 20, maxTotalBytes: 1 << 20, maxDepth: 16, maxPathLength: 256),
             code: .workspaceTooManyEntries, path: "many"),
        Case(name: "too large a file", limits: ScanLimits(maxEntries: 100, maxFileBytes: 1000, maxTotalBytes: 1 << 20, maxDepth: 16, maxPathLength: 256),
             code: .workspaceFileTooLarge, path: "big"),
        Case(name: "too many bytes in all", limits: ScanLimits(maxEntries: 100, maxFileBytes: 4096, maxTotalBytes: 5500, maxDepth: 16, maxPathLength: 256),
             code: .workspaceTooLarge, path: "many/1"),
        Case(name: "too deep", limits: ScanLimits(maxEntries: 100, maxFileBytes: 4096, maxTotalBytes: 1 << 20, maxDepth: 3, maxPathLength: 256),
             code: .workspacePathTooLong, path: "d1/d2/d3/d4"),
        Case(name: "too long a path", limits: ScanLimits(maxEntries: 100, maxFileBytes: 4096, maxTotalBytes: 1 << 20, maxDepth: 16, maxPathLength: 10),
             code: .workspacePathTooLong, path: "d1/d2/d3/d4"),
    ]

    /// big (4000 bytes), many/0...9 (1000 bytes each), d1/d2/d3/d4/leaf.
    func tree() throws -> Scratch {
        let s = Scratch("bounds")
        try s.mkdir("L")
        try s.write("U/big", [UInt8](repeating: 0x61, count: 4000))
        for index in 0..<10 { try s.write("U/many/\(index)", [UInt8](repeating: 0x62, count: 1000)) }
        try s.write("U/d1/d2/d3/d4/leaf", "l")
        return s
    }

    @Test("a bound exceeded while reading is an error naming the entry", arguments: cases)
    func bounds(_ c: Case) throws {
        let s = try tree()
        let error = try #require(try scanError(s, limits: c.limits))
        #expect(error.code == c.code)
        #expect(error.path == c.path)
    }

    @Test("a sparse file claiming a terabyte is refused after reading just past the bound")
    func sparse() throws {
        let s = Scratch("bounds")
        try s.mkdir("L")
        try s.write("U/sparse", "")
        try #require(truncate(s["U/sparse"], 1 << 40) == 0)
        let error = try #require(try scanError(s))
        #expect(error.code == .workspaceFileTooLarge)
        #expect(error.path == "sparse")
    }

    @Test("deletions expanded from the real workspace count against the same bounds",
          .enabled(if: isRoot, "needs CAP_MKNOD for the whiteout"))
    func lowerCounts() throws {
        let s = Scratch("bounds")
        try s.mkdir("U")
        for index in 0..<20 { try s.write("L/huge/\(index)", "x") }
        try s.device("U/huge")
        let limits = ScanLimits(maxEntries: 10, maxFileBytes: 100, maxTotalBytes: 1000, maxDepth: 8, maxPathLength: 100)
        let error = try #require(try scanError(s, limits: limits))
        #expect(error.code == .workspaceTooManyEntries)
        #expect(error.path == "huge")
    }
}
