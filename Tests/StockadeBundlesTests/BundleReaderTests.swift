import Foundation
import Glibc
import Testing
import StockadeBundles
import StockadePolicy

/// One hostile bundle: how to build it in `dir` (a fresh directory beside `outside`, a
/// directory holding the host canary), and the rule and entry the reader must report.
struct HostileTree: Sendable, CustomTestStringConvertible {
    let name: String
    let rule: BundleRejection.Rule
    let entry: String?
    var bounds = BundleBounds()
    var role = BundleRole.result
    let build: @Sendable (_ dir: String, _ outside: String) throws -> Void

    var testDescription: String { name }
}

let canary = "HOST-CANARY-7f3a9c-do-not-leak"
private let standardFiles: [(path: String, contents: [UInt8])] = [
    (path: "a.txt", contents: Array("alpha\n".utf8)),
    (path: "src/b.c", contents: Array("int main(void) { return 0; }\n".utf8)),
    (path: "src/deep/c.bin", contents: [0, 1, 2, 255]),
]

private func standard(_ dir: String, extra: [(path: String, contents: [UInt8])] = [], command: [String]? = nil) throws {
    try BundleWriter.write(files: standardFiles + extra, to: dir, command: command)
}

/// Rewrites the manifest with `edit` applied to its text.
private func editManifest(_ dir: String, _ edit: (String) -> String) throws {
    let path = dir + "/manifest.json"
    let text = String(decoding: Tree.read(path) ?? [], as: UTF8.self)
    try FileManager.default.removeItem(atPath: path)
    try Tree.write(path, edit(text))
}

