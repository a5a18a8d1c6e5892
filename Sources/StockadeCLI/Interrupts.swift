import CStockade
import Glibc
import StockadeLinux

/// SIGINT and SIGTERM to a command that runs workers: the first cancels (the worker is killed,
/// its cgroup emptied, the report printed with outcome `cancelled`, exit 130); a second one
/// ends the process at once, after `forced` has recorded what it can.
///
/// The signals are caught from the moment `install` returns, by a handler that writes each into a
/// pipe (`stk_interrupts_install`), which a thread of its own reads: one that comes while the command
/// is still starting waits in the pipe. (Dispatch signal sources lost a signal that came between the
/// `SIG_IGN` they need and their registration on the dispatch manager; a dispatch read source, which
/// replaced them, started dispatch's manager thread and a worker in `run --host`, a client that
/// otherwise runs on its main thread alone.)
enum Interrupts {
    static func install(first: @escaping @Sendable () -> Void, forced: @escaping @Sendable () -> Void) {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else {
            Console.error("stockade: cannot watch for interrupts (pipe: \(String(cString: strerror(errno)))): an interrupt ends the process at once")
            return
        }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        // The handler's end must never block; the reader's blocks until a signal comes.
        _ = fcntl(fds[1], F_SETFL, fcntl(fds[1], F_GETFL) | O_NONBLOCK)
        let readEnd = fds[0]
        let watching = DetachedThread.start {
            var seen = 0
            var bytes = [UInt8](repeating: 0, count: 16)
            while true {
                let n = bytes.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { return }
                for _ in 0..<n {
                    seen += 1
                    if seen == 1 {
                        Console.error("stockade: interrupted: cancelling (interrupt again to exit at once)")
                        first()
                    } else {
                        forced()
                        _exit(130)
                    }
                }
            }
        }
        guard watching else {
            Console.error("stockade: cannot watch for interrupts (no thread: \(String(cString: strerror(errno)))): an interrupt ends the process at once")
            close(fds[0])
            close(fds[1])
            return
        }
        let rc = stk_interrupts_install(fds[1])
        if rc != 0 {
            Console.error("stockade: cannot catch interrupts (sigaction: \(String(cString: strerror(-rc)))): an interrupt ends the process at once")
        }
    }
}
