@testable import StockadePatches
import Testing

/// A small deterministic generator (SplitMix64) so every failure reproduces from its seed.
struct SeededRandom: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

enum RandomContent {
    /// Lines from a small vocabulary (so that edits find common lines), sometimes without a final newline,
    /// sometimes binary.
    static func file(_ random: inout SeededRandom) -> [UInt8] {
        if Int.random(in: 0..<12, using: &random) == 0 {
            return (0..<Int.random(in: 0..<64, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
        }
        let vocabulary = ["alpha", "beta", "gamma", "", "  indented", "}", "{", "return x", "caf\u{e9}", "tab\there", "cr\r"]
        var text = (0..<Int.random(in: 0..<40, using: &random)).map { _ in vocabulary.randomElement(using: &random) ?? "" }.joined(separator: "\n")
        if !text.isEmpty && Bool.random(using: &random) { text += "\n" }
        return Array(text.utf8)
    }

    /// `old` with random line insertions, deletions and replacements.
    static func edit(_ old: [UInt8], _ random: inout SeededRandom) -> [UInt8] {
        if DiffWriter.isBinary(old) || Int.random(in: 0..<10, using: &random) == 0 { return file(&random) }
        var lines = old.split(separator: 0x0A, omittingEmptySubsequences: false).map { Array($0) }
        for _ in 0..<Int.random(in: 0..<6, using: &random) {
            let position = Int.random(in: 0...lines.count, using: &random)
            switch Int.random(in: 0..<3, using: &random) {
            case 0: lines.insert(Array("inserted \(random.next() % 5)".utf8), at: position)
            case 1: if position < lines.count { lines.remove(at: position) }
            default: if position < lines.count { lines[position] = Array("replaced \(random.next() % 5)".utf8) }
            }
        }
        return Array(lines.joined(separator: [0x0A]))
    }
}

@Suite("Writer and parser round trip")
struct RoundTripTests {
    @Test("parse(fileDiff(old, new)) applied to old gives new, for 2000 random pairs", arguments: 0..<4)
    func randomPairsRoundTrip(batch: Int) throws {
        var random = SeededRandom(state: UInt64(batch) &* 7919 &+ 1)
        for case_ in 0..<500 {
            let old = RandomContent.file(&random)
            let new = RandomContent.edit(old, &random)
            let diff = DiffWriter.fileDiff(path: "dir/f\(case_).txt", old: old, new: new, oldMode: 0o100644, newMode: 0o100644)
            if old == new { #expect(diff.isEmpty); continue }
            let set = try DiffParser.parse(diff)
            let file = try #require(set.files.first)
            #expect(PathGuard.check(set) == .ok)
            let result: [UInt8]
            if let binary = file.binary {
                #expect(binary.oldContent == old)
                result = binary.newContent
            } else {
                result = try PatchApplier.applyHunks(file.hunks, to: old, path: "f")
            }
            #expect(result == new, "seed batch \(batch) case \(case_)")
        }
    }

    @Test("random creations, deletions and modifications round trip through the real workspace")
    func randomPairsThroughTheFilesystem() throws {
        var random = SeededRandom(state: 42)
        for case_ in 0..<40 {
            let sandbox = Sandbox()
            let kind = case_ % 3
            let old = kind == 1 ? nil : RandomContent.file(&random)
            let new = kind == 2 ? nil : RandomContent.edit(old ?? [], &random)
            let path = "n\(case_)/file"
            if let old { sandbox.bytes(path, old) }
            let diff = DiffWriter.fileDiff(path: path, old: old, new: new, oldMode: nil, newMode: nil)
            if diff.isEmpty { continue }
            try PatchApplier.apply(try DiffParser.parse(diff), workspaceRoot: sandbox.workspace)
            #expect(sandbox.read(path) == new, "case \(case_)")
        }
    }

    @Test("edit scripts are minimal on small inputs, checked against an LCS table")
    func editScriptIsMinimal() {
        var random = SeededRandom(state: 7)
        for _ in 0..<300 {
            let a = (0..<Int.random(in: 0..<30, using: &random)).map { _ in Int.random(in: 0..<4, using: &random) }
            let b = (0..<Int.random(in: 0..<30, using: &random)).map { _ in Int.random(in: 0..<4, using: &random) }
            let edits = DiffWriter.editScript(a, b)
            var table = [[Int]](repeating: [Int](repeating: 0, count: b.count + 1), count: a.count + 1)
            for i in stride(from: a.count - 1, through: 0, by: -1) {
                for j in stride(from: b.count - 1, through: 0, by: -1) {
                    table[i][j] = a[i] == b[j] ? table[i + 1][j + 1] + 1 : max(table[i + 1][j], table[i][j + 1])
                }
            }
            #expect(edits.filter { $0 == .equal }.count == table[0][0])
        }
    }

    @Test("names git would quote are quoted and come back unchanged")
    func quotedNamesRoundTrip() throws {
        for name in ["sp ace.txt", "caf\u{e9}/na\u{ef}ve.txt", "quote\"d", "back\\slash", "\u{1F600}.md"] {
            let diff = DiffWriter.fileDiff(path: name, old: nil, new: Array("x\n".utf8), oldMode: nil, newMode: nil)
            let header = String(decoding: diff.prefix(while: { $0 != 0x0A }), as: UTF8.self)
            #expect(header.contains("\"") == CQuote.needsQuoting(Array(name.utf8)))
            let file = try #require(try DiffParser.parse(diff).files.first)
            #expect(file.targetPath == Array(name.utf8))
        }
    }

    @Test("a large rewrite beyond the edit-distance bound still round trips")
    func largeRewrite() throws {
        let old = Array((0..<6000).map { "old \($0)\n" }.joined().utf8)
        let new = Array((0..<6000).map { "new \($0)\n" }.joined().utf8)
        let file = try #require(try DiffParser.parse(DiffWriter.fileDiff(path: "big", old: old, new: new, oldMode: nil, newMode: nil)).files.first)
        #expect(try PatchApplier.applyHunks(file.hunks, to: old, path: "big") == new)
    }

    @Test("base85 and zlib round trip and reject non-canonical padding")
    func base85RoundTrip() {
        var random = SeededRandom(state: 3)
        for length in [0, 1, 3, 4, 5, 51, 52, 53, 200] {
            let data = (0..<length).map { _ in UInt8.random(in: 0...255, using: &random) }
            let lines = Base85.encodeLines(data).split(separator: 0x0A)
            #expect(Array(lines.compactMap { Base85.decodeLine($0) }.joined()) == data)
            #expect(Zlib.inflate(Zlib.deflate(data), expectedSize: data.count) == data)
            #expect(Zlib.inflate(Zlib.deflate(data), expectedSize: data.count + 1) == nil)
        }
    }
}