@Suite("Bundle reader")
struct BundleReaderTests {
    static let hostile: [HostileTree] = [
        HostileTree(name: "a symlink to a host file holding a canary", rule: .symlink, entry: "leak") { dir, outside in
            try standard(dir, extra: [(path: "leak", contents: Array(canary.utf8))])
            try FileManager.default.removeItem(atPath: dir + "/leak")
            try FileManager.default.createSymbolicLink(atPath: dir + "/leak", withDestinationPath: outside + "/canary")
        },
        HostileTree(name: "a symlinked directory on a listed path", rule: .symlink, entry: "src") { dir, outside in
            try standard(dir)
            try FileManager.default.removeItem(atPath: dir + "/src")
            try FileManager.default.createSymbolicLink(atPath: dir + "/src", withDestinationPath: outside)
        },
        HostileTree(name: "an unlisted dangling symlink", rule: .symlink, entry: "src/dangling") { dir, _ in
            try standard(dir)
            try FileManager.default.createSymbolicLink(atPath: dir + "/src/dangling", withDestinationPath: "/nonexistent")
        },
        HostileTree(name: "manifest.json is a symlink to a valid manifest", rule: .symlink, entry: "manifest.json") { dir, outside in
            try standard(dir)
            try FileManager.default.moveItem(atPath: dir + "/manifest.json", toPath: outside + "/real-manifest.json")
            try FileManager.default.createSymbolicLink(atPath: dir + "/manifest.json", withDestinationPath: outside + "/real-manifest.json")
        },
        HostileTree(name: "manifest.json is a FIFO (must not hang)", rule: .specialFile, entry: "manifest.json") { dir, _ in
            try Tree.mkfifo(dir + "/manifest.json")
        },
        HostileTree(name: "manifest.json is a socket", rule: .specialFile, entry: "manifest.json") { dir, _ in
            try Tree.socket(dir + "/manifest.json")
        },
        HostileTree(name: "manifest.json is a directory", rule: .badManifest, entry: "manifest.json") { dir, _ in
            try FileManager.default.createDirectory(atPath: dir + "/manifest.json", withIntermediateDirectories: true)
        },
        HostileTree(name: "manifest.json is hard-linked", rule: .hardlink, entry: "manifest.json") { dir, outside in
            try standard(dir)
            try FileManager.default.linkItem(atPath: dir + "/manifest.json", toPath: outside + "/manifest-link")
        },
        HostileTree(name: "no manifest.json", rule: .missingFile, entry: "manifest.json") { dir, _ in
            try Tree.write(dir + "/a.txt", "x")
        },
        HostileTree(name: "a listed file that is a FIFO", rule: .specialFile, entry: "a.txt") { dir, _ in
            try standard(dir)
            try FileManager.default.removeItem(atPath: dir + "/a.txt")
            try Tree.mkfifo(dir + "/a.txt")
        },
        HostileTree(name: "an unlisted FIFO", rule: .specialFile, entry: "src/pipe") { dir, _ in
            try standard(dir)
            try Tree.mkfifo(dir + "/src/pipe")
        },
        HostileTree(name: "an unlisted socket", rule: .specialFile, entry: "sock") { dir, _ in
            try standard(dir)
            try Tree.socket(dir + "/sock")
        },
        HostileTree(name: "two listed files hard-linked together", rule: .hardlink, entry: nil) { dir, _ in
            try standard(dir, extra: [(path: "twin", contents: Array("alpha\n".utf8))])
            try FileManager.default.removeItem(atPath: dir + "/twin")
            try FileManager.default.linkItem(atPath: dir + "/a.txt", toPath: dir + "/twin")
        },
        HostileTree(name: "a listed file hard-linked to a host file", rule: .hardlink, entry: "host") { dir, outside in
            try standard(dir, extra: [(path: "host", contents: Array(canary.utf8))])
            try FileManager.default.removeItem(atPath: dir + "/host")
            try FileManager.default.linkItem(atPath: outside + "/canary", toPath: dir + "/host")
        },
        HostileTree(name: "a file longer than declared", rule: .sizeMismatch, entry: "src/b.c") { dir, _ in
            try standard(dir)
            try Tree.write(dir + "/src/b.c", "int main(void) { return 0; }\n// and more, unlisted bytes\n")
        },
        HostileTree(name: "a file shorter than declared", rule: .sizeMismatch, entry: "src/b.c") { dir, _ in
            try standard(dir)
            try Tree.write(dir + "/src/b.c", "int")
        },
        HostileTree(name: "a declared size that lies high", rule: .sizeMismatch, entry: "a.txt") { dir, _ in
            try standard(dir)
            try editManifest(dir) { $0.replacingOccurrences(of: "\"size\": 6\n", with: "\"size\": 600\n") }
        },
        HostileTree(name: "a declared size that lies low", rule: .sizeMismatch, entry: "a.txt") { dir, _ in
            try standard(dir)
            try editManifest(dir) { $0.replacingOccurrences(of: "\"size\": 6\n", with: "\"size\": 2\n") }
        },
        HostileTree(name: "a file changed after hashing (same size)", rule: .hashMismatch, entry: "src/deep/c.bin") { dir, _ in
            try standard(dir)
            try Tree.write(dir + "/src/deep/c.bin", [0, 1, 2, 254])
        },
        HostileTree(name: "an unlisted file", rule: .unlistedFile, entry: "src/extra.o") { dir, _ in
            try standard(dir)
            try Tree.write(dir + "/src/extra.o", "x")
        },
        HostileTree(name: "an unlisted empty directory", rule: .unlistedFile, entry: "empty") { dir, _ in
            try standard(dir)
            try FileManager.default.createDirectory(atPath: dir + "/empty", withIntermediateDirectories: true)
        },
        HostileTree(name: "a file differing from a listed one only in case", rule: .unlistedFile, entry: "A.txt") { dir, _ in
            try standard(dir)
            try Tree.write(dir + "/A.txt", "alpha\n")
        },
        HostileTree(name: "a listed file spelled in another normal form on disk", rule: .unlistedFile, entry: "e\u{301}") { dir, _ in
            try BundleWriter.write(files: [(path: "\u{E9}", contents: [1])], to: dir)
            try FileManager.default.moveItem(atPath: dir + "/\u{E9}", toPath: dir + "/e\u{301}")
        },
        HostileTree(name: "a listed file missing", rule: .missingFile, entry: "src/deep/c.bin") { dir, _ in
            try standard(dir)
            try FileManager.default.removeItem(atPath: dir + "/src/deep/c.bin")
        },
        HostileTree(name: "a listed file that is a directory", rule: .unlistedFile, entry: "a.txt") { dir, _ in
            try standard(dir)
            try FileManager.default.removeItem(atPath: dir + "/a.txt")
            try FileManager.default.createDirectory(atPath: dir + "/a.txt", withIntermediateDirectories: true)
        },
        HostileTree(name: "an unlisted name with an escape sequence", rule: .badPath, entry: #"\x1B[31mred"#) { dir, _ in
            try standard(dir)
            try Tree.write(dir + "/\u{1B}[31mred", "x")
        },
        HostileTree(name: "an unlisted name that is not UTF-8", rule: .badPath, entry: #"bad\xFF"#) { dir, _ in
            try standard(dir)
            let fd = open(dir + "/placeholder", O_CREAT | O_WRONLY, 0o644)
            close(fd)
            let from = Array((dir + "/placeholder").utf8CString)
            var to = Array((dir + "/bad").utf8CString)
            to.insert(CChar(bitPattern: 0xFF), at: to.count - 1)
            guard rename(from, to) == 0 else { throw POSIXError(.EIO) }
        },
        HostileTree(name: "directories nested past maxPathDepth", rule: .badPath, entry: "a/b/c/d",
                    bounds: { var b = BundleBounds(); b.maxPathDepth = 3; return b }()) { dir, _ in
            try standard(dir)
            try FileManager.default.createDirectory(atPath: dir + "/a/b/c/d/e", withIntermediateDirectories: true)
        },
        HostileTree(name: "a file larger than maxFileBytes", rule: .tooLarge, entry: "big",
                    bounds: { var b = BundleBounds(); b.maxFileBytes = 1000; return b }()) { dir, _ in
            try BundleWriter.write(files: [(path: "big", contents: [UInt8](repeating: 7, count: 1001))], to: dir,
                                   bounds: { var b = BundleBounds(); b.maxFileBytes = 2000; return b }())
        },
        HostileTree(name: "files adding up past maxTotalBytes", rule: .tooLarge, entry: "f3",
                    bounds: { var b = BundleBounds(); b.maxTotalBytes = 2500; return b }()) { dir, _ in
            try BundleWriter.write(files: (1...3).map { (path: "f\($0)", contents: [UInt8](repeating: 1, count: 1000)) }, to: dir)
        },
        HostileTree(name: "a manifest larger than manifestBytes", rule: .tooLarge, entry: "manifest.json",
                    bounds: { var b = BundleBounds(); b.manifestBytes = 200; return b }()) { dir, _ in
            try standard(dir)
        },
        HostileTree(name: "a manifest listing more files than maxFiles", rule: .tooManyFiles, entry: nil,
                    bounds: { var b = BundleBounds(); b.maxFiles = 2; return b }()) { dir, _ in
            try standard(dir)
        },
        HostileTree(name: "a manifest listing case-colliding paths", rule: .duplicatePath, entry: "readme") { dir, _ in
            try standard(dir, extra: [(path: "readme", contents: [1])])
            try editManifest(dir) { $0.replacingOccurrences(of: "\"path\": \"a.txt\"", with: "\"path\": \"README\"") }
            try FileManager.default.moveItem(atPath: dir + "/a.txt", toPath: dir + "/README")
        },
        HostileTree(name: "a manifest listing the same path twice", rule: .duplicatePath, entry: "a.txt") { dir, _ in
            try standard(dir)
            try editManifest(dir) { $0.replacingOccurrences(of: "\"path\": \"src/b.c\"", with: "\"path\": \"a.txt\"") }
        },
        HostileTree(name: "a manifest with duplicate keys", rule: .badManifest, entry: "manifest.json") { dir, _ in
            try standard(dir)
            try editManifest(dir) { $0.replacingOccurrences(of: "\"version\": 1", with: "\"version\": 1, \"files\": []") }
        },
        HostileTree(name: "a manifest nesting bomb", rule: .badManifest, entry: "manifest.json") { dir, _ in
            try Tree.write(dir + "/manifest.json", String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000))
        },
        HostileTree(name: "a manifest with a UTF-16 surrogate encoded in UTF-8", rule: .badManifest, entry: "manifest.json") { dir, _ in
            try Tree.write(dir + "/manifest.json", Array(#"{"version":1,"files":[],"x":""#.utf8) + [0xED, 0xA0, 0x80] + Array(#""}"#.utf8))
        },
        HostileTree(name: "a manifest with a byte order mark", rule: .badManifest, entry: "manifest.json") { dir, _ in
            try Tree.write(dir + "/manifest.json", [0xEF, 0xBB, 0xBF] + Array(#"{"version":1,"files":[]}"#.utf8))
        },
        HostileTree(name: "a manifest with trailing garbage", rule: .badManifest, entry: "manifest.json") { dir, _ in
            try Tree.write(dir + "/manifest.json", #"{"version":1,"files":[]} {}"#)
        },
        HostileTree(name: "a manifest path escaping with ..", rule: .badPath, entry: "../outside/canary") { dir, _ in
            try Tree.write(dir + "/manifest.json", manifestText([(path: "../outside/canary", size: canary.utf8.count, sha256: zeroHash)]))
        },
        HostileTree(name: "a result manifest carrying a command", rule: .badManifest, entry: "manifest.json") { dir, _ in
            try Tree.write(dir + "/manifest.json", #"{"version":1,"files":[],"command":["sh","-c","id"]}"#)
        },
    ]

    @Test("a hostile bundle is rejected with the rule and entry, leaving the destination as it was", arguments: hostile)
    func rejects(_ tree: HostileTree) throws {
        let scratch = Scratch()
        let outside = try scratch.sub("outside")
        try Tree.write(outside + "/canary", canary)
        let dir = try scratch.sub("bundle")
        let destination = try scratch.sub("copy")
        try Tree.write(destination + "/caller-owned", "keep")
        try tree.build(dir, outside)

        let verdict = readBundle(dir, bounds: tree.bounds, role: tree.role, copyTo: destination)
        guard let rejection = verdict.rejection else {
            Issue.record("\(tree.name): expected \(tree.rule.rawValue), got \(verdict)")
            return
        }
        #expect(rejection.rule == tree.rule, "\(tree.name): \(rejection)")
        if let entry = tree.entry {
            #expect(rejection.entry == entry, "\(tree.name): \(rejection)")
        }
        #expect(!String(describing: verdict).contains(canary))
        #expect(Tree.listing(destination) == ["caller-owned"], "the reader left a partial copy")
        #expect(Tree.read(destination + "/caller-owned") == Array("keep".utf8))
        #expect(Tree.read(outside + "/canary") == Array(canary.utf8))
    }

    @Test("a character device in the bundle is a special file", .enabled(if: getuid() == 0, "needs root to mknod a device"))
    func device() throws {
        let scratch = Scratch()
        let dir = try scratch.sub("bundle")
        try standard(dir)
        guard mknod(dir + "/null", S_IFCHR | 0o666, dev_t(0x103)) == 0 else { throw POSIXError(.EPERM) }
        let verdict = readBundle(dir)
        #expect(verdict.rejection?.rule == .specialFile)
        #expect(verdict.rejection?.entry == "null")
    }

    @Test("a valid bundle is accepted and its verified copy is byte-identical, mode 0644, with the manifest")
    func happyPath() throws {
        let scratch = Scratch()
        let dir = try scratch.sub("bundle")
        let destination = try scratch.sub("copy")
        let files = standardFiles + [(path: "patches/x.diff", contents: Array("--- a/x\n+++ b/x\n".utf8)),
                                     (path: "empty", contents: []), (path: "caf\u{E9}/日本.txt", contents: Array("ok".utf8))]
        let written = try BundleWriter.write(files: files, to: dir, patches: ["patches/x.diff"], artifacts: ["a.txt"],
                                             command: ["prog", "--flag"], env: ["K": "V"])
        let verdict = readBundle(dir, role: .request, copyTo: destination)
        let verified = try #require(verdict.verified, "\(verdict)")
        #expect(verified.manifest == written)
        #expect(verified.fileCount == files.count)
        #expect(verified.totalBytes == Int64(files.reduce(0) { $0 + $1.contents.count }))
        #expect(verified.manifest.command == ["prog", "--flag"])
        #expect(verified.manifestSHA256.count == 64)
        for file in files {
            #expect(Tree.read(destination + "/" + file.path) == file.contents, "\(file.path)")
            var st = stat()
            #expect(lstat(destination + "/" + file.path, &st) == 0 && st.st_mode & 0o7777 == 0o644)
        }
        #expect(Tree.read(destination + "/manifest.json") == Tree.read(dir + "/manifest.json"))
        // The copy is itself a valid bundle with the same manifest digest.
        #expect(readBundle(destination, role: .request).verified?.manifestSHA256 == verified.manifestSHA256)
    }

    @Test("the same bundle read as a result is refused for carrying a command")
    func roleMatters() throws {
        let scratch = Scratch()
        let dir = try scratch.sub("bundle")
        try BundleWriter.write(files: standardFiles, to: dir, command: ["prog"])
        #expect(readBundle(dir, role: .request).verified != nil)
        #expect(readBundle(dir, role: .result).rejection?.rule == .badManifest)
    }

    @Test("a destination that already holds a listed name fails the copy and removes what was copied")
    func destinationConflict() throws {
        let scratch = Scratch()
        let dir = try scratch.sub("bundle")
        let destination = try scratch.sub("copy")
        try standard(dir)
        try Tree.write(destination + "/src/deep/c.bin", "theirs")
        let verdict = readBundle(dir, copyTo: destination)
        guard case .failed(let error) = verdict else {
            Issue.record("expected a failed copy, got \(verdict)")
            return
        }
        #expect(error.code == .copyFailed)
        #expect(error.errno == EEXIST)
        #expect(Tree.listing(destination) == ["src", "src/deep", "src/deep/c.bin"])
        #expect(Tree.read(destination + "/src/deep/c.bin") == Array("theirs".utf8))
    }

    @Test("a destination with a planted symlink directory is never written through")
    func destinationSymlink() throws {
        let scratch = Scratch()
        let dir = try scratch.sub("bundle")
        let destination = try scratch.sub("copy")
        let elsewhere = try scratch.sub("elsewhere")
        try standard(dir)
        try FileManager.default.createSymbolicLink(atPath: destination + "/src", withDestinationPath: elsewhere)
        guard case .failed(let error) = readBundle(dir, copyTo: destination) else {
            Issue.record("expected a failed copy")
            return
        }
        #expect(error.code == .copyFailed)
        #expect(Tree.listing(elsewhere).isEmpty)
    }

    @Test("a flood of 100 000 files is rejected as too many files, without reading them")
    func fileFlood() throws {
        let scratch = Scratch(base: "/dev/shm")
        let dir = try scratch.sub("bundle")
        try BundleWriter.write(files: [(path: "flood/00000", contents: [])], to: dir)
        for i in 1..<100_000 {
            let fd = open(dir + "/flood/" + String(i), O_CREAT | O_WRONLY | O_CLOEXEC, 0o644)
            try #require(fd >= 0)
            close(fd)
        }
        let verdict = readBundle(dir)
        #expect(verdict.rejection?.rule == .tooManyFiles, "\(verdict)")
    }

    @Test("an empty directory is told apart from a bundle, and path-based reading matches fd-based reading")
    func emptyDirectoryAndPaths() throws {
        let scratch = Scratch()
        let dir = try scratch.sub("bundle")
        let fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        defer { close(fd) }
        #expect(BundleReader.isEmpty(directory: fd))
        #expect(readBundle(dir).rejection == BundleRejection(rule: .missingFile, entry: "manifest.json",
                                                             message: "the bundle has no manifest.json at its root"))
        try standard(dir)
        #expect(!BundleReader.isEmpty(directory: fd))
        let destination = try scratch.sub("copy")
        let verdict = BundleReader.read(path: dir, bounds: BundleBounds(), role: .result, copyTo: destination)
        #expect(verdict == readBundle(dir))
        #expect(Tree.read(destination + "/src/b.c") == standardFiles[1].contents)
        guard case .failed(let error) = BundleReader.read(path: scratch.path + "/absent", bounds: BundleBounds(), role: .result) else {
            Issue.record("an absent bundle directory must fail")
            return
        }
        #expect(error.code == .bundleUnreadable)
        #expect(error.errno == ENOENT)
    }

    @Test("an empty bundle with an empty manifest is accepted")
    func emptyBundle() throws {
        let scratch = Scratch()
        let dir = try scratch.sub("bundle")
        try BundleWriter.write(files: [], to: dir)
        let verified = try #require(readBundle(dir).verified)
        #expect(verified.fileCount == 0)
        #expect(verified.totalBytes == 0)
    }

    @Test("the writer refuses a bundle the reader would reject, and writes nothing")
    func writerChecks() throws {
        let scratch = Scratch()
        let dir = try scratch.sub("bundle")
        #expect(throws: BundleError.self) { try BundleWriter.write(files: [(path: "../x", contents: [])], to: dir) }
        #expect(throws: BundleError.self) { try BundleWriter.write(files: [(path: "A", contents: []), (path: "a", contents: [])], to: dir) }
        #expect(throws: BundleError.self) { try BundleWriter.write(files: [(path: "a", contents: [])], to: dir, patches: ["b"]) }
        #expect(Tree.listing(dir).isEmpty)
    }

    /// Ad hoc throughput: STOCKADE_BENCH=1 swift test --filter throughput. Prints MB/s; asserts only acceptance.
    @Test("reading, hashing and copying a 100 MB bundle", .enabled(if: ProcessInfo.processInfo.environment["STOCKADE_BENCH"] == "1"))
    func throughput() throws {
        let scratch = Scratch()
        let dir = try scratch.sub("bundle")
        let chunk = (0..<(25 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 2654435761 >> 13) }
        try BundleWriter.write(files: (0..<4).map { (path: "blob\($0)", contents: chunk) }, to: dir)
        for copy in [false, true] {
            let destination = try scratch.sub(copy ? "copy" : "none")
            let start = clock_gettime_ns()
            let verdict = readBundle(dir, copyTo: copy ? destination : nil)
            let seconds = Double(clock_gettime_ns() - start) / 1e9
            #expect(verdict.verified?.totalBytes == 100 << 20)
            print("bundle throughput (\(copy ? "read+hash+copy" : "read+hash")): \(Int(100 / seconds)) MB/s")
        }
    }
}

private func clock_gettime_ns() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
