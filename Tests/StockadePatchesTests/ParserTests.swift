@testable import StockadePatches
import Testing

@Suite("Diff parser")
struct ParserTests {
    @Test("git's fixture parses into the sections git meant")
    func gitFixtureParses() throws {
        let set = try DiffParser.parse(Array(gitFixture.utf8))
        let byName = Dictionary(uniqueKeysWithValues: set.files.map { (String(decoding: $0.targetPath ?? $0.sourcePath ?? [], as: UTF8.self), $0) })
        #expect(byName["a.txt"]?.hunks.first?.lines.last?.missingNewline == true)
        #expect(byName["b.bin"]?.binary?.newContent == [0, 1] + Array("bin".utf8))
        #expect(byName["b.bin"]?.binary?.oldContent == [])
        #expect(byName["gone.txt"]?.isDeletion == true)
        #expect(byName["m.sh"]?.oldMode == 0o100644 && byName["m.sh"]?.newMode == 0o100755)
        #expect(byName["moved dir.txt"]?.renameFrom == Array("r.txt".utf8))
        #expect(byName["moved dir.txt"]?.gitNewName == Array("moved dir.txt".utf8))
        #expect(byName["\u{e9} x.txt"]?.plusName == Array("\u{e9} x.txt".utf8))
        #expect(byName["deep/er/n.txt"]?.isCreation == true)
    }

    @Test("C-quoted names decode every escape git writes")
    func quotedNames() throws {
        let diff = #"diff --git "a/\303\251\t\"q\"\\\a\b\v\f\r\001" "b/\303\251\t\"q\"\\\a\b\v\f\r\001""# + "\nnew file mode 100644\n"
        let set = try DiffParser.parse(Array(diff.utf8))
        #expect(set.files.first?.gitNewName == [0xC3, 0xA9, 0x09, 0x22, 0x71, 0x22, 0x5C, 0x07, 0x08, 0x0B, 0x0C, 0x0D, 0x01])
    }

    @Test("quoting and unquoting are inverse for every byte")
    func quoteRoundTrip() {
        let all = (0...255).map { UInt8($0) }
        let quoted = CQuote.quote(all)
        #expect(CQuote.unquote(quoted[...], from: 0).map { $0.name } == all)
        #expect(quoted.allSatisfy { $0 >= 0x20 && $0 < 0x7F })
    }

    struct Malformed: Sendable, CustomTestStringConvertible {
        let label: String
        let diff: String
        var code: PatchError.Code = .malformed
        var line: Int?
        var limits: DiffLimits = .default
        var testDescription: String { label }
    }

