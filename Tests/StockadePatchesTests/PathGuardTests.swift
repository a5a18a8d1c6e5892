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

/// The printable-ASCII fast path must give exactly the verdict (rule and message) the full check gives.
@Suite("Path guard whole-name fast path")
struct PathGuardWholeNameFastPathTests {
    @Test("on random and hostile ASCII names the fast path and the full check agree")
    func agreesWithFullCheck() {
        let pieces = ["a", "src", ".git", ".GIT", "git~1", "GIT~12", "git~", "git~x", ".git.", ".git ", ".git:stream", ".", "..",
                      ". .", "...", " ", "x", "\\", "a\\b", "", "dir with spaces", "~", ":", "g", ".gi", ".gitx", "0123456789"]
        var state: UInt64 = 0x9E3779B97F4A7C15
        func next() -> Int {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            return Int(state % 1_000_003)
        }
        var checked = 0
        for _ in 0..<20_000 {
            let parts = (0..<(1 + next() % 5)).map { _ in pieces[next() % pieces.count] }
            var name = parts.joined(separator: "/")
            if next() % 10 == 0 { name = "/" + name }
            if next() % 10 == 0 { name += "/" }
            let bytes = Array(name.utf8)
            guard let fast = PathGuard.checkPrintableASCII(bytes) else { continue }
            #expect(fast == PathGuard.checkNameFully(bytes), "\(name)")
            checked += 1
        }
        #expect(checked > 15_000)
        let long = Array(String(repeating: "a/", count: 3000).utf8) + [UInt8(ascii: "b")]
        #expect(PathGuard.checkPrintableASCII(long) == PathGuard.checkNameFully(long))
        let longComponent = Array(String(repeating: "c", count: 300).utf8)
        #expect(PathGuard.checkPrintableASCII(longComponent) == PathGuard.checkNameFully(longComponent))
    }

    @Test("a name with a control byte or a non-ASCII byte is left to the full check")
    func leavesOthers() {
        #expect(PathGuard.checkPrintableASCII(Array("a\tb".utf8)) == nil)
        #expect(PathGuard.checkPrintableASCII(Array("caf\u{e9}".utf8)) == nil)
        #expect(PathGuard.checkPrintableASCII(Array("a\u{7F}".utf8)) == nil)
        #expect(PathGuard.checkPrintableASCII([]) == nil)
    }
}
