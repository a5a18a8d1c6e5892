import CStockade
import Glibc

/// A NUL-terminated copy of a name, for passing to a C call.
func cName(_ bytes: some Collection<UInt8>) -> [CChar] {
    var out = bytes.map { CChar(bitPattern: $0) }
    out.append(0)
    return out
}

/// `openat2(dirfd, name, flags, mode, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: nothing above `dirfd`
/// and no symlink anywhere on the way is ever followed. Returns the fd, or -1 with `errno` set.
func openBeneath(_ directory: Int32, _ name: some Collection<UInt8>, flags: Int32, mode: mode_t = 0) -> Int32 {
    let path = cName(name)
    var fd: Int32
    var attempts = 0
    // EAGAIN: the kernel saw a concurrent rename during resolution and asks for a retry.
    repeat {
        fd = stk_openat2(directory, path, UInt64(UInt32(bitPattern: flags)), UInt64(mode),
                         UInt64(STK_RESOLVE_BENEATH | STK_RESOLVE_NO_SYMLINKS))
        attempts += 1
    } while fd < 0 && (errno == EINTR || errno == EAGAIN) && attempts < 16
    return fd
}

/// `O_PATH` from <fcntl.h>, which Glibc only declares under `_GNU_SOURCE` and so does not reach Swift.
/// The value is the same on every Linux architecture Swift supports.
let openPathOnly: Int32 = 0o10000000
