import CStockade
import Glibc
import SystemPackage

/// Small descriptor-relative file operations shared by the workspace scanner and run-directory
/// garbage collection. Every path they take is one name (or a name chain) relative to a directory
/// descriptor; nothing here ever follows a symbolic link.
enum DirectoryEntries {
    /// The file type bits of a `stat` mode.
    enum Kind: Equatable {
        case regular, directory, symlink, fifo, socket, blockDevice, characterDevice, unknown

        init(mode: mode_t) {
            switch mode & S_IFMT {
            case S_IFREG: self = .regular
            case S_IFDIR: self = .directory
            case S_IFLNK: self = .symlink
            case S_IFIFO: self = .fifo
            case S_IFSOCK: self = .socket
            case S_IFBLK: self = .blockDevice
            case S_IFCHR: self = .characterDevice
            default: self = .unknown
            }
        }

        var name: String {
            switch self {
            case .regular: "regular"
            case .directory: "directory"
            case .symlink: "symlink"
            case .fifo: "fifo"
            case .socket: "socket"
            case .blockDevice: "block-device"
            case .characterDevice: "char-device"
            case .unknown: "unknown"
            }
        }
    }

    static func describe(_ code: Int32) -> String {
        String(cString: strerror(code))
    }

    /// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`; nil when the name does not exist.
    static func lstatAt(_ dir: Int32, _ name: String) -> Result<stat?, Errno> {
        var st = stat()
        if fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0 { return .success(st) }
        let code = errno
        if code == ENOENT { return .success(Optional<stat>.none) }
        return .failure(Errno(rawValue: code))
    }

    /// Opens `name` beneath `dir` for reading with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
    /// RESOLVE_NO_MAGICLINKS)`, `O_NOFOLLOW | O_NONBLOCK`, and checks with `fstat` that what was
    /// opened is the inode `expected` (from an earlier `fstatat`) and of the wanted type, so that an
    /// entry swapped between the two looks is noticed instead of read.
    static func openVerified(_ dir: Int32, _ name: String, expected: stat, directory: Bool) -> Result<Int32, Errno> {
        var flags = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY
        if directory { flags |= O_DIRECTORY }
        let resolve = UInt64(STK_RESOLVE_BENEATH | STK_RESOLVE_NO_SYMLINKS | STK_RESOLVE_NO_MAGICLINKS)
        var fd: Int32
        repeat { fd = stk_openat2(dir, name, UInt64(flags), 0, resolve) } while fd < 0 && errno == EINTR
        if fd < 0 { return .failure(Errno(rawValue: errno)) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let code = errno
            close(fd)
            return .failure(Errno(rawValue: code))
        }
        let wanted = directory ? S_IFDIR : S_IFREG
        guard st.st_mode & S_IFMT == wanted, st.st_dev == expected.st_dev, st.st_ino == expected.st_ino else {
            close(fd)
            return .failure(Errno(rawValue: ESTALE))
        }
        return .success(fd)
    }

    /// Reads up to `limit` names from the directory open at `fd` (skipping `.` and `..`), as raw
    /// bytes; `truncated` says more were there, and the caller decides what "too many" means. The
    /// descriptor is left open; its offset is rewound first so a directory can be listed again.
    static func names(_ fd: Int32, limit: Int) -> Result<(names: [[UInt8]], truncated: Bool), Errno> {
        let copy = dup(fd)
        if copy < 0 { return .failure(Errno(rawValue: errno)) }
        guard let dirp = fdopendir(copy) else {
            let code = errno
            close(copy)
            return .failure(Errno(rawValue: code))
        }
        defer { closedir(dirp) }
        rewinddir(dirp)
        var result: [[UInt8]] = []
        while true {
            errno = 0
            guard let entry = readdir(dirp) else {
                if errno != 0 { return .failure(Errno(rawValue: errno)) }
                return .success((result, false))
            }
            let name: [UInt8] = withUnsafeBytes(of: &entry.pointee.d_name) { raw in
                let bytes = raw.bindMemory(to: UInt8.self)
                let length = bytes.firstIndex(of: 0) ?? bytes.count
                return Array(bytes[0..<length])
            }
            if name == [0x2E] || name == [0x2E, 0x2E] { continue }
            if result.count == limit { return .success((result, true)) }
            result.append(name)
        }
    }

    /// Reads the whole file open at `fd`, failing with `nil` as soon as more than `limit` bytes
    /// arrive: the size is learned by reading, never from `st_size`, which a sparse or growing file
    /// can make lie.
    static func readAll(_ fd: Int32, limit: Int64) -> Result<[UInt8]?, Errno> {
        precondition(limit >= 0, "readAll: a negative limit")
        var content: [UInt8] = []
        let chunk = 64 * 1024
        // Read into one scratch buffer and copied out: growing `content` by a chunk of zeros per read
        // costs an element-by-element loop in a debug build (29 ms a small file, minutes for a
        // workspace of a few thousand new files).
        var scratch = [UInt8](repeating: 0, count: Int(min(Int64(chunk), max(limit, 0) + 1)))
        while true {
            let want = Int(min(Int64(scratch.count), limit - Int64(content.count) + 1))
            var got: Int
            repeat {
                got = scratch.withUnsafeMutableBytes { read(fd, $0.baseAddress, want) }
            } while got < 0 && errno == EINTR
            if got < 0 { return .failure(Errno(rawValue: errno)) }
            if got == 0 { return .success(content) }
            content.append(contentsOf: scratch[0..<got])
            if Int64(content.count) > limit { return .success(Optional<[UInt8]>.none) }
        }
    }

    /// The names of the extended attributes on `fd`, read into a bounded buffer.
    static func xattrNames(_ fd: Int32) -> Result<[String], Errno> {
        var buffer = [CChar](repeating: 0, count: 64 * 1024)
        let length = buffer.withUnsafeMutableBufferPointer { stk_flistxattr(fd, $0.baseAddress, $0.count) }
        if length < 0 { return errno == ENOTSUP ? .success([]) : .failure(Errno(rawValue: errno)) }
        var names: [String] = []
        var start = 0
        for index in 0..<length where buffer[index] == 0 {
            let bytes = buffer[start..<index].map { UInt8(bitPattern: $0) }
            names.append(String(decoding: bytes, as: UTF8.self))
            start = index + 1
        }
        return .success(names)
    }

    /// The value of one extended attribute (at most 256 bytes), or nil when it is absent.
    static func xattr(_ fd: Int32, _ name: String) -> Result<[UInt8]?, Errno> {
        var buffer = [UInt8](repeating: 0, count: 256)
        let length = buffer.withUnsafeMutableBytes { stk_fgetxattr(fd, name, $0.baseAddress, $0.count) }
        if length < 0 {
            let code = errno
            if code == ENODATA || code == ENOTSUP { return .success(Optional<[UInt8]>.none) }
            return .failure(Errno(rawValue: code))
        }
        return .success(Array(buffer[0..<length]))
    }
}
