import Glibc
@testable import StockadePatches
import Testing

@Suite("Applying benign diffs")
struct ApplyTests {
    @Test("git's own output for every kind of change applies exactly")
    func gitFixtureApplies() throws {
        let sandbox = Sandbox()
        sandbox.file("a.txt", "one\ntwo\nthree\n")
        sandbox.file("gone.txt", "x\n")
        sandbox.file("m.sh", "mode\n")
        sandbox.file("r.txt", "ren\nsame\nlines\nhere\n")
        let set = try DiffParser.parse(Array(gitFixture.utf8))
        #expect(set.files.count == 7)
        try PatchApplier.apply(set, workspaceRoot: sandbox.workspace)
        #expect(sandbox.read("a.txt") == Array("one\nTWO\nthree".utf8))
        #expect(sandbox.read("b.bin") == [0, 1] + Array("bin".utf8))
        #expect(sandbox.read("deep/er/n.txt") == Array("new\n".utf8))
        #expect(sandbox.read("gone.txt") == nil)
        #expect(sandbox.mode("m.sh").map { $0 & 0o7777 } == 0o755)
        #expect(sandbox.read("m.sh") == Array("mode\n".utf8))
        #expect(sandbox.read("r.txt") == nil)
        #expect(sandbox.read("moved dir.txt") == Array("ren\nsame\nlines\nhere\n".utf8))
        #expect(sandbox.read("\u{e9} x.txt") == Array("caf\u{e9}\n".utf8))
        #expect(sandbox.snapshot().filter { $0.contains(".stockade-") }.isEmpty)
    }

    struct Change: Sendable, CustomTestStringConvertible {
        let label: String
        let path: String
        let old: [UInt8]?
        let new: [UInt8]?
        var oldMode: UInt32? = nil
        var newMode: UInt32? = nil
        var testDescription: String { label }
    }

    static let changes: [Change] = [
        Change(label: "modify one line", path: "f.txt", old: lines(1...20), new: lines(1...20, replacing: 10)),
        Change(label: "modify in two distant places", path: "f.txt", old: lines(1...60), new: lines(1...60, replacing: 5, 50)),
        Change(label: "create in new nested directories", path: "new/deep/dir/f.txt", old: nil, new: lines(1...3)),
        Change(label: "create an empty file", path: "empty", old: nil, new: []),
        Change(label: "create an executable", path: "run.sh", old: nil, new: Array("#!/bin/sh\n".utf8), newMode: 0o100755),
        Change(label: "delete", path: "old/f.txt", old: lines(1...5), new: nil),
        Change(label: "delete an empty file", path: "e", old: [], new: nil),
        Change(label: "mode change only", path: "tool", old: lines(1...2), new: lines(1...2), oldMode: 0o100644, newMode: 0o100755),
        Change(label: "mode change back to 644 with content", path: "tool", old: lines(1...2), new: lines(1...3), oldMode: 0o100755, newMode: 0o100644),
        Change(label: "add a missing final newline", path: "f", old: Array("a\nb".utf8), new: Array("a\nb\n".utf8)),
        Change(label: "remove the final newline", path: "f", old: Array("a\nb\n".utf8), new: Array("a\nb".utf8)),
        Change(label: "change a line without a newline", path: "f", old: Array("a\nb".utf8), new: Array("a\nc".utf8)),
        Change(label: "binary create", path: "img.bin", old: nil, new: [0x89, 0x50, 0x4E, 0x47, 0, 0, 0xFF]),
        Change(label: "binary modify", path: "img.bin", old: [0, 1, 2], new: [0, 1, 2, 3, 0xFE]),
        Change(label: "text to binary", path: "data", old: lines(1...3), new: [0xC0, 0x80]),
        Change(label: "binary delete", path: "data", old: [0, 0, 0], new: nil),
        Change(label: "name with a space, tab and accents", path: "dir x/caf\u{e9} name.txt", old: lines(1...4), new: lines(2...4)),
        Change(label: "CRLF lines", path: "win.txt", old: Array("a\r\nb\r\n".utf8), new: Array("a\r\nc\r\n".utf8)),
    ]

