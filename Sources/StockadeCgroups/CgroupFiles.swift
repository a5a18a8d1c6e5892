import Glibc

/// Reading and writing cgroupfs interface files, and the few directory operations the drivers need.
///
/// Every read is bounded while reading: the files come from the kernel, but a driver pointed at the wrong
/// tree (or a fake one) must not grow the supervisor without bound.
enum CgroupFiles {
    /// Enough for any single-value or keyed interface file.
    static let smallFileLimit = 64 << 10
    /// Enough for `cgroup.procs` of a run cgroup: pids are at most 7 digits plus a newline, and runs are
    /// limited to far fewer processes than this allows (about 130,000).
    static let procsFileLimit = 1 << 20

    /// Writes `value` with one `write(2)`, as cgroupfs expects; the file must already exist (the kernel
    /// creates interface files with the directory, so a missing file means a missing controller).
    static func write(_ value: String, to path: String) throws(CgroupError) {
        let fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else {
            let err = errno
            throw CgroupError(.fileSystem, path: path, errno: err, "cannot open the cgroup interface file for writing: \(String(cString: strerror(err)))")
        }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        var written = -1
        repeat {
            written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        } while written < 0 && errno == EINTR
        guard written == bytes.count else {
            let err = written < 0 ? errno : EIO
            throw CgroupError(.fileSystem, path: path, errno: err, "the kernel refused the value '\(value)': \(String(cString: strerror(err)))")
        }
    }

    /// The file's text, or nil if it cannot be opened or read. Reading stops at `limit` bytes.
    static func read(_ path: String, limit: Int = smallFileLimit) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while data.count < limit {
            let want = min(chunk.count, limit - data.count)
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, want) }
            if n < 0 {
                if errno == EINTR { continue }
                return nil
            }
            if n == 0 { break }
            data.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: data, as: UTF8.self)
    }

    static func exists(_ path: String) -> Bool {
        access(path, F_OK) == 0
    }

    /// A file holding one unsigned number (`memory.max_usage_in_bytes`, `cpuacct.usage`, `memory.peak`).
    static func readNumber(_ path: String) -> UInt64? {
        read(path).flatMap { UInt64($0.trimmingWhitespace) }
    }

    /// The value of `key` in a flat keyed file of `key value` lines (`cpu.stat`, `memory.events`,
    /// `pids.events`, `memory.oom_control`, `cgroup.events`).
    static func readKeyed(_ path: String, key: String) -> UInt64? {
        guard let text = read(path) else { return nil }
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            if fields.count == 2, fields[0] == key { return UInt64(fields[1]) }
        }
        return nil
    }

    /// The pids listed in a `cgroup.procs` file; empty when it cannot be read.
    static func readPids(_ path: String) -> [Int32] {
        guard let text = read(path, limit: procsFileLimit) else { return [] }
        return text.split(separator: "\n").compactMap { Int32($0) }.filter { $0 > 0 }
    }

    /// Makes a directory; returns false if it already existed.
    static func makeDirectory(_ path: String) throws(CgroupError) -> Bool {
        if mkdir(path, 0o755) == 0 { return true }
        let err = errno
        if err == EEXIST { return false }
        throw CgroupError(.fileSystem, path: path, errno: err, "cannot create the cgroup directory: \(String(cString: strerror(err)))")
    }

    /// Makes a directory in `parent`, making `parent` first if it is missing; returns false if the
    /// directory already existed. One `mkdir` when the parent exists, as it does after the first run.
    static func makeDirectory(_ path: String, parent: String) throws(CgroupError) -> Bool {
        do throws(CgroupError) {
            return try makeDirectory(path)
        } catch where error.errno == ENOENT {
            _ = try makeDirectory(parent)
            return try makeDirectory(path)
        }
    }

    /// Names of the subdirectories of `path` (not following symlinks); empty if it cannot be listed.
    ///
    /// The entry's type comes from `readdir` (cgroupfs, tmpfs and ext4 all fill `d_type`): a v1
    /// hierarchy's parent holds some thirty interface files beside the run cgroups, and an `lstat` of
    /// each was most of a one-shot supervisor's stale scan. Only an entry of unknown type is looked at.
    static func subdirectories(_ path: String) -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard name != ".", name != ".." else { continue }
            switch Int(entry.pointee.d_type) {
            case Int(DT_DIR):
                names.append(name)
            case Int(DT_UNKNOWN):
                var st = stat()
                if lstat(path + "/" + name, &st) == 0, st.st_mode & S_IFMT == S_IFDIR { names.append(name) }
            default:
                continue  // a file or a link: never a run cgroup
            }
        }
        return names.sorted()
    }

    /// Opens a descriptor; throws with the path and errno when it cannot.
    static func openDescriptor(_ path: String, flags: Int32, what: String) throws(CgroupError) -> Int32 {
        let fd = open(path, flags | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else {
            let err = errno
            throw CgroupError(.fileSystem, path: path, errno: err, "cannot open \(what): \(String(cString: strerror(err)))")
        }
        return fd
    }
}

extension StringProtocol {
    var trimmingWhitespace: Substring {
        let s = self[...]
        guard let first = s.firstIndex(where: { !$0.isWhitespace }), let last = s.lastIndex(where: { !$0.isWhitespace }) else {
            return Substring()
        }
        return Substring(s[first...last])
    }
}
