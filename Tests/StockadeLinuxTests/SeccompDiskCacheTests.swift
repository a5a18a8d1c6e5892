import Foundation
import Glibc
import StockadePolicy
import Synchronization
import Testing
@testable import StockadeLinux

@Suite("compiled seccomp programs kept on disk")
struct SeccompDiskCacheTests {
    /// Each call's errno, distinct within the process (two random picks once collided: the "other"
    /// policy had the same key), from a random start so two runs of the suite share no file names.
    static let nextErrno = Mutex(Int32.random(in: 1000...3000))

    /// A policy of its own for each call, so this process's in-memory cache never answers for it.
    func policy() -> SeccompPolicy {
        let errno = Self.nextErrno.withLock { value in
            defer { value += 1 }
            return value
        }
        return SeccompPolicy(defaultAction: .errno(1), badArchAction: .killProcess,
                             rules: [.init("read", .allow), .init("write", .allow), .init("exit_group", .allow),
                                     .init("ioctl", .allow, [.init(argument: 1, .maskedEqual(mask: 0xffff), 0x5401)]),
                                     .init("openat", .errno(errno))])
    }

    func directory() throws -> (root: String, cache: SeccompDiskCache) {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("seccomp-cache-\(UUID().uuidString)").path
        #expect(mkdir(root, 0o700) == 0)
        return (root, SeccompDiskCache(directory: root + "/seccomp"))
    }

    func file(_ cache: SeccompDiskCache, _ policy: SeccompPolicy) throws -> String {
        cache.directory + "/" + SeccompDiskCache.name(try #require(SeccompDiskCache.key(policy)))
    }

    @Test("a compile writes the program with its whole key, mode 0600; a load gives back exactly what libseccomp compiles")
    func roundTrip() throws {
        let (root, cache) = try directory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let p = policy()
        let compiled = try SeccompCompiler.compile(p, disk: cache)
        #expect(compiled == (try SeccompCompiler.compileUncached(p)))
        let path = try file(cache, p)
        var st = stat()
        #expect(lstat(path, &st) == 0 && st.st_mode & 0o7777 == 0o600 && st.st_uid == geteuid())
        #expect(lstat(cache.directory, &st) == 0 && st.st_mode & 0o7777 == 0o700)
        let key = try #require(SeccompDiskCache.key(p))
        #expect(cache.load(key) == compiled)
        // Another policy has another key, and is not answered by this file even under its name.
        let other = policy()
        let otherKey = try #require(SeccompDiskCache.key(other))
        #expect(otherKey != key)
        #expect(cache.load(otherKey) == nil)
        try FileManager.default.copyItem(atPath: path, toPath: try file(cache, other))
        #expect(cache.load(otherKey) == nil, "the key inside is compared, not the name")
        // Unknown names make no key: the compiler reports them.
        #expect(SeccompDiskCache.key(SeccompPolicy(defaultAction: .allow, badArchAction: .killProcess, rules: [.init("no_such_call", .errno(1))])) == nil)
    }

    @Test("a file that is not the supervisor's own, writable by others, a link, cut short or in an unsafe directory is not read, and is replaced")
    func unsafeFilesIgnored() throws {
        let (root, cache) = try directory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let p = policy()
        let key = try #require(SeccompDiskCache.key(p))
        let good = try SeccompCompiler.compile(p, disk: cache)
        let path = try file(cache, p)
        let original = try Data(contentsOf: URL(fileURLWithPath: path))
        #expect(cache.load(key) == good, "control: the file as written is read")
        func restore() throws {
            try? FileManager.default.removeItem(atPath: path)
            try original.write(to: URL(fileURLWithPath: path))
            #expect(chmod(path, 0o600) == 0)
            #expect(cache.load(key) == good)
        }
        #expect(chmod(path, 0o620) == 0)
        #expect(cache.load(key) == nil, "group-writable")
        #expect(chmod(path, 0o602) == 0)
        #expect(cache.load(key) == nil, "writable by others")
        #expect(chmod(path, 0o600) == 0 && chown(path, 4242, 4242) == 0)
        #expect(cache.load(key) == nil, "another owner")
        try restore()
        try original.dropLast(8).write(to: URL(fileURLWithPath: path))
        #expect(cache.load(key) == nil, "cut short")
        try restore()
        try (original + Data([0, 0, 0, 0, 0, 0, 0, 0])).write(to: URL(fileURLWithPath: path))
        #expect(cache.load(key) == nil, "longer than it says")
        try FileManager.default.removeItem(atPath: path)
        let elsewhere = root + "/elsewhere.bpf"
        try original.write(to: URL(fileURLWithPath: elsewhere))
        #expect(chmod(elsewhere, 0o600) == 0 && symlink(elsewhere, path) == 0)
        #expect(cache.load(key) == nil, "a link")
        try restore()
        #expect(chmod(cache.directory, 0o777) == 0)
        #expect(cache.load(key) == nil, "a directory others may write")
        #expect(chmod(cache.directory, 0o700) == 0)
        #expect(cache.load(key) == good)
        // A refused file is replaced by the next compile of the policy (a fresh process's: here the
        // uncached path through `store`).
        #expect(chmod(path, 0o666) == 0)
        cache.store(key, try SeccompCompiler.compileUncached(p))
        var st = stat()
        #expect(lstat(path, &st) == 0 && st.st_mode & 0o7777 == 0o600)
        #expect(cache.load(key) == good)
    }

    @Test("at most 64 programs are kept, the oldest removed first")
    func bounded() throws {
        let (root, cache) = try directory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let program = SeccompProgram(bytes: [6, 0, 0, 0, 0, 0, 0xff, 0x7f])
        var keys: [[UInt8]] = []
        for i in 0..<(SeccompDiskCache.maxFiles + 6) {
            let key = Array("key \(i)\n".utf8)
            keys.append(key)
            cache.store(key, program)
            // Distinct modification times, oldest first.
            var times = [timespec(tv_sec: 1_000_000 + i, tv_nsec: 0), timespec(tv_sec: 1_000_000 + i, tv_nsec: 0)]
            #expect(utimensat(AT_FDCWD, cache.directory + "/" + SeccompDiskCache.name(key), &times, 0) == 0)
        }
        let names = try FileManager.default.contentsOfDirectory(atPath: cache.directory)
        #expect(names.count == SeccompDiskCache.maxFiles, "\(names.count)")
        #expect(cache.load(keys.last!) == program)
        #expect(cache.load(keys[0]) == nil && cache.load(keys[4]) == nil, "the oldest went first")
    }
}
