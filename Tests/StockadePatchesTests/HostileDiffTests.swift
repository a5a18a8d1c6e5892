import Glibc
@testable import StockadePatches
import SystemPackage
import Testing

/// What a hostile case puts in the workspace first. `$CANARY` in a link target is the canary directory.
enum Setup: Sendable {
    case file(String, String)
    case symlink(String, to: String)
    case fifo(String)
}

struct HostileCase: Sendable, CustomTestStringConvertible {
    let label: String
    let diff: String
    let rule: PathRule
    var setup: [Setup] = []
    var testDescription: String { label }
}

/// Builders for diff sections; `a` and `b` are the header tokens exactly as they appear (quoted or not).
enum Section {
    static func names(_ name: String) -> (String, String) { ("a/" + name, "b/" + name) }
    static func quoted(_ escaped: String) -> (String, String) { ("\"a/\(escaped)\"", "\"b/\(escaped)\"") }

    static func create(_ n: (String, String), mode: String = "100644", body: String = "owned") -> String {
        "diff --git \(n.0) \(n.1)\nnew file mode \(mode)\n--- /dev/null\n+++ \(n.1)\n@@ -0,0 +1 @@\n+\(body)\n"
    }
    static func create(_ name: String, mode: String = "100644", body: String = "owned") -> String {
        create(names(name), mode: mode, body: body)
    }
    static func delete(_ name: String, mode: String = "100644") -> String {
        let n = names(name)
        return "diff --git \(n.0) \(n.1)\ndeleted file mode \(mode)\n--- \(n.0)\n+++ /dev/null\n@@ -1 +0,0 @@\n-victim\n"
    }
    static func modify(_ name: String) -> String {
        let n = names(name)
        return "diff --git \(n.0) \(n.1)\n--- \(n.0)\n+++ \(n.1)\n@@ -1 +1 @@\n-old\n+owned\n"
    }
    static func rename(_ from: String, _ to: String) -> String {
        "diff --git a/\(from) b/\(to)\nsimilarity index 100%\nrename from \(from)\nrename to \(to)\n"
    }
    static func copy(_ from: String, _ to: String) -> String {
        "diff --git a/\(from) b/\(to)\nsimilarity index 100%\ncopy from \(from)\ncopy to \(to)\n"
    }
    static func modeChange(_ name: String, _ old: String, _ new: String) -> String {
        "diff --git a/\(name) b/\(name)\nold mode \(old)\nnew mode \(new)\n"
    }
    static func binaryCreate(_ name: String, _ content: [UInt8]) -> String {
        let z = String(decoding: Base85.encodeLines(Zlib.deflate(content)), as: UTF8.self)
        let empty = String(decoding: Base85.encodeLines(Zlib.deflate([])), as: UTF8.self)
        return "diff --git a/\(name) b/\(name)\nnew file mode 100644\nGIT binary patch\nliteral \(content.count)\n\(z)\nliteral 0\n\(empty)\n"
    }
}

