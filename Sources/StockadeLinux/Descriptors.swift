import CStockade
import Glibc
import StockadePolicy

extension SpawnedWorker {
    /// SIGKILL to the worker's init through its pidfd (never a pid that may have been reused):
    /// its death takes the whole pid namespace with it.
    public func kill() {
        _ = stk_pidfd_send_signal(pidfd, SIGKILL)
    }
}

/// A pipe whose both ends are close-on-exec (`O_NONBLOCK` on both when asked).
public enum LinuxPipe {
    public static func make(nonBlocking: Bool = false) throws(LinuxError) -> (read: Int32, write: Int32) {
        var fds: [Int32] = [-1, -1]
        guard stk_pipe_cloexec(&fds, nonBlocking ? O_NONBLOCK : 0) == 0 else {
            throw LinuxError(.setup, stage: .pipe, errno: errno, "cannot create a pipe: \(String(cString: strerror(errno)))")
        }
        return (fds[0], fds[1])
    }
}

/// Accepting on a listener a worker can connect to as often as it likes.
enum WorkerListener {
    /// The next connection on `listener`, or nil when there is none to take. When the process is out
    /// of descriptors or memory (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) the connection stays
    /// queued and `poll` would report it again at once: the loop would spin on a core. So this waits
    /// 100 ms first, or until `stopEvent` is readable; `stopped` says which.
    static func accept(_ listener: Int32, stopEvent: Int32, stopped: inout Bool) -> Int32? {
        let client = stk_accept_cloexec(listener)
        if client >= 0 { return client }
        let failure = errno
        guard failure == EMFILE || failure == ENFILE || failure == ENOBUFS || failure == ENOMEM else { return nil }
        var stop = [pollfd(fd: stopEvent, events: Int16(POLLIN), revents: 0)]
        let n = poll(&stop, 1, 100)
        stopped = n > 0 || (n < 0 && errno != EINTR)
        return nil
    }
}

/// The soft RLIMIT_NOFILE raised to the hard limit, so many runs at once (each holds a few for its
/// pipes and pidfd, and two for each connection its egress proxy relays) or the service's idle
/// clients do not exhaust the process's descriptors. Workers get
/// their profile's own limit (`limits.rlimits.nofile`), so this does not reach them.
public enum DescriptorLimit {
    /// The soft limit in force after raising it.
    public static func raise() -> UInt64 {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &raised) == 0 { return UInt64(raised.rlim_cur) }
        }
        return UInt64(limit.rlim_cur)
    }
}

/// The run's result filesystem: a tmpfs bounded in bytes and inodes, owned by the worker's host
/// ids, never mounted on the host (a detached mount the worker's init attaches at /result).
public enum ResultFilesystem {
    public static func make(bytes: Int64, inodes: Int64, uid: UInt32, gid: UInt32) throws(LinuxError) -> Int32 {
        let fd = stk_tmpfs_detached(UInt64(bytes), UInt64(inodes), uid, gid, 0o755)
        guard fd >= 0 else {
            throw LinuxError(.setup, stage: .result, errno: errno,
                             "cannot create the bounded result filesystem: \(String(cString: strerror(errno))) (needs Linux 5.2+ fsopen)")
        }
        return fd
    }
}
