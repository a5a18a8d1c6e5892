import Foundation
import Glibc

/// What tests of several targets share: where the repository is, fresh directories, files with a mode.
public enum TestPaths {
    /// The repository's root (for Profiles/, Fixtures/, docs/), from this file's path.
    public static let projectRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url = url.deletingLastPathComponent() }
        return url.path
    }()
}

/// A fresh directory under /tmp, removed by the caller.
public func temporaryDirectory(_ tag: String) throws -> String {
    let path = "/tmp/stockade-\(tag)-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// `text` into a new file at `path`, then its mode (a secret's 0600, a refused 0644...).
public func write(_ text: String, to path: String, mode: Int) throws {
    try Data(text.utf8).write(to: URL(fileURLWithPath: path))
    chmod(path, mode_t(mode))
}
