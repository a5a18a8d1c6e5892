import Glibc
import StockadeTestSupport
import Testing

/// The shared scratch directory (StockadeTestSupport), with what only the workspace tests need.
typealias Scratch = ScratchDirectory

extension ScratchDirectory {
    /// A character device node; (0, 0) is an overlay whiteout. Needs CAP_MKNOD.
    func device(_ relative: String, major: UInt32 = 0, minor: UInt32 = 0, block: Bool = false) throws {
        let type = block ? S_IFBLK : S_IFCHR
        try #require(mknod(self[relative], type | 0o600, makeDevice(major, minor)) == 0, "mknod: errno \(errno)")
    }

    func setXattr(_ relative: String, _ name: String, _ value: String) throws {
        let bytes = Array(value.utf8)
        let result = bytes.withUnsafeBytes { XattrCalls.set(self[relative], name, $0.baseAddress, $0.count, 0) }
        try #require(result == 0, "setxattr \(name) on \(relative): errno \(errno)")
    }

    func openDirectory(_ relative: String) throws -> Int32 {
        let fd = open(self[relative], O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        try #require(fd >= 0, "open \(relative): errno \(errno)")
        return fd
    }
}

/// Runs a program and returns its exit status (or 128 + signal).
@discardableResult
func run(_ argv: [String]) throws -> Int32 {
    var pid = pid_t()
    let cArgs = argv.map { strdup($0) } + [nil]
    defer { cArgs.forEach { free($0) } }
    let spawned = posix_spawn(&pid, argv[0], nil, nil, cArgs, environ)
    try #require(spawned == 0, "posix_spawn \(argv[0]): \(spawned)")
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    let signal = status & 0x7f
    return signal == 0 ? (status >> 8) & 0xff : 128 + signal
}

let isRoot = getuid() == 0

func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

/// `makedev(3)`, a macro Swift cannot import.
func makeDevice(_ major: UInt32, _ minor: UInt32) -> dev_t {
    let major = UInt64(major), minor = UInt64(minor)
    let high: UInt64 = ((major & 0xfffff000) << 32) | ((minor & 0xffffff00) << 12)
    let low: UInt64 = ((major & 0xfff) << 8) | (minor & 0xff)
    return dev_t(high | low)
}

/// lsetxattr(2) and lgetxattr(2), looked up at run time: Swift's Glibc does not import
/// <sys/xattr.h>, and the tests need them only to build and inspect upper trees.
enum XattrCalls {
    typealias Set = @convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafeRawPointer?, Int, Int32) -> Int32
    typealias Get = @convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafeMutableRawPointer?, Int) -> Int
    static let set: Set = unsafeBitCast(dlsym(nil, "lsetxattr"), to: Set.self)
    static let get: Get = unsafeBitCast(dlsym(nil, "lgetxattr"), to: Get.self)
}
