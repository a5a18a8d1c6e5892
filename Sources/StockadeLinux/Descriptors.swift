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
