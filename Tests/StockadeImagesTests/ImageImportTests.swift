import CStockade
import Foundation
import StockadeImages
import StockadePolicy
import Testing

private func freshStore(_ configure: (inout ImageBounds) -> Void = { _ in }) -> ImageStore {
    var store = ImageStore(stateDirectory: NSTemporaryDirectory() + "stockade-images-\(UUID().uuidString)")
    configure(&store.bounds)
    return store
}

private func contents(_ dir: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted()
}

/// Import must fail with `code`, naming `entry`, and leave nothing in the cache.
private func expectRefused(_ layout: LayoutFixture, _ code: ImageError.Code, entry: String?, store: ImageStore = freshStore(),
                           sourceLocation: SourceLocation = #_sourceLocation) {
    do {
        let result = try store.importLayout(layout.path, name: "hostile")
        Issue.record("imported \(result.record.name) where a refusal was expected", sourceLocation: sourceLocation)
    } catch {
        #expect(error.code == code, "\(error.message)", sourceLocation: sourceLocation)
        if let entry { #expect(error.entry == entry, "\(error.message)", sourceLocation: sourceLocation) }
        if let entry { #expect(error.message.contains(entry), "the reason names the entry: \(error.message)", sourceLocation: sourceLocation) }
    }
    #expect(contents(store.path + "/layers").isEmpty, "no layer is kept", sourceLocation: sourceLocation)
    #expect(contents(store.path + "/tmp").isEmpty, "no half-unpacked layer is left", sourceLocation: sourceLocation)
    #expect(contents(store.path + "/names").isEmpty, "no image is named", sourceLocation: sourceLocation)
}

@Suite("image import: OCI layouts read as hostile input", .enabled(if: getuid() == 0, "unpacking keeps the image's owners and makes overlay whiteouts: needs root"))
struct ImageImportTests {
    @Test("a layout's files, directories, links and whiteouts are unpacked once, owners kept and setuid dropped")
    func unpacksLayer() throws {
        let tar = Tar.archive([
            .dir("bin/"), .file("bin/tool", "#!/bin/sh\n", mode: 0o4755), .hardlink("bin/tool2", to: "bin/tool"),
            .symlink("bin/sh", to: "tool"), .symlink("etc-link", to: "/etc"),
            TarEntry(name: "home/app/owned", uid: 1000, gid: 1000, data: Array("x".utf8)),
            .file("gone/.wh.old"), .file("fresh/.wh..wh..opq"),
        ])
        let layout = try LayoutFixture(layers: [try Tar.gzip(tar)], mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
                                       config: ["Env": .array([.string("PATH=/bin")]), "Cmd": .array([.string("/bin/sh")])])
        let store = freshStore()
        let result = try store.importLayout(layout.path, name: "fixture:1")
        #expect(result.record.name == "fixture:1")
        #expect(result.record.config.env == ["PATH=/bin"])
        #expect(result.record.config.cmd == ["/bin/sh"])
        let layer = store.layerPath(try #require(result.record.layers.first))
        var st = stat()
        #expect(lstat(layer + "/bin/tool", &st) == 0)
        #expect(st.st_mode & 0o7777 == 0o755, "setuid dropped")
        #expect(st.st_nlink == 2, "the hard link is to the same file")
        #expect(result.unpacked.values.first?.strippedModes == 1)
        #expect(lstat(layer + "/home/app/owned", &st) == 0 && st.st_uid == 1000 && st.st_gid == 1000)
        #expect(lstat(layer + "/gone/old", &st) == 0 && st.st_mode & S_IFMT == S_IFCHR && st.st_rdev == 0, "an overlay whiteout")
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: layer + "/etc-link")) == "/etc")
        var value = [UInt8](repeating: 0, count: 4)
        let fresh = open(layer + "/fresh", O_RDONLY | O_DIRECTORY)
        defer { close(fresh) }
        #expect(stk_fgetxattr(fresh, "trusted.overlay.opaque", &value, 4) == 1 && value[0] == UInt8(ascii: "y"))
        #expect(contents(store.path + "/tmp").isEmpty)

        let again = try store.importLayout(layout.path, name: "fixture:2")
        #expect(again.unpacked.isEmpty && again.reused.count == 1, "a cached layer is not unpacked again")
        #expect(try store.list().map(\.name) == ["fixture:1", "fixture:2"])
    }

    @Test("hostile entries are refused, naming the entry, with nothing written outside the cache", arguments: [
        ("../escape-marker", [TarEntry.file("../escape-marker", "x")], "../escape-marker"),
        ("absolute", [TarEntry.file("/tmp/escape-marker-abs", "x")], "/tmp/escape-marker-abs"),
        ("a file through a symlink to /etc", [TarEntry.symlink("evil", to: "/etc"), .file("evil/stockade-escape", "x")], "evil/stockade-escape"),
        ("a file through a relative symlink", [TarEntry.symlink("up", to: "."), .file("up/x", "x")], "up/x"),
        ("a symlink that climbs out", [TarEntry.symlink("a/b", to: "../../outside")], "a/b"),
        ("a hard link to a host path", [TarEntry.hardlink("passwd", to: "/etc/passwd")], "passwd"),
        ("a hard link climbing out", [TarEntry.hardlink("passwd", to: "../../../../etc/passwd")], "passwd"),
        ("a hard link to no earlier file", [TarEntry.hardlink("later", to: "missing"), .file("missing")], "later"),
        ("a device node", [TarEntry(name: "dev/sda", kind: .character, mode: 0o600)], "dev/sda"),
        ("a whiteout naming ..", [TarEntry.file("dir/.wh..."), ], "dir/.wh..."),
        ("an owner outside the worker's range", [TarEntry(name: "big", uid: 70000)], "big"),
    ] as [(String, [TarEntry], String)])
    func hostileEntry(_ label: String, _ entries: [TarEntry], _ entry: String) throws {
        let layout = try LayoutFixture(layers: [Tar.archive(entries)])
        expectRefused(layout, .badEntry, entry: entry)
        #expect(!FileManager.default.fileExists(atPath: "/etc/stockade-escape"), "\(label)")
        #expect(!FileManager.default.fileExists(atPath: "/tmp/escape-marker-abs"), "\(label)")
    }

    @Test("a gzip bomb stops at the layer's byte bound")
    func gzipBomb() throws {
        let bomb = try Tar.gzip(Tar.archive([TarEntry(name: "zeros", data: [UInt8](repeating: 0, count: 64 << 20))]))
        #expect(bomb.count < 1 << 20, "64 MiB of zeros compress to \(bomb.count) bytes")
        let layout = try LayoutFixture(layers: [bomb], mediaType: "application/vnd.oci.image.layer.v1.tar+gzip")
        expectRefused(layout, .overBound, entry: "zeros", store: freshStore { $0.maxLayerBytes = 1 << 20 })
    }

    @Test("a layer of many empty files stops at the entry bound")
    func manyFiles() throws {
        let layout = try LayoutFixture(layers: [Tar.archive((0..<1200).map { TarEntry.file("f\($0)") })])
        expectRefused(layout, .overBound, entry: "f1000", store: freshStore { $0.maxLayerEntries = 1000 })
    }

    @Test("a layer blob whose bytes do not match its digest is refused and not kept")
    func digestMismatch() throws {
        let good = Tar.archive([.file("a", "original")])
        let layout = try LayoutFixture(layers: [good])
        let hex = Digest.of(good).hex
        var evil = Tar.archive([.file("a", "tampered")])
        evil = Array(evil.prefix(good.count))
        try Data(evil).write(to: URL(fileURLWithPath: layout.path + "/blobs/sha256/" + hex))
        expectRefused(layout, .digestMismatch, entry: "sha256:" + hex)
    }

    @Test("a manifest naming a blob outside blobs/ is refused", arguments: [
        "sha256:../../../../etc/passwd", "sha256:/etc/passwd", "sha512:" + String(repeating: "0", count: 128),
    ])
    func outsideBlobs(_ digest: String) throws {
        let layout = try LayoutFixture(layers: [Tar.archive([.file("a")])], layerDigests: [digest])
        expectRefused(layout, .badDescriptor, entry: nil)
    }

    @Test("a blob that is a symlink out of the layout is refused")
    func blobSymlink() throws {
        let tar = Tar.archive([.file("a")])
        let layout = try LayoutFixture(layers: [tar])
        let path = layout.path + "/blobs/sha256/" + Digest.of(tar).hex
        try FileManager.default.removeItem(atPath: path)
        try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: "/etc/passwd")
        expectRefused(layout, .badDescriptor, entry: "sha256:" + Digest.of(tar).hex)
    }

    @Test("two imports of one image at once leave one good copy", .timeLimit(.minutes(2)))
    func concurrentImports() async throws {
        let tar = Tar.archive((0..<300).map { TarEntry.file("d/f\($0)", String(repeating: "y", count: $0)) })
        let layout = try LayoutFixture(layers: [tar])
        let store = freshStore()
        let results = await withTaskGroup(of: Result<ImportResult, ImageError>.self) { group in
            for i in 0..<2 {
                group.addTask {
                    do throws(ImageError) { return .success(try store.importLayout(layout.path, name: "same:\(i)")) } catch { return .failure(error) }
                }
            }
            var all: [Result<ImportResult, ImageError>] = []
            for await r in group { all.append(r) }
            return all
        }
        for r in results { if case .failure(let e) = r { Issue.record("\(e)") } }
        #expect(contents(store.path + "/layers") == [Digest.of(tar).hex])
        #expect(contents(store.path + "/tmp").isEmpty)
        #expect(contents(store.path + "/layers/" + Digest.of(tar).hex + "/d").count == 300, "the copy kept is whole")
    }

    @Test("gc removes a layer once no image names it, and keeps it while one does")
    func garbage() throws {
        let layout = try LayoutFixture(layers: [Tar.archive([.file("a")])])
        let store = freshStore()
        _ = try store.importLayout(layout.path, name: "keep")
        #expect(try store.collectGarbage().removed.isEmpty)
        try store.remove("keep")
        #expect(try store.collectGarbage().removed.count == 1)
        #expect(contents(store.path + "/layers").isEmpty)
    }

    @Test("image names are NAME[:TAG] and refused otherwise", arguments: [
        ("busybox", "busybox:latest"), ("tools/py:3.12", "tools/py:3.12"),
    ])
    func names(_ text: String, _ normalized: String) throws {
        #expect(try ImageStore.normalize(text) == normalized)
    }

    @Test("bad image names are refused", arguments: ["", "../x", "Upper", "a:b:c/d", "x:"])
    func badNames(_ text: String) {
        #expect(throws: ImageError.self) { try ImageStore.normalize(text) }
    }

    @Test("the config's User is looked up in the image's own /etc/passwd, never through a link to the host's files", .timeLimit(.minutes(1)))
    func userNotThroughLinks() throws {
        let host = NSTemporaryDirectory() + "stockade-host-etc-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: host, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: host) }
        try "app:x:4242:4243::/:/bin/sh\n".write(toFile: host + "/passwd", atomically: true, encoding: .utf8)
        // The positive control: the image's own file names the user.
        let own = try LayoutFixture(layers: [Tar.archive([.dir("etc/"), .file("etc/passwd", "app:x:1500:1501::/:/bin/sh\n")])],
                                    config: ["User": .string("app")])
        let imported = try freshStore().importLayout(own.path, name: "own")
        #expect(imported.record.uid == 1500 && imported.record.gid == 1501)
        // An image whose /etc is a link to a host directory: the host's passwd is never read.
        let linked = try LayoutFixture(layers: [Tar.archive([.symlink("etc", to: host)])], config: ["User": .string("app")])
        expectRefused(linked, .badLayout, entry: "User")
        // The same through a passwd that is itself in a linked directory, one layer over another.
        let stacked = try LayoutFixture(layers: [Tar.archive([.dir("etc/"), .file("etc/passwd", "other:x:7:7::/:/bin/sh\n")]),
                                                 Tar.archive([.symlink("host", to: host), .dir("etc/"), .symlink("etc/passwd", to: "../host/passwd")])],
                                        config: ["User": .string("app")])
        expectRefused(stacked, .badLayout, entry: "User")
    }

    @Test("a config User with an empty user or group is refused naming User, not taken apart", arguments: [":", ":0", "0:", ":app"])
    func emptyUserOrGroup(_ user: String) throws {
        let layout = try LayoutFixture(layers: [Tar.archive([.dir("etc/"), .file("etc/passwd", "app:x:1500:1501::/:/bin/sh\n")])],
                                       config: ["User": .string(user)])
        expectRefused(layout, .badLayout, entry: "User")
    }

    @Test("a sparse file is charged as far as it reaches, not by the bytes the archive holds: holes cannot fill the disk past the bound")
    func sparseFilesCharged() throws {
        // GNU tar writes the sparse entries (maps of data regions with holes between them): two files of
        // 6 regions of one byte, 1 MiB apart, each reaching 5 MiB + 1 byte, in an archive of ≈ 60 KiB.
        let tree = NSTemporaryDirectory() + "stockade-sparse-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: tree, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: tree) }
        for name in ["holes", "holes2"] {
            let fd = open(tree + "/" + name, O_CREAT | O_WRONLY, 0o644)
            try #require(fd >= 0)
            for i in 0..<6 { _ = pwrite(fd, "x", 1, off_t(i) << 20) }
            close(fd)
        }
        // A third ends in a hole: its size comes only with the end of its data.
        try #require(truncate(tree + "/holes", (6 << 20) + 4096) == 0)
        let tar = Process()
        tar.executableURL = URL(fileURLWithPath: "/bin/tar")
        tar.arguments = ["--format=pax", "--sparse", "-C", tree, "-cf", "-", "holes", "holes2"]
        let out = Pipe()
        tar.standardOutput = out
        try tar.run()
        let bytes = Array(out.fileHandleForReading.readDataToEndOfFile())
        tar.waitUntilExit()
        try #require(tar.terminationStatus == 0 && bytes.count < 1 << 20, "a sparse archive: \(bytes.count) bytes")
        // The control: within a bound it reaches, it unpacks whole, holes and all.
        let store = freshStore()
        let imported = try store.importLayout(try LayoutFixture(layers: [bytes]).path, name: "sparse")
        let layer = store.layerPath(try #require(imported.record.layers.first))
        var st = stat()
        #expect(stat(layer + "/holes2", &st) == 0 && st.st_size == (5 << 20) + 1)
        #expect(stat(layer + "/holes", &st) == 0 && st.st_size == (6 << 20) + 4096, "a file ending in a hole keeps its size")
        // Under a bound of 8 MiB a layer, the second file is refused, though the layer's data is 12 bytes and
        // each file alone stays within the bound (the first reaching 6 MiB + 4 KiB).
        expectRefused(try LayoutFixture(layers: [bytes]), .overBound, entry: "holes2", store: freshStore { $0.maxLayerBytes = 8 << 20 })
    }

    @Test("a FIFO where index.json or a blob should be is refused at once, not waited on", .timeLimit(.minutes(1)))
    func fifoRefused() throws {
        let layout = try LayoutFixture(layers: [Tar.archive([.file("a", "x")])])
        try FileManager.default.removeItem(atPath: layout.path + "/index.json")
        #expect(mkfifo(layout.path + "/index.json", 0o644) == 0)
        expectRefused(layout, .badLayout, entry: "index.json")
    }

    @Test("bytes no file bound counts (a whiteout's data, skipped) still count against the decompressed stream")
    func skippedDataBounded() throws {
        func layout(_ bytes: Int) throws -> LayoutFixture {
            let tar = Tar.archive([.dir("d/"), TarEntry(name: "d/.wh.gone", mode: 0o644, data: [UInt8](repeating: 0, count: bytes))])
            return try LayoutFixture(layers: [try Tar.gzip(tar)], mediaType: "application/vnd.oci.image.layer.v1.tar+gzip")
        }
        let small = { (b: inout ImageBounds) in
            b.maxLayerBytes = 1 << 20
            b.maxLayerEntries = 16
        }
        // The positive control: a little skipped data is within the stream's room.
        let fine = try freshStore(small).importLayout(try layout(64 << 10).path, name: "fine")
        #expect(fine.record.name == "fine:latest")
        expectRefused(try layout(8 << 20), .overBound, entry: nil, store: freshStore(small))
    }

    @Test("an entry deeper than the component bound is refused; files across deep directories, revisited, land where they say")
    func pathDepth() throws {
        let deep = String(repeating: "a/", count: 200)
        let other = String(repeating: "b/", count: 150)
        // Paths this long need pax headers: GNU tar writes the layer, in the order given.
        let tree = NSTemporaryDirectory() + "stockade-deep-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: tree) }
        for (path, text) in [(deep + "one", "1"), (other + "two", "2"), (deep + "three", "3"), (deep + "c/four", "4"), ("top", "t")] {
            try FileManager.default.createDirectory(atPath: tree + "/" + (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try text.write(toFile: tree + "/" + path, atomically: false, encoding: .utf8)
        }
        #expect(link(tree + "/" + deep + "one", tree + "/" + other + "five") == 0)
        let tar = Process()
        tar.executableURL = URL(fileURLWithPath: "/bin/tar")
        tar.arguments = ["--format=pax", "--no-recursion", "-C", tree, "-cf", "-", deep + "one", other + "two", deep + "three", deep + "c/four",
                         other + "five", "top"]
        let out = Pipe()
        tar.standardOutput = out
        try tar.run()
        let bytes = Array(out.fileHandleForReading.readDataToEndOfFile())
        tar.waitUntilExit()
        try #require(tar.terminationStatus == 0)
        let layout = try LayoutFixture(layers: [bytes])
        let store = freshStore()
        let result = try store.importLayout(layout.path, name: "deep")
        let layer = store.layerPath(try #require(result.record.layers.first))
        for (path, text) in [(deep + "one", "1"), (other + "two", "2"), (deep + "three", "3"), (deep + "c/four", "4"), (other + "five", "1"), ("top", "t")] {
            #expect((try? String(contentsOfFile: layer + "/" + path, encoding: .utf8)) == text, "\(path.suffix(12))")
        }
        let tooDeep = try LayoutFixture(layers: [Tar.archive([.file(String(repeating: "d/", count: 40) + "f", "x")])])
        expectRefused(tooDeep, .overBound, entry: nil, store: freshStore { $0.maxPathComponents = 32 })
    }

    @Test("entries alternating between two deep directories open each whole path again: the import's directory opens are bounded, across its layers")
    func alternatingDeepDirectories() throws {
        let left = String(repeating: "l/", count: 20), right = String(repeating: "r/", count: 20)
        // 100 entries, each in the other tree from the one before: 20 opens each.
        let entries: [TarEntry] = (0..<100).map { .file((($0 % 2 == 0) ? left : right) + "f\($0)", "x") }
        let layer = Tar.archive(entries)
        // Positive control: within the default bound it imports, every file in place.
        let fine = freshStore()
        let imported = try fine.importLayout(try LayoutFixture(layers: [layer]).path, name: "alternating")
        let path = fine.layerPath(try #require(imported.record.layers.first))
        #expect(FileManager.default.fileExists(atPath: path + "/" + left + "f98") && FileManager.default.fileExists(atPath: path + "/" + right + "f99"))
        expectRefused(try LayoutFixture(layers: [layer]), .overBound, entry: nil, store: freshStore { $0.maxDirectoryOpens = 1000 })
        // The bound is the import's: two layers of 1 000 opens each pass one of 1 500 alone but not together.
        let first = Tar.archive(Array(entries.prefix(50))), second = Tar.archive(Array(entries.suffix(50)))
        #expect((try? freshStore { $0.maxDirectoryOpens = 1500 }.importLayout(try LayoutFixture(layers: [first]).path, name: "one")) != nil)
        #expect((try? freshStore { $0.maxDirectoryOpens = 1500 }.importLayout(try LayoutFixture(layers: [second]).path, name: "one")) != nil)
        expectRefused(try LayoutFixture(layers: [first, second]), .overBound, entry: nil, store: freshStore { $0.maxDirectoryOpens = 1500 })
    }

    @Test("a name too long for its record's file is refused before any layer is unpacked")
    func longNameRefused() throws {
        let layout = try LayoutFixture(layers: [Tar.archive([.file("a", "x")])])
        let store = freshStore()
        do {
            _ = try store.importLayout(layout.path, name: String(repeating: "n", count: 120))
            Issue.record("a 120-byte name was taken")
        } catch {
            #expect(error.code == .badName && error.message.contains("119"), "\(error.message)")
        }
        #expect(contents(store.path + "/layers").isEmpty && contents(store.path + "/names").isEmpty)
        let fits = try store.importLayout(layout.path, name: String(repeating: "n", count: 119 - ":latest".count))
        #expect(fits.record.name.utf8.count == 119, "the positive control: a name at the bound")
    }

    @Test("directories made as parents count against the image's entry bound, not only the layer's")
    func implicitDirectoriesCount() throws {
        // 10 entries that make 40 directories between them.
        let entries = (0..<10).map { i in TarEntry.file("a\(i)/b/c/d/f", "x") }
        let store = { (limit: Int) in freshStore { $0.maxImageEntries = limit } }
        // The positive control: 50 entries in all fit a bound of 50.
        _ = try store(50).importLayout(try LayoutFixture(layers: [Tar.archive(entries)]).path, name: "fits")
        expectRefused(try LayoutFixture(layers: [Tar.archive(entries)]), .overBound, entry: nil, store: store(49))
    }
}

