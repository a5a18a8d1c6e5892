import Testing
import StockadeBundles
import StockadePolicy

private let h = String(repeating: "a", count: 64)
private func file(_ path: String, _ size: String = "1") -> String { #"{"path":"\#(path)","size":\#(size),"sha256":"\#(h)"}"# }
private func manifest(_ files: [String], _ extra: String = "") -> String { #"{"version":1,"files":[\#(files.joined(separator: ","))]\#(extra)}"# }

private var tight: BundleBounds {
    var b = BundleBounds()
    b.maxFiles = 3
    b.maxFileBytes = 100
    b.maxTotalBytes = 150
    b.maxPathLength = 20
    b.maxPathDepth = 3
    b.maxPatches = 1
    b.jsonDepth = 8
    b.manifestBytes = 2000
    return b
}

@Suite("Bundle manifest decoding")
struct BundleManifestTests {
    typealias Rule = BundleRejection.Rule

    static let refused: [(String, String, BundleRole, Rule)] = [
        ("version 2", #"{"version":2,"files":[]}"#, .result, .badManifest),
        ("version as a string", #"{"version":"1","files":[]}"#, .result, .badManifest),
        ("version 1.0", #"{"version":1.0,"files":[]}"#, .result, .badManifest),
        ("no version", #"{"files":[]}"#, .result, .badManifest),
        ("no files", #"{"version":1}"#, .result, .badManifest),
        ("not an object", #"[1]"#, .result, .badManifest),
        ("unknown top-level key", manifest([], #","extra":true"#), .result, .badManifest),
        ("unknown file key", manifest([#"{"path":"a","size":1,"sha256":"\#(h)","mode":"755"}"#]), .result, .badManifest),
        ("file without sha256", manifest([#"{"path":"a","size":1}"#]), .result, .badManifest),
        ("negative size", manifest([file("a", "-1")]), .result, .badManifest),
        ("fractional size", manifest([file("a", "1.5")]), .result, .badManifest),
        ("size with an exponent", manifest([file("a", "1e2")]), .result, .badManifest),
        ("size as a string", manifest([file("a", #""1""#)]), .result, .badManifest),
        ("absurd size", manifest([file("a", "99999999999999999999999999")]), .result, .tooLarge),
        ("size over maxFileBytes", manifest([file("a", "101")]), .result, .tooLarge),
        ("sizes adding up past maxTotalBytes", manifest([file("a", "100"), file("b", "51")]), .result, .tooLarge),
        ("uppercase hex digest", manifest([#"{"path":"a","size":1,"sha256":"\#(String(repeating: "A", count: 64))"}"#]), .result, .badManifest),
        ("short digest", manifest([#"{"path":"a","size":1,"sha256":"abc"}"#]), .result, .badManifest),
        ("more files than maxFiles", manifest([file("a"), file("b"), file("c"), file("d")]), .result, .tooManyFiles),
        ("absolute path", manifest([file("/etc/passwd")]), .result, .badPath),
        ("dot-dot component", manifest([file("a/../../x")]), .result, .badPath),
        ("dot component", manifest([file("./a")]), .result, .badPath),
        ("empty path", manifest([file("")]), .result, .badPath),
        ("empty component", manifest([file("a//b")]), .result, .badPath),
        ("trailing slash", manifest([file("a/")]), .result, .badPath),
        ("backslash", manifest([file(#"a\\b"#)]), .result, .badPath),
        ("NUL byte", manifest([file(#"a\u0000b"#)]), .result, .badPath),
        ("newline", manifest([file(#"a\nb"#)]), .result, .badPath),
        ("escape character", manifest([file(#"a\u001b[2Jb"#)]), .result, .badPath),
        ("DEL", manifest([file(#"a\u007f"#)]), .result, .badPath),
        ("C1 control", manifest([file(#"a\u0085"#)]), .result, .badPath),
        ("path longer than maxPathLength", manifest([file(String(repeating: "x", count: 21))]), .result, .badPath),
        ("path deeper than maxPathDepth", manifest([file("a/b/c/d")]), .result, .badPath),
        ("the manifest itself listed", manifest([file("manifest.json")]), .result, .badPath),
        ("a path listed twice", manifest([file("a"), file("a")]), .result, .duplicatePath),
        ("paths colliding by case", manifest([file("README"), file("readme")]), .result, .duplicatePath),
        ("paths colliding by Unicode case", manifest([file("\u{212A}"), file("k")]), .result, .duplicatePath),
        ("paths colliding by normalisation", manifest([file("\u{E9}"), file("e\u{301}")]), .result, .duplicatePath),
        ("a file that is also a directory", manifest([file("a"), file("a/b")]), .result, .duplicatePath),
        ("directories colliding by case", manifest([file("A/x"), file("a/y")]), .result, .duplicatePath),
        ("a patch that is not listed", manifest([file("a")], #","patches":["b"]"#), .result, .badManifest),
        ("an artifact that is not listed", manifest([file("a")], #","artifacts":["b"]"#), .result, .badManifest),
        ("an artifact named twice", manifest([file("a")], #","artifacts":["a","a"]"#), .result, .badManifest),
        ("a patch spelled in another normal form", manifest([file("\u{E9}")], #","patches":["e\#u{301}"]"#), .result, .badManifest),
        ("more patches than maxPatches", manifest([file("a"), file("b")], #","patches":["a","b"]"#), .result, .badManifest),
        ("command in a result", manifest([], #","command":["sh"]"#), .result, .badManifest),
        ("env in a result", manifest([], #","env":{"K":"V"}"#), .result, .badManifest),
        ("empty command", manifest([], #","command":[]"#), .request, .badManifest),
        ("command with a number", manifest([], #","command":["sh",1]"#), .request, .badManifest),
        ("empty program", manifest([], #","command":[""]"#), .request, .badManifest),
        ("env value not a string", manifest([], #","env":{"K":1}"#), .request, .badManifest),
        ("env key with '='", manifest([], #","env":{"A=B":"x"}"#), .request, .badManifest),
        ("env value with NUL", manifest([], #","env":{"K":"a\u0000"}"#), .request, .badManifest),
        ("duplicate key", #"{"version":1,"files":[],"files":[]}"#, .result, .badManifest),
        ("nesting bomb", #"{"version":1,"files":[],"env":"# + String(repeating: "[", count: 500), .request, .badManifest),
    ]

    @Test("manifests breaking a rule are refused with that rule", arguments: refused)
    func refuses(_ name: String, _ text: String, _ role: BundleRole, _ rule: Rule) {
        do {
            let m = try BundleManifest.parse(Array(text.utf8), bounds: tight, role: role)
            Issue.record("\(name): accepted \(m)")
        } catch {
            #expect(BundleRejection(error)?.rule == rule, "\(name): \(error)")
        }
    }

    @Test("a manifest larger than manifestBytes is too large, before parsing")
    func manifestTooLarge() {
        let text = manifest([file("a")]) + String(repeating: " ", count: 2000)
        #expect(throws: BundleError.self) { try BundleManifest.parse(Array(text.utf8), bounds: tight, role: .result) }
        do { _ = try BundleManifest.parse(Array(text.utf8), bounds: tight, role: .result) } catch {
            #expect(error.code == .tooLarge)
            #expect(error.path == "manifest.json")
        }
    }

    @Test("invalid UTF-8 inside a manifest is a bad manifest")
    func invalidUTF8() {
        var bytes = Array(manifest([file("ab")]).utf8)
        let at = bytes.firstIndex(of: UInt8(ascii: "b"))!
        bytes[at] = 0xC0
        bytes.insert(0xAF, at: at + 1)
        do {
            _ = try BundleManifest.parse(bytes, bounds: tight, role: .result)
            Issue.record("accepted invalid UTF-8")
        } catch {
            #expect(error.code == .badManifest)
            #expect(error.message.contains("invalid_utf8"))
        }
    }

    static let accepted: [(String, String, BundleRole)] = [
        ("empty file list", manifest([]), .result),
        ("nested paths, patches and artifacts", manifest([file("patches/x.diff"), file("out/r.txt", "0")], #","patches":["patches/x.diff"],"artifacts":["out/r.txt"]"#), .result),
        ("request with command and env", manifest([file("in")], #","command":["prog","arg"],"env":{"K":"V"}"#), .request),
        ("unicode names", manifest([file("caf\u{E9}"), file("日本")]), .result),
        ("three dots is a name", manifest([file("a/...")]), .result),
        ("size at the bound", manifest([file("a", "100"), file("b", "50")]), .result),
        ("path at the length and depth bounds", manifest([file("abcdefgh/ijklmnop/qr")]), .result),
    ]

    @Test("manifests within the rules decode, and re-encode to a manifest that decodes equal", arguments: accepted)
    func accepts(_ name: String, _ text: String, _ role: BundleRole) throws {
        let m = try BundleManifest.parse(Array(text.utf8), bounds: tight, role: role)
        #expect(try BundleManifest.parse(m.serialized, bounds: tight, role: role) == m, "\(name)")
    }

    @Test("decoded fields hold the manifest's values")
    func fields() throws {
        let text = manifest([file("p/x.diff", "7"), file("a", "0")], #","patches":["p/x.diff"],"artifacts":["a"],"command":["prog","arg"],"env":{"K":"V"}"#)
        let m = try BundleManifest.parse(Array(text.utf8), bounds: tight, role: .request)
        #expect(m.files == [.init(path: "p/x.diff", size: 7, sha256: h), .init(path: "a", size: 0, sha256: h)])
        #expect(m.patches == ["p/x.diff"])
        #expect(m.artifacts == ["a"])
        #expect(m.command == ["prog", "arg"])
        #expect(m.env == ["K": "V"])
        #expect(m.declaredBytes == 7)
    }

    @Test("a rejection names the offending entry with control bytes escaped")
    func entryIsEscaped() {
        do {
            _ = try BundleManifest.parse(Array(manifest([file(#"x\u001b]0;pwned\u0007"#)]).utf8), bounds: BundleBounds(), role: .result)
            Issue.record("accepted")
        } catch {
            #expect(error.code == .badPath)
            #expect(error.path == #"x\x1B]0;pwned\x07"#)
        }
    }
}