extension HostileCase {
    static let all: [HostileCase] = [
        // `..` and `.` in every spelling (t4139-apply-escape).
        .init(label: "creates ../escape", diff: Section.create("../escape"), rule: .dotComponent),
        .init(label: "deletes ../canary/secret", diff: Section.delete("../canary/secret"), rule: .dotComponent),
        .init(label: "modifies through a/../../x", diff: Section.modify("sub/../../canary/secret"), rule: .dotComponent),
        .init(label: "creates ./x", diff: Section.create("./x"), rule: .dotComponent),
        .init(label: "creates x/./y", diff: Section.create("x/./y"), rule: .dotComponent),
        .init(label: "C-quoted \\056\\056 is ..", diff: Section.create(Section.quoted("\\056\\056/canary/x")), rule: .dotComponent),
        .init(label: "full-width dots U+FF0E U+FF0E", diff: Section.create(Section.quoted("\\357\\274\\216\\357\\274\\216/x")), rule: .dotComponent),
        .init(label: "one-dot leaders U+2024 U+2024", diff: Section.create(Section.quoted("\\342\\200\\244\\342\\200\\244/x")), rule: .dotComponent),
        .init(label: "two-dot leader U+2025", diff: Section.create(Section.quoted("\\342\\200\\245/x")), rule: .dotComponent),
        .init(label: ". with a zero-width joiner", diff: Section.create(Section.quoted(".\\342\\200\\215./x")), rule: .dotComponent),
        .init(label: "binary patch with an escaping name", diff: Section.binaryCreate("../bin", [0, 1, 2, 3]), rule: .dotComponent),
        // Absolute paths.
        .init(label: "absolute /etc/passwd", diff: Section.modify("/etc/passwd"), rule: .absolute),
        .init(label: "absolute //etc/passwd", diff: Section.create("//tmp/stockade-escape"), rule: .absolute),
        .init(label: "empty component x//y", diff: Section.create("x//y"), rule: .emptyComponent),
        // Rename and copy headers.
        .init(label: "rename from outside", diff: Section.rename("../canary/secret", "stolen"), rule: .dotComponent),
        .init(label: "rename to outside", diff: Section.rename("inside", "../escape"), rule: .dotComponent, setup: [.file("inside", "x\n")]),
        .init(label: "copy from an absolute path", diff: Section.copy("/etc/shadow", "stolen"), rule: .absolute),
        .init(label: "copy to outside", diff: Section.copy("inside", "../../escape"), rule: .dotComponent, setup: [.file("inside", "x\n")]),
        .init(label: "rename into .git", diff: Section.rename("inside", ".git/config"), rule: .gitDir, setup: [.file("inside", "x\n")]),
        // Headers that disagree.
        .init(label: "+++ names another file",
              diff: "diff --git a/x b/x\n--- a/x\n+++ b/../escape\n@@ -1 +1 @@\n-old\n+new\n", rule: .dotComponent),
        .init(label: "+++ names a different inside file",
              diff: "diff --git a/x b/x\n--- a/x\n+++ b/y\n@@ -1 +1 @@\n-old\n+new\n", rule: .headerMismatch),
        .init(label: "diff --git names differ without rename",
              diff: "diff --git a/x b/y\n--- a/x\n+++ b/y\n@@ -1 +1 @@\n-old\n+new\n", rule: .headerMismatch),
        .init(label: "rename lines disagree with diff --git",
              diff: "diff --git a/x b/y\nrename from x\nrename to z\n", rule: .headerMismatch),
        .init(label: "--- disagrees with diff --git",
              diff: "diff --git a/x b/x\n--- a/other\n+++ b/x\n@@ -1 +1 @@\n-old\n+new\n", rule: .headerMismatch),
        // Bytes.
        .init(label: "NUL in a name", diff: Section.create(Section.quoted("x\\000y")), rule: .controlByte),
        .init(label: "escape sequence in a name", diff: Section.create(Section.quoted("x\\033[31m")), rule: .controlByte),
        .init(label: "newline in a name", diff: Section.create(Section.quoted("x\\ny")), rule: .controlByte),
        .init(label: "DEL in a name", diff: Section.create(Section.quoted("x\\177")), rule: .controlByte),
        .init(label: "C1 control U+0085", diff: Section.create(Section.quoted("x\\302\\205")), rule: .controlByte),
        .init(label: "right-to-left override U+202E", diff: Section.create(Section.quoted("evil\\342\\200\\256txt.sh")), rule: .controlByte),
        .init(label: "line separator U+2028", diff: Section.create(Section.quoted("a\\342\\200\\250b")), rule: .controlByte),
        .init(label: "backslash ..\\x", diff: Section.create(Section.quoted("..\\\\x")), rule: .backslash),
        .init(label: "invalid UTF-8 byte", diff: Section.create(Section.quoted("x\\377")), rule: .notUTF8),
        .init(label: "overlong UTF-8 for '.'", diff: Section.create(Section.quoted("\\300\\256\\300\\256/x")), rule: .notUTF8),
        .init(label: "UTF-8 encoded surrogate", diff: Section.create(Section.quoted("\\355\\240\\200")), rule: .notUTF8),
        .init(label: "component of 256 bytes", diff: Section.create(String(repeating: "a", count: 256)), rule: .tooLong),
        .init(label: "path of 4097 bytes", diff: Section.create(Array(repeating: String(repeating: "d", count: 200), count: 20).joined(separator: "/") + "/" + String(repeating: "f", count: 77)), rule: .tooLong),
        // .git in any form.
        .init(label: ".git/hooks/pre-commit", diff: Section.create(".git/hooks/pre-commit", mode: "100755"), rule: .gitDir),
        .init(label: ".GIT/config", diff: Section.create(".GIT/config"), rule: .gitDir),
        .init(label: ".g<U+200C>it/config", diff: Section.create(Section.quoted(".g\\342\\200\\214it/config")), rule: .gitDir),
        .init(label: ".git<U+FEFF>/config", diff: Section.create(Section.quoted(".git\\357\\273\\277/config")), rule: .gitDir),
        .init(label: "NTFS .git. /config", diff: Section.create(".git. /config"), rule: .gitDir),
        .init(label: "NTFS short name GIT~1", diff: Section.create("GIT~1/config"), rule: .gitDir),
        .init(label: "NTFS stream .git::$INDEX_ALLOCATION", diff: Section.create(".git::$INDEX_ALLOCATION/config"), rule: .gitDir),
        .init(label: "full-width .ｇｉｔ", diff: Section.create(Section.quoted(".\\357\\275\\207\\357\\275\\211\\357\\275\\224/config")), rule: .gitDir),
        .init(label: "deleting .git/index", diff: Section.delete("sub/.git/index"), rule: .gitDir),
        // Modes (t4115-apply-symlink).
        .init(label: "symlink created then written through",
              diff: Section.create("link", mode: "120000", body: "../canary") + Section.create("link/secret"), rule: .badMode),
        .init(label: "symlink to an absolute path", diff: Section.create("abs", mode: "120000", body: "/etc"), rule: .badMode),
        .init(label: "mode change to a symlink", diff: Section.modeChange("x", "100644", "120000"), rule: .badMode, setup: [.file("x", "/etc\n")]),
        .init(label: "gitlink 160000", diff: Section.create("sub", mode: "160000", body: "Subproject commit 0000"), rule: .badMode),
        .init(label: "setuid 104755", diff: Section.create("suid", mode: "104755"), rule: .badMode),
        .init(label: "setgid by mode change", diff: Section.modeChange("x", "100644", "102755"), rule: .badMode, setup: [.file("x", "x\n")]),
        .init(label: "sticky bit", diff: Section.create("sticky", mode: "101644"), rule: .badMode),
        .init(label: "directory mode 040000", diff: Section.create("d", mode: "040000"), rule: .badMode),
        .init(label: "world-writable 100666", diff: Section.create("w", mode: "100666"), rule: .badMode),
        .init(label: "symlink mode on the index line",
              diff: "diff --git a/x b/x\nindex 1234567..89abcde 120000\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-old\n+/etc\n", rule: .badMode),
        .init(label: "deleting a symlink", diff: Section.delete("lnk", mode: "120000"), rule: .badMode, setup: [.symlink("lnk", to: "$CANARY/secret")]),
        // Collisions.
        .init(label: "NFC and NFD twins", diff: Section.create("caf\u{e9}") + Section.create("cafe\u{301}"), rule: .collision),
        .init(label: "case twins", diff: Section.create("README") + Section.create("readme"), rule: .collision),
        .init(label: "same file twice", diff: Section.create("twice") + Section.create("twice"), rule: .collision),
        .init(label: "a file and a directory of the same name", diff: Section.create("f") + Section.create("F/x"), rule: .collision),
        .init(label: "rename of an existing symlink then create beneath",
              diff: Section.rename("lnk", "dir") + Section.create("dir/owned"), rule: .collision,
              setup: [.symlink("lnk", to: "$CANARY")]),
        // The workspace as it is on disk.
        .init(label: "rename of an existing symlink", diff: Section.rename("lnk", "dir"), rule: .symlinkInPath,
              setup: [.symlink("lnk", to: "$CANARY")]),
        .init(label: "etc -> canary, writing etc/passwd", diff: Section.create("etc/passwd"), rule: .symlinkInPath,
              setup: [.symlink("etc", to: "$CANARY")]),
        .init(label: "modifying through a directory symlink", diff: Section.modify("etc/secret"), rule: .symlinkInPath,
              setup: [.symlink("etc", to: "$CANARY")]),
        .init(label: "modifying a file that is a symlink", diff: Section.modify("lnk"), rule: .symlinkInPath,
              setup: [.symlink("lnk", to: "$CANARY/secret")]),
        .init(label: "dangling symlink as the created name", diff: Section.create("dangling"), rule: .symlinkInPath,
              setup: [.symlink("dangling", to: "$CANARY/new")]),
        .init(label: "a regular file where a directory is needed", diff: Section.create("plain/x"), rule: .notADirectory,
              setup: [.file("plain", "x\n")]),
        .init(label: "a FIFO as the modified file", diff: Section.modify("pipe"), rule: .notRegular, setup: [.fifo("pipe")]),
    ]
}

