import Foundation
import Glibc
import StockadeBundles
import StockadePolicy
import StockadeTestSupport

/// The shared scratch directory (StockadeTestSupport).
typealias Scratch = ScratchDirectory

enum Tree {
    static func write(_ path: String, _ contents: [UInt8]) throws {
        let parent = (path as NSString).deletingLastPathComponent
        try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
        guard FileManager.default.createFile(atPath: path, contents: Data(contents)) else { throw POSIXError(.EIO) }
    }

    static func write(_ path: String, _ text: String) throws { try write(path, Array(text.utf8)) }

    static func read(_ path: String) -> [UInt8]? {
        FileManager.default.contents(atPath: path).map { Array($0) }
    }

    /// Every path beneath `root` (relative), sorted, without following links.
    static func listing(_ root: String) -> [String] {
        (FileManager.default.enumerator(atPath: root)?.allObjects as? [String] ?? []).sorted()
    }

    static func mkfifo(_ path: String) throws {
        guard Glibc.mkfifo(path, 0o644) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    }

    /// A bound Unix socket at `path` (the fd is closed; the socket file stays).
    static func socket(_ path: String) throws {
        let fd = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw POSIXError(.ENAMETOOLONG) }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        let status = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard status == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    }
}

/// Reads the bundle at `path`, copying into `copyTo` when given.
func readBundle(_ path: String, bounds: BundleBounds = BundleBounds(), role: BundleRole = .result, copyTo: String? = nil) -> BundleVerdict {
    let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    precondition(fd >= 0, "cannot open \(path)")
    defer { close(fd) }
    var destination: Int32?
    if let copyTo {
        destination = open(copyTo, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        precondition(destination! >= 0, "cannot open \(copyTo)")
    }
    defer { if let destination { close(destination) } }
    return BundleReader.read(directory: fd, bounds: bounds, role: role, copyTo: destination)
}

extension BundleVerdict {
    var rejection: BundleRejection? {
        if case .rejected(let r) = self { return r }
        return nil
    }

    var verified: VerifiedBundle? {
        if case .accepted(let v) = self { return v }
        return nil
    }
}

/// A manifest JSON text for `files` as they are (sizes and hashes computed), with overrides.
func manifestText(_ entries: [(path: String, size: Int, sha256: String)], extra: String = "") -> String {
    let files = entries.map { #"{"path":"\#($0.path)","size":\#($0.size),"sha256":"\#($0.sha256)"}"# }
    return #"{"version":1,"files":[\#(files.joined(separator: ","))]\#(extra)}"#
}

let zeroHash = String(repeating: "0", count: 64)