    @Test("a diff written by DiffWriter applies exactly and changes nothing else", arguments: changes)
    func writtenDiffApplies(_ change: Change) throws {
        let sandbox = Sandbox()
        sandbox.file("bystander.txt", "untouched\n")
        if let old = change.old { sandbox.bytes(change.path, old, mode: mode_t((change.oldMode ?? 0o100644) & 0o777)) }
        let diff = DiffWriter.fileDiff(path: change.path, old: change.old, new: change.new, oldMode: change.oldMode, newMode: change.newMode)
        let set = try DiffParser.parse(diff)
        try PatchApplier.apply(set, workspaceRoot: sandbox.workspace)
        #expect(sandbox.read(change.path) == change.new)
        if change.new != nil {
            #expect(sandbox.mode(change.path).map { UInt32($0) } == change.newMode ?? 0o100644)
        }
        #expect(sandbox.read("bystander.txt") == Array("untouched\n".utf8))
        #expect(sandbox.snapshot().filter { $0.contains(".stockade-") }.isEmpty)
    }

    @Test("renames and copies move content and create parent directories")
    func renameAndCopy() throws {
        let sandbox = Sandbox()
        sandbox.file("src/a.txt", "1\n2\n3\n")
        sandbox.file("src/b.txt", "b\n")
        let diff = """
        diff --git a/src/a.txt b/dst/new/a.txt
        similarity index 80%
        rename from src/a.txt
        rename to dst/new/a.txt
        --- a/src/a.txt
        +++ b/dst/new/a.txt
        @@ -1,3 +1,3 @@
         1
        -2
        +two
         3
        diff --git a/src/b.txt b/src/c.txt
        similarity index 100%
        copy from src/b.txt
        copy to src/c.txt

        """
        try PatchApplier.apply(try DiffParser.parse(Array(diff.utf8)), workspaceRoot: sandbox.workspace)
        #expect(sandbox.read("src/a.txt") == nil)
        #expect(sandbox.read("dst/new/a.txt") == Array("1\ntwo\n3\n".utf8))
        #expect(sandbox.read("src/b.txt") == Array("b\n".utf8))
        #expect(sandbox.read("src/c.txt") == Array("b\n".utf8))
    }

    @Test("a hunk that no longer applies writes nothing and names the file and the hunk")
    func staleHunkWritesNothing() throws {
        let sandbox = Sandbox()
        let old = lines(1...40)
        let new = lines(1...40, replacing: 3, 30)
        sandbox.bytes("f.txt", old)
        let diff = DiffWriter.fileDiff(path: "new.txt", old: nil, new: lines(1...2), oldMode: nil, newMode: nil)
            + DiffWriter.fileDiff(path: "f.txt", old: old, new: new, oldMode: nil, newMode: nil)
        let set = try DiffParser.parse(diff)
        #expect(set.files[1].hunks.count == 2)
        sandbox.bytes("f.txt", lines(1...40, replacing: 31))  // the workspace moved on under the second hunk
        let before = sandbox.snapshot()
        let error = #expect(throws: PatchError.self) { try PatchApplier.apply(set, workspaceRoot: sandbox.workspace) }
        #expect(error?.code == .doesNotApply)
        #expect(error?.path == "f.txt")
        #expect(error?.message.contains("hunk 2") == true)
        #expect(sandbox.snapshot() == before)
    }

    @Test("creating a file that already exists, or deleting one that changed, writes nothing")
    func presenceMismatches() throws {
        let sandbox = Sandbox()
        sandbox.file("exists", "x\n")
        sandbox.file("changed", "new content\n")
        let before = sandbox.snapshot()
        for diff in [Section.create("exists"), Section.delete("changed"), Section.modify("missing")] {
            let error = #expect(throws: PatchError.self) { try PatchApplier.apply(try DiffParser.parse(Array(diff.utf8)), workspaceRoot: sandbox.workspace) }
            #expect(error?.code == .doesNotApply)
        }
        #expect(sandbox.snapshot() == before)
    }