@Suite("Hostile diffs")
struct HostileDiffTests {
    @Test("a hostile diff is rejected with its rule, and applying it leaves the workspace and its neighbours byte-identical",
          arguments: HostileCase.all)
    func hostileDiffIsRejected(_ hostile: HostileCase) throws {
        let sandbox = Sandbox()
        for step in hostile.setup {
            switch step {
            case .file(let name, let text): sandbox.file(name, text)
            case .symlink(let name, let target):
                let resolved = target.hasPrefix("$CANARY") ? sandbox.canary + target.dropFirst("$CANARY".count) : target
                #expect(symlink(resolved, sandbox.workspace + "/" + name) == 0)
            case .fifo(let name): #expect(mkfifo(sandbox.workspace + "/" + name, 0o644) == 0)
            }
        }
        let set = try DiffParser.parse(Array(hostile.diff.utf8))
        let root = open(sandbox.workspace, O_RDONLY | O_DIRECTORY)
        defer { close(root) }
        let verdict = PathGuard.check(set, workspaceRoot: FileDescriptor(rawValue: root))
        #expect(verdict.rule == hostile.rule, "verdict: \(verdict)")

        let before = sandbox.snapshot()
        let error = #expect(throws: PatchError.self) { try PatchApplier.apply(set, workspaceRoot: sandbox.workspace) }
        #expect(error?.code == .rejected)
        #expect(error?.message.hasPrefix(hostile.rule.rawValue + ":") == true, "\(String(describing: error))")
        #expect(sandbox.snapshot() == before)
        #expect(access("/tmp/stockade-escape", F_OK) != 0)
    }

