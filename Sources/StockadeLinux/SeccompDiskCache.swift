import CSeccomp
import Glibc
import StockadePolicy
import CStockade

/// Compiled seccomp programs kept under the state directory (`<state>/seccomp/`), so that a
/// one-shot `stockade run` does not compile its profile's filter again at every start (libseccomp
/// takes about 1.5 ms for the default policy of some 350 rules; a supervisor that runs many workers
/// keeps its programs in memory as well).
///
/// A file is used only when it is exactly what this process would compile: it holds the whole key
/// (the resolved rules, actions, comparisons and attributes, the libseccomp version, the native
/// architecture and this cache's revision), compared byte for byte, never a hash alone. A file that
/// is not a regular file, not owned by this process's user, writable by its group or by others, of
/// another size than it says, or in a directory that is any of those, is not read: the program is
/// compiled and the file replaced. The state directory is the supervisor's (mode 0700, its user):
/// whoever can write in it can already change the audit store and every run's files, so the cache
/// adds no one to those who can weaken a filter (THREAT-MODEL, class 7).
///
/// Hand-written rather than a library: the layout is a few fields, and what matters is the checks.
public struct SeccompDiskCache: Sendable {
    public let directory: String
    /// Files kept at most; the oldest are removed past it.
    static let maxFiles = 64
    /// Changed whenever `SeccompCompiler.compileUncached` would compile a policy differently.
    static let revision = 1
    static let magic = Array("STKBPF1\n".utf8)
    static let maxFileBytes = 1 << 20

    public init(directory: String) {
        self.directory = directory
    }

    /// The bytes that identify what `policy` compiles to; nil when a syscall name is unknown (the
    /// compiler reports it).
    static func key(_ policy: SeccompPolicy) -> [UInt8]? {
        var text = "stockade seccomp cache \(revision)\n"
        if let v = seccomp_version() {
            text += "libseccomp \(v.pointee.major).\(v.pointee.minor).\(v.pointee.micro)\n"
        }
        text += "arch \(seccomp_arch_native()) optimize 2\n"
        text += "default \(SeccompCompiler.action(policy.defaultAction)) badarch \(SeccompCompiler.action(policy.badArchAction))\n"
        for rule in policy.rules where rule.action != policy.defaultAction {
            guard let nr = SeccompCompiler.syscallNumber(rule.syscall) else { return nil }
            text += "\(nr) \(SeccompCompiler.action(rule.action))"
            for c in rule.comparisons {
                let op: String
                var a = c.value, b: UInt64 = 0
                switch c.op {
                case .equal: op = "eq"
                case .notEqual: op = "ne"
                case .less: op = "lt"
                case .lessOrEqual: op = "le"
                case .greater: op = "gt"
                case .greaterOrEqual: op = "ge"
                case .maskedEqual(let mask):
                    op = "me"
                    a = mask
                    b = c.value
                }
                text += " \(c.argument):\(op):\(a):\(b)"
            }
            text += "\n"
        }
        return Array(text.utf8)
    }

    /// The file's name: FNV-1a of the key (the key itself is inside and compared).
    static func name(_ key: [UInt8]) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in key { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3 }
        let hex = String(hash, radix: 16)
        return String(repeating: "0", count: 16 - hex.count) + hex + ".bpf"
    }

    /// The directory, opened without following a link, if it is this user's and not writable by
    /// others.
    private func openDirectory() -> Int32? {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_uid == geteuid(), st.st_mode & 0o022 == 0 else {
            close(fd)
            return nil
        }
        return fd
    }

    /// The program stored for `key`, or nil (no file, or one that fails a check).
    func load(_ key: [UInt8]) -> SeccompProgram? {
        guard let dir = openDirectory() else { return nil }
        defer { close(dir) }
        let fd = openat(dir, Self.name(key), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG, st.st_uid == geteuid(), st.st_mode & 0o022 == 0,
              st.st_size > 16, st.st_size <= Self.maxFileBytes else { return nil }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        var got = 0
        while got < bytes.count {
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + got, $0.count - got, off_t(got)) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { return nil }
            got += n
        }
        guard Array(bytes[0..<8]) == Self.magic else { return nil }
        func u32(_ at: Int) -> Int { Int(bytes[at]) | Int(bytes[at + 1]) << 8 | Int(bytes[at + 2]) << 16 | Int(bytes[at + 3]) << 24 }
        let keyLength = u32(8), programLength = u32(12)
        guard keyLength == key.count, programLength > 0, programLength % 8 == 0, programLength / 8 <= 4096,
              16 + keyLength + programLength == bytes.count, bytes[16..<16 + keyLength].elementsEqual(key) else { return nil }
        return SeccompProgram(bytes: Array(bytes[(16 + keyLength)...]))
    }

    /// Stores `program` for `key`: written to a new file in the directory and renamed over the old
    /// one, so a reader sees a whole file or none. Best effort: a cache that cannot be written costs
    /// the next run a compile, nothing else.
    func store(_ key: [UInt8], _ program: SeccompProgram) {
        if mkdir(directory, 0o700) != 0, errno != EEXIST { return }
        guard let dir = openDirectory() else { return }
        defer { close(dir) }
        func le32(_ v: Int) -> [UInt8] { [UInt8(v & 0xff), UInt8(v >> 8 & 0xff), UInt8(v >> 16 & 0xff), UInt8(v >> 24 & 0xff)] }
        let bytes = Self.magic + le32(key.count) + le32(program.bytes.count) + key + program.bytes
        let random = UInt64.random(in: 0 ... .max)
        let temporary = ".new-\(getpid())-\(String(random, radix: 16))"
        let fd = openat(dir, temporary, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        var written = 0
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + written, $0.count - written) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { break }
            written += n
        }
        let complete = written == bytes.count && fchmod(fd, 0o600) == 0
        close(fd)
        guard complete, renameat(dir, temporary, dir, Self.name(key)) == 0 else {
            _ = unlinkat(dir, temporary, 0)
            return
        }
        prune(dir, keeping: Self.name(key))
    }

    /// Removes the oldest files past `maxFiles`, and leftovers of writers that died (`.new-*` older
    /// than a minute).
    private func prune(_ dir: Int32, keeping: String) {
        let listing = dup(dir)
        guard listing >= 0, let stream = fdopendir(listing) else {
            if listing >= 0 { close(listing) }
            return
        }
        defer { closedir(stream) }
        var files: [(name: String, modified: Int)] = []
        let now = time(nil)
        while let entry = readdir(stream) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name != ".", name != ".." else { continue }
            var st = stat()
            guard fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else { continue }
            if name.hasPrefix(".new-") {
                if now - st.st_mtim.tv_sec > 60 { _ = unlinkat(dir, name, 0) }
            } else if name != keeping {
                files.append((name, st.st_mtim.tv_sec))
            }
        }
        guard files.count + 1 > Self.maxFiles else { return }
        for file in files.sorted(by: { $0.modified < $1.modified }).prefix(files.count + 1 - Self.maxFiles) {
            _ = unlinkat(dir, file.name, 0)
        }
    }
}