    @Test("a step that fails while moving files into place undoes every earlier one: the workspace is as it was")
    func failureDuringCommitUndoesEverything() throws {
        let sandbox = Sandbox()
        sandbox.file("keep/edited.txt", "old content\n")
        sandbox.file("doomed.txt", "to delete\n")
        let root = open(sandbox.workspace, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        defer { close(root) }
        // A plan as the planner makes it: replace one file, create one in a new directory, create one
        // whose name will be taken between the check and the move, delete one.
        var plan = PatchApplier.Plan()
        plan.writes = [
            .init(path: Array("keep/edited.txt".utf8), content: Array("new content\n".utf8), mode: 0o644, mustNotExist: false),
            .init(path: Array("fresh/new.txt".utf8), content: Array("brand new\n".utf8), mode: 0o644, mustNotExist: true),
            .init(path: Array("raced.txt".utf8), content: Array("mine\n".utf8), mode: 0o644, mustNotExist: true),
        ]
        plan.deletions = [Array("doomed.txt".utf8)]
        sandbox.file("raced.txt", "appeared meanwhile\n")
        let before = sandbox.snapshot()
        let error = #expect(throws: PatchError.self) { try PatchApplier.execute(plan, root: root) }
        #expect(error?.path == "raced.txt")
        #expect(error?.message.contains("nothing was changed") == true, "\(String(describing: error))")
        #expect(sandbox.read("keep/edited.txt") == Array("old content\n".utf8))
        #expect(sandbox.read("doomed.txt") == Array("to delete\n".utf8))
        #expect(sandbox.read("fresh/new.txt") == nil && sandbox.mode("fresh") == nil)
        #expect(sandbox.read("raced.txt") == Array("appeared meanwhile\n".utf8))
        #expect(sandbox.snapshot() == before, "byte-identical, no temporary left")
    }

    @Test("a file to delete that vanished after the check undoes the writes already moved in")
    func vanishedDeletionUndoesWrites() throws {
        let sandbox = Sandbox()
        sandbox.file("edited.txt", "old\n")
        let root = open(sandbox.workspace, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        defer { close(root) }
        var plan = PatchApplier.Plan()
        plan.writes = [.init(path: Array("edited.txt".utf8), content: Array("new\n".utf8), mode: 0o644, mustNotExist: false)]
        plan.deletions = [Array("vanished.txt".utf8)]
        let error = #expect(throws: PatchError.self) { try PatchApplier.execute(plan, root: root) }
        #expect(error?.path == "vanished.txt")
        #expect(sandbox.read("edited.txt") == Array("old\n".utf8))
        #expect(sandbox.snapshot().filter { $0.contains(".stockade-") }.isEmpty, "\(sandbox.snapshot())")
    }

    @Test("deleting the last file of a directory removes the emptied directories, and only those")
    func deletionRemovesEmptiedDirectories() throws {
        let sandbox = Sandbox()
        sandbox.file("a/b/c/only.txt", "victim\n")
        sandbox.file("a/keep.txt", "k\n")
        try PatchApplier.apply(try DiffParser.parse(Array(Section.delete("a/b/c/only.txt").utf8)),
                               workspaceRoot: sandbox.workspace)
        #expect(sandbox.mode("a/b") == nil)
        #expect(sandbox.mode("a").map { $0 & S_IFMT } == S_IFDIR)
        #expect(sandbox.read("a/keep.txt") == Array("k\n".utf8))
    }

    @Test("a declared old mode that differs from the file's is a mismatch")
    func oldModeMismatch() throws {
        let sandbox = Sandbox()
        sandbox.file("tool", "x\n", mode: 0o644)
        let set = try DiffParser.parse(Array(Section.modeChange("tool", "100755", "100644").utf8))
        let error = #expect(throws: PatchError.self) { try PatchApplier.apply(set, workspaceRoot: sandbox.workspace) }
        #expect(error?.code == .doesNotApply)
    }

}

func lines(_ range: ClosedRange<Int>, replacing: Int...) -> [UInt8] {
    Array(range.map { replacing.contains($0) ? "changed \($0)\n" : "line \($0)\n" }.joined().utf8)
}
