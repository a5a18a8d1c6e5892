import Glibc
import Synchronization

/// A new directory `BASE/stockade-LABEL-XXXXXX` (mkdtemp), for a fixture that keeps it. With
/// `untilExit`, it is removed when the test process exits: for a fixture whose files outlive the
/// value that made them (an open database).
public func makeScratchDirectory(_ label: String, base: String = "/tmp", untilExit: Bool = false) -> String {
    let usable = access(base, W_OK) == 0 ? base : "/tmp"
    var template = Array("\(usable)/stockade-\(label)-XXXXXX".utf8CString)
    let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    precondition(made != nil, "mkdtemp in \(usable) failed: errno \(errno)")
    let path = String(decoding: template.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    if untilExit {
        let first = removedAtExit.withLock { paths in
            paths.append(path)
            return paths.count == 1
        }
        if first {
            registeringProcess.store(getpid(), ordering: .relaxed)
            // Only in the process that made them: a forked child that calls exit() leaves them.
            atexit { if getpid() == registeringProcess.load(ordering: .relaxed) { removedAtExit.withLock { $0 }.forEach(removeTree) } }
        }
    }
    return path
}

/// Directories `makeScratchDirectory(untilExit: true)` made, removed by an `atexit` handler.
private let removedAtExit = Mutex<[String]>([])
private let registeringProcess = Atomic<Int32>(0)

/// Removes `path` and everything beneath it without following links, giving directories their
/// owner's permissions first (tests make mode-000 directories on purpose).
public func removeTree(_ path: String) {
    var st = stat()
    guard lstat(path, &st) == 0 else { return }
    guard st.st_mode & S_IFMT == S_IFDIR else { unlink(path); return }
    _ = chmod(path, 0o700)
    if let dir = opendir(path) {
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            if name != "." && name != ".." { names.append(name) }
        }
        closedir(dir)
        for name in names { removeTree(path + "/" + name) }
    }
    rmdir(path)
}

/// A test's scratch directory, removed with everything in it when the object goes away: the one
/// temporary-directory helper of the test targets (the workspace, bundle and patch fixtures build on it).
public final class ScratchDirectory: Sendable {
    public let path: String

    /// - Parameter base: where to make it; `/dev/shm` (tmpfs) makes creating many files fast.
    public init(_ label: String = "scratch", base: String = "/tmp") {
        path = makeScratchDirectory(label, base: base)
    }

    deinit { removeTree(path) }

    public subscript(_ relative: String) -> String { path + "/" + relative }

    /// `relative` and its parents (0755), the last with `mode`; its path.
    @discardableResult
    public func mkdir(_ relative: String, mode: mode_t = 0o755) throws -> String {
        var prefix = path
        for component in relative.split(separator: "/") {
            prefix += "/" + component
            if Glibc.mkdir(prefix, 0o755) != 0 && errno != EEXIST { throw ScratchError("mkdir \(prefix)") }
        }
        guard chmod(self[relative], mode) == 0 else { throw ScratchError("chmod \(relative)") }
        return self[relative]
    }

    /// A subdirectory (made with its parents); its path.
    public func sub(_ name: String) throws -> String { try mkdir(name) }

    public func write(_ relative: String, _ text: String, mode: mode_t = 0o644) throws {
        try write(relative, Array(text.utf8), mode: mode)
    }

    /// A new file `relative` (parents made) holding `bytes`, then `mode`.
    public func write(_ relative: String, _ bytes: [UInt8], mode: mode_t = 0o644) throws {
        if let slash = relative.lastIndex(of: "/") { try mkdir(String(relative[..<slash])) }
        let fd = open(self[relative], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw ScratchError("open \(relative)") }
        defer { close(fd) }
        let written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count, fchmod(fd, mode) == 0 else { throw ScratchError("write \(relative)") }
    }

    public func symlink(_ relative: String, to target: String) throws {
        guard Glibc.symlink(target, self[relative]) == 0 else { throw ScratchError("symlink \(relative)") }
    }

    public func fifo(_ relative: String) throws {
        guard mkfifo(self[relative], 0o644) == 0 else { throw ScratchError("mkfifo \(relative)") }
    }

    public func exists(_ relative: String) -> Bool {
        var st = stat()
        return lstat(self[relative], &st) == 0
    }

    /// The first 4 KiB of `relative` as text, or nil when it cannot be read.
    public func read(_ relative: String) -> String? {
        let fd = open(self[relative], O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        return count < 0 ? nil : String(decoding: buffer[0..<count], as: UTF8.self)
    }
}

/// A scratch operation failed, with the errno it failed with.
public struct ScratchError: Error, CustomStringConvertible {
    public let description: String
    public init(_ what: String) { description = "\(what): errno \(errno) (\(String(cString: strerror(errno))))" }
}
