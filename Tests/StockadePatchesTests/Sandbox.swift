import Glibc
@testable import StockadePatches
import StockadeTestSupport
import SystemPackage

/// A scratch directory holding `workspace/` and a sibling `canary/` with one file, so a test can prove
/// that nothing changed inside the workspace and nothing appeared next to it.
struct Sandbox: ~Copyable {
    /// The shared scratch directory (StockadeTestSupport), removed with the sandbox.
    private let scratch = ScratchDirectory("patches")
    var base: String { scratch.path }
    var workspace: String { base + "/workspace" }
    var canary: String { base + "/canary" }

    init() {
        mkdir(scratch.path + "/workspace", 0o755)
        mkdir(scratch.path + "/canary", 0o755)
        Self.write(scratch.path + "/canary/secret", Array("canary\n".utf8))
    }

    static func write(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode)
        precondition(fd >= 0, "cannot create \(path)")
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        fchmod(fd, mode)
        close(fd)
    }

    func file(_ relative: String, _ text: String, mode: mode_t = 0o644) {
        let path = workspace + "/" + relative
        Self.makeParents(path)
        Self.write(path, Array(text.utf8), mode: mode)
    }

    func bytes(_ relative: String, _ content: [UInt8], mode: mode_t = 0o644) {
        Self.makeParents(workspace + "/" + relative)
        Self.write(workspace + "/" + relative, content, mode: mode)
    }

    static func makeParents(_ path: String) {
        var components = path.split(separator: "/").dropLast()
        var current = ""
        while !components.isEmpty {
            current += "/" + components.removeFirst()
            mkdir(current, 0o755)
        }
    }

    func read(_ relative: String) -> [UInt8]? {
        let fd = open(workspace + "/" + relative, O_RDONLY | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            out += buffer[..<n]
        }
        return out
    }

    func mode(_ relative: String) -> mode_t? {
        var info = stat()
        guard lstat(workspace + "/" + relative, &info) == 0 else { return nil }
        return info.st_mode
    }

    /// Every entry under the sandbox (workspace and canary): path, type, permission bits, size, and the
    /// content or link target, sorted. Two equal snapshots mean the tree is byte-identical.
    func snapshot() -> [String] {
        var entries: [String] = []
        Self.walk(base, relative: "", into: &entries)
        return entries.sorted()
    }

    private static func walk(_ path: String, relative: String, into entries: inout [String]) {
        guard let dir = opendir(path) else { return }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name == "." || name == ".." { continue }
            let full = path + "/" + name, rel = relative + "/" + name
            var info = stat()
            guard lstat(full, &info) == 0 else { continue }
            switch info.st_mode & S_IFMT {
            case S_IFDIR:
                entries.append("dir \(rel) \(String(info.st_mode & 0o7777, radix: 8))")
                walk(full, relative: rel, into: &entries)
            case S_IFLNK:
                var target = [CChar](repeating: 0, count: 4097)
                let n = readlink(full, &target, 4096)
                entries.append("link \(rel) -> \(String(decoding: target[..<max(n, 0)].map { UInt8(bitPattern: $0) }, as: UTF8.self))")
            case S_IFREG:
                let fd = open(full, O_RDONLY | O_NOFOLLOW)
                var content: [UInt8] = []
                var buffer = [UInt8](repeating: 0, count: 65536)
                while fd >= 0 {
                    let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
                    if n <= 0 { break }
                    content += buffer[..<n]
                }
                if fd >= 0 { close(fd) }
                entries.append("file \(rel) \(String(info.st_mode & 0o7777, radix: 8)) \(content)")
            default:
                entries.append("other \(rel) \(String(info.st_mode, radix: 8))")
            }
        }
    }

}
