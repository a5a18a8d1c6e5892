@testable import StockadePatches
import Testing

@Suite("Path guard")
struct PathGuardTests {
    @Test("ordinary project names pass", arguments: [
        "README.md", "src/main.swift", ".gitignore", ".github/workflows/ci.yml", ".gitattributes", "a/.gitx/b",
        "caf\u{e9}/na\u{ef}ve.txt", "x..y", "..x", "x..", ".hidden", "dir with spaces/f", "git~x", "GIT", "my.git",
        "Makefile", "a/b/c/d/e/f/g", "\u{1F600}.md", String(repeating: "n", count: 255),
    ])
    func ordinaryNamesPass(_ name: String) {
        #expect(PathGuard.checkName(Array(name.utf8)) == .ok)
    }

    @Test("every allowed mode passes and nothing else does", arguments: [
        (UInt32(0o100644), true), (0o100755, true), (0o100600, false), (0o100777, false), (0o120000, false),
        (0o160000, false), (0o040000, false), (0o104755, false), (0o102755, false), (0o101755, false), (0o020644, false),
        (0o060644, false), (0o010644, false), (0o140644, false),
    ])
    func modes(_ mode: UInt32, _ allowed: Bool) {
        #expect((PathGuard.checkMode(mode, of: Array("f".utf8)) == .ok) == allowed)
    }

    @Test("the verdict names the offending path with special bytes quoted")
    func verdictNamesPath() {
        let verdict = PathGuard.checkName([0x61, 0x00, 0x62])
        guard case .rejected(let path, let rule, _) = verdict else { Issue.record("accepted"); return }
        #expect(path == #""a\000b""#)
        #expect(rule == .controlByte)
    }

    @Test("case folding catches a folded pair that differs only beyond ASCII")
    func foldingBeyondASCII() {
        #expect(PathGuard.foldKey(Array("STRASSE".utf8)) == PathGuard.foldKey(Array("stra\u{df}e".utf8)))
        #expect(PathGuard.foldKey(Array("\u{c5}".utf8)) == PathGuard.foldKey(Array("a\u{30a}".utf8)))
    }
}

@Suite("Path guard fast path")
struct PathGuardFastPathTests {
    @Test("the ASCII fast path agrees with the Unicode path on every short ASCII component", arguments: 0..<4)
    func fastPathAgrees(seed: Int) {
        var random = SeededRandom(state: UInt64(seed))
        let alphabet = Array(".gitGIT~1: x".utf8)
        for _ in 0..<20_000 {
            let component = (0..<Int.random(in: 1...8, using: &random)).map { _ in alphabet.randomElement(using: &random) ?? 0x2E }
            let slow = PathGuard.isGitDir(PathGuard.normalizedComponent(String(decoding: component, as: UTF8.self)))
            #expect(PathGuard.isGitDirASCII(component[...]) == slow, "\(String(decoding: component, as: UTF8.self))")
        }
    }
}
