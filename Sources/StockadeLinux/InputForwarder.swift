import CStockade
import Glibc
import Synchronization
import StockadePolicy

/// `stockade run -i`: copies the supervisor's standard input into a pipe whose read end is the
/// worker's stdin, on a thread of its own (the event loop never waits on the caller). The pipe
/// is the supervisor's: the worker gets no terminal, only the bytes, and at most one pipe's worth
/// (64 KiB) plus one read buffer is ever held. At the source's end the pipe is closed, so the
/// worker reads EOF; a worker that never reads blocks nobody (the thread waits in poll), and
/// `stop()` ends the copy when the run is over, whatever the caller still sends.
public final class InputForwarder: Sendable {
    /// The worker's end (blocking, close-on-exec): hand it to the spawn, then close it.
    public let workerEnd: Int32
    /// Closed by `stop()`: the thread sees its peer hang up.
    private let stopTrigger: Mutex<Int32>

    public init(source: Int32) throws(LinuxError) {
        var data: [Int32] = [-1, -1], stop: [Int32] = [-1, -1]
        guard stk_pipe_cloexec(&data, 0) == 0 else {
            throw LinuxError(.setup, stage: .pipe, errno: errno, "cannot create the worker's stdin pipe")
        }
        guard stk_pipe_cloexec(&stop, 0) == 0 else {
            let e = errno
            close(data[0])
            close(data[1])
            throw LinuxError(.setup, stage: .pipe, errno: e, "cannot create the worker's stdin pipe")
        }
        // Only the supervisor's end never blocks: a full pipe is waited for in poll, where stop reaches it.
        _ = fcntl(data[1], F_SETFL, O_NONBLOCK)
        workerEnd = data[0]
        stopTrigger = Mutex(stop[1])
        let copy = Copy(source: source, sink: data[1], stop: stop[0])
        guard DetachedThread.start({ copy.run() }) else {
            let rc = errno
            close(data[0])
            close(data[1])
            close(stop[0])
            close(stop[1])
            throw LinuxError(.setup, stage: .pipe, errno: rc, "cannot start the thread that copies stdin to the worker")
        }
    }

    /// Ends the copy (idempotent): the thread closes the pipe and exits.
    public func stop() {
        stopTrigger.withLock { fd in
            if fd >= 0 { close(fd) }
            fd = -1
        }
    }

    deinit {
        stop()
    }

    /// The thread's whole state; it owns `sink` and `stop` and closes them when it ends.
    private final class Copy: Sendable {
        let source: Int32, sink: Int32, stop: Int32

        init(source: Int32, sink: Int32, stop: Int32) {
            self.source = source
            self.sink = sink
            self.stop = stop
        }

        func run() {
            // A write to a pipe whose reader is gone raises SIGPIPE on the writing thread: held
            // pending here (and dropped when the thread ends), the write just fails with EPIPE.
            var mask = sigset_t()
            sigemptyset(&mask)
            sigaddset(&mask, SIGPIPE)
            pthread_sigmask(SIG_BLOCK, &mask, nil)
            defer {
                close(sink)
                close(stop)
            }
            var buffer = [UInt8](repeating: 0, count: 65536)
            var start = 0, end = 0
            var sourceOpen = true
            while sourceOpen || start < end {
                let pending = start < end
                var fds = [
                    pollfd(fd: stop, events: Int16(POLLIN), revents: 0),
                    pollfd(fd: pending ? sink : -1, events: Int16(POLLOUT), revents: 0),
                    pollfd(fd: pending || !sourceOpen ? -1 : source, events: Int16(POLLIN), revents: 0),
                ]
                let n = poll(&fds, 3, -1)
                if n < 0 && errno == EINTR { continue }
                if n < 0 || fds[0].revents != 0 { return }
                if pending {
                    guard fds[1].revents != 0 else { continue }
                    let written = buffer[start..<end].withUnsafeBytes { write(sink, $0.baseAddress, $0.count) }
                    if written < 0 && (errno == EINTR || errno == EAGAIN) { continue }
                    if written <= 0 { return } // the worker closed its stdin or ended
                    start += written
                } else if fds[2].revents != 0 {
                    let count = buffer.withUnsafeMutableBytes { read(source, $0.baseAddress, $0.count) }
                    if count < 0 && (errno == EINTR || errno == EAGAIN) { continue }
                    if count <= 0 {
                        sourceOpen = false
                    } else {
                        start = 0
                        end = count
                    }
                }
            }
        }
    }
}
