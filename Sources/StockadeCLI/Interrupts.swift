import CStockade
@preconcurrency import Dispatch
import Glibc
import Synchronization

/// SIGINT and SIGTERM to a command that runs workers: the first cancels (the worker is killed,
/// its cgroup emptied, the report printed with outcome `cancelled`, exit 130); a second one
/// ends the process at once, after `forced` has recorded what it can.
///
/// The signals are caught from the moment `install` returns, by a handler that writes each into a
/// pipe (`stk_interrupts_install`), which a dispatch source reads: one that comes while the command
/// is still starting waits in the pipe. (Dispatch signal sources, which this replaced, lost a signal
/// that came between the `SIG_IGN` they need and their registration on the dispatch manager.)
final class Interrupts: Sendable {
    private let source: any DispatchSourceRead
    private let count = Mutex(0)

    private init(source: any DispatchSourceRead) {
        self.source = source
    }

    /// Keeps the watcher alive for the whole command.
    nonisolated(unsafe) private static var installed: Interrupts?

    static func install(first: @escaping @Sendable () -> Void, forced: @escaping @Sendable () -> Void) {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else {
            Console.error("stockade: cannot watch for interrupts (pipe: \(String(cString: strerror(errno)))): an interrupt ends the process at once")
            return
        }
        for fd in fds {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            // The handler's end must never block; the reader drains what is there.
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        }
        let readEnd = fds[0]
        let source = DispatchSource.makeReadSource(fileDescriptor: readEnd, queue: DispatchQueue(label: "stockade.interrupts"))
        let watcher = Interrupts(source: source)
        source.setEventHandler { [watcher] in
            var bytes = [UInt8](repeating: 0, count: 16)
            let n = bytes.withUnsafeMutableBytes { read(readEnd, $0.baseAddress, $0.count) }
            for _ in 0..<max(n, 0) {
                let seen = watcher.count.withLock { c -> Int in
                    c += 1
                    return c
                }
                if seen == 1 {
                    Console.error("stockade: interrupted: cancelling (interrupt again to exit at once)")
                    first()
                } else {
                    forced()
                    _exit(130)
                }
            }
        }
        source.resume()
        installed = watcher
        let rc = stk_interrupts_install(fds[1])
        if rc != 0 {
            Console.error("stockade: cannot catch interrupts (sigaction: \(String(cString: strerror(-rc)))): an interrupt ends the process at once")
        }
    }
}