    static let malformed: [Malformed] = [
        Malformed(label: "text before the first header", diff: "hello\ndiff --git a/x b/x\nnew file mode 100644\n", line: 1),
        Malformed(label: "a plain unified diff without a git header", diff: "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n", line: 1),
        Malformed(label: "unknown header line", diff: "diff --git a/x b/x\nfrobnicate yes\n", line: 2),
        Malformed(label: "Binary files differ", diff: "diff --git a/x b/x\nBinary files a/x and b/x differ\n", line: 2),
        Malformed(label: "delta binary patch", diff: "diff --git a/x b/x\nGIT binary patch\ndelta 5\nAAAAA\n\n", line: 3),
        Malformed(label: "no newline at the end of the diff", diff: "diff --git a/x b/x\nnew file mode 100644", line: 2),
        Malformed(label: "hunk with more lines than counted", diff: "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n+c\n", line: 7),
        Malformed(label: "hunk with fewer lines than counted", diff: "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n-a\n+b\n", line: 7),
        Malformed(label: "empty line inside a hunk", diff: "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n a\n\n", line: 6),
        Malformed(label: "bad hunk header", diff: "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,x +1 @@\n-a\n+b\n", line: 4),
        Malformed(label: "hunk header with a huge number", diff: "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -99999999999 +1 @@\n-a\n+b\n", line: 4),
        Malformed(label: "overlapping hunks", diff: "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n a\n-b\n+c\n@@ -2 +2 @@\n-b\n+c\n", line: 8),
        Malformed(label: "new start inconsistent with old start", diff: "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +5 @@\n-a\n+b\n", line: 4),
        Malformed(label: "unterminated quoted name", diff: "diff --git \"a/x b/x\nnew file mode 100644\n", line: 1),
        Malformed(label: "unknown escape in a quoted name", diff: "diff --git \"a/\\q\" \"b/\\q\"\nnew file mode 100644\n", line: 1),
        Malformed(label: "t4139's /dev/null in the diff --git header", diff: "diff --git /dev/null b/renamed-symlink/create-me\nnew file mode 100644\n", line: 1),
        Malformed(label: "a format-patch signature separator", diff: "diff --git a/x b/x\nnew file mode 100644\n-- \n2.39.5\n", line: 3),
        Malformed(label: "names without a/ b/ prefixes", diff: "diff --git x x\nnew file mode 100644\n", line: 1),
        Malformed(label: "--- without a/ prefix", diff: "diff --git a/x b/x\n--- x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n", line: 2),
        Malformed(label: "--- without +++", diff: "diff --git a/x b/x\n--- a/x\n@@ -1 +1 @@\n-a\n+b\n", line: 2),
        Malformed(label: "duplicate header line", diff: "diff --git a/x b/x\nnew file mode 100644\nnew file mode 100644\n", line: 3),
        Malformed(label: "both created and deleted", diff: "diff --git a/x b/x\nnew file mode 100644\ndeleted file mode 100644\n", line: 1),
        Malformed(label: "old mode without new mode", diff: "diff --git a/x b/x\nold mode 100644\n", line: 1),
        Malformed(label: "a section that changes nothing", diff: "diff --git a/x b/x\nindex 1234567..1234567\n", line: 1),
        Malformed(label: "non-octal mode", diff: "diff --git a/x b/x\nnew file mode 100648\n", line: 2),
        Malformed(label: "creation whose hunk does not start at -0,0", diff: "diff --git a/x b/x\nnew file mode 100644\n--- /dev/null\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n", line: 1),
        Malformed(label: "/dev/null without new file mode", diff: "diff --git a/x b/x\n--- /dev/null\n+++ b/x\n@@ -0,0 +1 @@\n+b\n", line: 1),
        Malformed(label: "text after the no-newline marker's side ends", diff: "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n-a\n\\ No newline at end of file\n-b\n+c\n+d\n", line: 7),
        Malformed(label: "a misspelt no-newline marker", diff: "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n\\ no newline\n+b\n", line: 6),
        Malformed(label: "binary literal whose size lies", diff: "diff --git a/x b/x\nnew file mode 100644\nGIT binary patch\nliteral 6\nMcmZQzOv=my00M6TI{*Lx\n\n", line: 4),
        Malformed(label: "corrupt base85", diff: "diff --git a/x b/x\nnew file mode 100644\nGIT binary patch\nliteral 5\nMcmZQzOv=my00M6TI{*L\"\n\n", line: 5),
        Malformed(label: "garbage after the last section", diff: "diff --git a/x b/x\nnew file mode 100644\n--- /dev/null\n+++ b/x\n@@ -0,0 +1 @@\n+a\ntrailing\n", line: 7),
        Malformed(label: "line longer than the limit", diff: "diff --git a/x b/x\n" + String(repeating: "x", count: 100) + "\n",
                  code: .tooLarge, line: 2, limits: DiffLimits(maxLineBytes: 64)),
        Malformed(label: "more sections than the limit", diff: String(repeating: "diff --git a/x b/x\nnew file mode 100644\n", count: 3),
                  code: .tooLarge, line: 5, limits: DiffLimits(maxFiles: 2)),
        Malformed(label: "more hunks than the limit", diff: "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n@@ -3 +3 @@\n-a\n+b\n",
                  code: .tooLarge, line: 7, limits: DiffLimits(maxHunks: 1)),
        Malformed(label: "hunk header claiming billions of lines", diff: "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,2000000000 +1,2000000000 @@\n a\n",
                  line: 6),
        Malformed(label: "diff larger than the limit", diff: String(repeating: "x", count: 200), code: .tooLarge, limits: DiffLimits(maxDiffBytes: 100)),
        Malformed(label: "binary literal larger than the file limit", diff: "diff --git a/x b/x\nnew file mode 100644\nGIT binary patch\nliteral 999999\nA00\n\n",
                  code: .tooLarge, line: 4, limits: DiffLimits(maxFileBytes: 1000)),
    ]

    @Test("a malformed or oversized diff is rejected with the line that is wrong", arguments: malformed)
    func malformedIsRejected(_ bad: Malformed) {
        let error = #expect(throws: PatchError.self) { try DiffParser.parse(Array(bad.diff.utf8), limits: bad.limits) }
        #expect(error?.code == bad.code, "\(String(describing: error))")
        if let line = bad.line {
            #expect(error?.message.hasPrefix("line \(line):") == true, "\(String(describing: error))")
        }
    }

    @Test("unquoted names with spaces split where the two halves agree")
    func spacedNames() throws {
        let diff = "diff --git a/x b/y b/x b/y\n--- a/x b/y\t\n+++ b/x b/y\t\n@@ -1 +1 @@\n-a\n+b\n"
        let file = try #require(try DiffParser.parse(Array(diff.utf8)).files.first)
        #expect(file.gitOldName == Array("x b/y".utf8))
        #expect(file.gitNewName == Array("x b/y".utf8))
        #expect(file.plusName == Array("x b/y".utf8))
    }
}