    @Test("the table covers at least 40 hostile diffs and every rule")
    func tableIsComplete() {
        #expect(HostileCase.all.count >= 40)
        let rules: Set<PathRule> = [.notUTF8, .controlByte, .backslash, .absolute, .emptyComponent, .dotComponent, .gitDir,
                                    .tooLong, .headerMismatch, .collision, .badMode, .symlinkInPath]
        #expect(rules.isSubset(of: Set(HostileCase.all.map(\.rule))))
    }

    @Test("a workspace with etc -> /etc rejects a diff writing etc/passwd before anything is opened")
    func realEtcSymlinkIsRefused() throws {
        let sandbox = Sandbox()
        #expect(symlink("/etc", sandbox.workspace + "/etc") == 0)
        let set = try DiffParser.parse(Array(Section.modify("etc/passwd").utf8))
        let root = open(sandbox.workspace, O_RDONLY | O_DIRECTORY)
        defer { close(root) }
        #expect(PathGuard.check(set, workspaceRoot: FileDescriptor(rawValue: root)).rule == .symlinkInPath)
        // Not applied: the guard alone is asserted, so a broken applier could never touch the host's /etc.
    }

    @Test("the applier's own openat2 refuses a symlinked parent even without the guard")
    func applierRefusesSymlinkWithoutGuard() throws {
        let sandbox = Sandbox()
        #expect(symlink(sandbox.canary, sandbox.workspace + "/etc") == 0)
        let set = try DiffParser.parse(Array((Section.modify("etc/secret") + Section.create("etc/new")).utf8))
        let root = open(sandbox.workspace, O_RDONLY | O_DIRECTORY)
        defer { close(root) }
        let before = sandbox.snapshot()
        #expect(throws: PatchError.self) { _ = try PatchApplier.plan(set, root: root, limits: .default) }
        let creation = try DiffParser.parse(Array(Section.create("etc/new").utf8))
        #expect(throws: PatchError.self) { _ = try PatchApplier.plan(creation, root: root, limits: .default) }
        // Past planning too: the writer's own directory walk refuses the link.
        let plan = PatchApplier.Plan(writes: [.init(path: Array("etc/new".utf8), content: [1], mode: 0o644, mustNotExist: true)])
        let error = #expect(throws: PatchError.self) { try PatchApplier.execute(plan, root: root) }
        #expect(error?.errno == ELOOP || error?.errno == ENOTDIR)
        #expect(sandbox.snapshot() == before)
    }
}

@Suite("Applier defences without the guard")
struct ApplierDefenceTests {
    @Test("planning refuses a name with a NUL byte, which a C call would cut short")
    func nulRefusedByPlan() throws {
        let sandbox = Sandbox()
        let set = try DiffParser.parse(Array(Section.create(Section.quoted("x\\000y")).utf8))
        let root = open(sandbox.workspace, O_RDONLY | O_DIRECTORY)
        defer { close(root) }
        let error = #expect(throws: PatchError.self) { _ = try PatchApplier.plan(set, root: root, limits: .default) }
        #expect(error?.code == .rejected)
    }
}
