import Glibc
import StockadePolicy

/// A block of 65,536 host ids held by one run for as long as it lives: the run's user namespace maps
/// onto it and is owned by its first id. Per-user kernel quotas (inotify instances and watches, user
/// namespaces, keys, POSIX message queues...) are counted per owner uid, so concurrent runs never
/// share one, and a run never charges root's. Ranges are leased host-wide (every supervisor of the
/// host, whatever its state directory) through `flock` on one file per range under
/// `/run/stockade/id-ranges`: a lock dies with its holder, so a crashed supervisor leaks nothing.
public final class IdRangeLease: Sendable {
    /// First host id of the range (in-namespace id 0).
    public let base: UInt32
    public let slot: Int
    private let lockFD: Int32

    init(slot: Int, lockFD: Int32) {
        self.slot = slot
        self.base = IdRangeLease.firstBase + UInt32(slot) * IdRangeLease.rangeSize
        self.lockFD = lockFD
    }

    deinit { close(lockFD) }

    public static let firstBase: UInt32 = 1_000_000_000
    public static let rangeSize: UInt32 = 65536
    /// 4096 ranges: host ids 1,000,000,000 to 1,268,435,455, never 0 and never a system or login range.
    public static let slots = 4096
    public static let directory = "/run/stockade/id-ranges"

    /// Takes a free range, starting the search at a random slot. Fails closed when none is free or
    /// the lock directory cannot be made.
    public static func acquire(directory: String = IdRangeLease.directory) throws(LinuxError) -> IdRangeLease {
        // One mkdir when it exists (every run after the first); the walk from the root only when not.
        var prefix = ""
        let ready = mkdir(directory, 0o700) == 0 || errno == EEXIST
        for part in directory.split(separator: "/") where !ready {
            prefix += "/" + part
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST {
                throw LinuxError(.setup, stage: .idRange, errno: errno,
                                 "cannot create \(prefix) to lease the run's host id range: \(String(cString: strerror(errno)))")
            }
        }
        let start = Int.random(in: 0..<slots)
        for i in 0..<slots {
            let slot = (start + i) % slots
            let fd = open(directory + "/\(slot)", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
            guard fd >= 0 else {
                throw LinuxError(.setup, stage: .idRange, errno: errno,
                                 "cannot open \(directory)/\(slot) to lease a host id range: \(String(cString: strerror(errno)))")
            }
            if flock(fd, LOCK_EX | LOCK_NB) == 0 { return IdRangeLease(slot: slot, lockFD: fd) }
            close(fd)
        }
        throw LinuxError(.setup, stage: .idRange, errno: EAGAIN,
                         "all \(slots) host id ranges are in use by running workers: wait for runs to finish")
    }
}
