import Glibc

/// Small bounded file reads and atomic writes for the supervisor's own files.
enum FileReading {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// Reads at most `limit` bytes of a regular file (without following a final symlink).
    static func read(_ path: String, limit: Int) throws(Failure) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
        guard fd >= 0 else { throw Failure(description: "cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
            throw Failure(description: "\(path) is not a regular file")
        }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw Failure(description: "cannot read \(path): \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            out += buffer[0..<n]
            if out.count > limit { throw Failure(description: "\(path) is larger than \(limit) bytes") }
        }
        return out
    }

    /// Writes `bytes` to `path` through a temporary file and a rename, so readers never see half a file.
    /// No fsync: these files survive a supervisor crash as they are; the audit database is the
    /// durable record, and an fsync per file tripled the cost of a short run.
    static func writeAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o600) throws(Failure) {
        let temp = path + ".tmp-\(getpid())"
        let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode)
        guard fd >= 0 else { throw Failure(description: "cannot create \(temp): \(String(cString: strerror(errno)))") }
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 {
                let e = errno
                close(fd)
                unlink(temp)
                throw Failure(description: "cannot write \(temp): \(String(cString: strerror(e)))")
            }
            offset += n
        }
        close(fd)
        guard rename(temp, path) == 0 else {
            let e = errno
            unlink(temp)
            throw Failure(description: "cannot rename \(temp) to \(path): \(String(cString: strerror(e)))")
        }
    }
}
