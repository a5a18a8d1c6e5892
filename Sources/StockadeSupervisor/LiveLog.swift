import CStockade
import Glibc
import Logging
import StockadeLinux
import StockadePolicy
import Synchronization

/// The worker's output written to the run directory's `logs/stdout.log` and `logs/stderr.log` as it
/// arrives, so a reader can follow a run that is still going.
///
/// Each stream is capped as the report's capture is (the same first `cap` bytes) and redacted as the
/// report is: a `StreamRedactor` holds back a possible secret's beginning (at most the longest
/// secret's length minus one bytes) until the next chunk or the end decides, so a redaction is never
/// split across what has been written. Hence the invariant readers rely on: at any moment the bytes
/// in a log file are a prefix of the final log. At the end, `finish` appends what the final log has
/// beyond what was written (after checking that the file still holds a prefix of it).
///
/// Small chunks are gathered and written when `batchBytes` are waiting or when `flush` is called:
/// every `flushInterval` by a timer on the event loop, armed when output first waits (a run that
/// prints nothing has none), so a chatty worker costs one write per batch, not one per pipe read.
/// The timer is a timerfd handled on the loop thread, which also reads the output: no thread wakes
/// for it (a detached task sleeping in a loop cost each run two wakes of a pool thread).
package final class LiveLog: Sendable {
    package static let batchBytes = 64 << 10
    package static let flushIntervalNanos: UInt64 = 50_000_000

    struct Stream {
        var path: String
        var fd: Int32
        var cap: Int
        /// Bytes of the worker's output taken into the capture (at most `cap`).
        var captured = 0
        var redactor: StreamRedactor
        /// Redacted bytes not yet written.
        var pending: [UInt8] = []
        /// Bytes written to the file.
        var written = 0
        /// Why the file stopped being written (it is made whole at `finish`).
        var failure: String?
    }

    private struct State {
        var streams: [Stream]
        var finished = false
        /// The flush timer was armed (it is never armed twice).
        var timerArmed = false
        /// The flush timer closes at its next tick (`finish`, `discard`, `stopFlushing`).
        var timerStopped = false
        /// The flush timer's descriptor while it is open, else -1.
        var timerFD: Int32 = -1
    }

    private let state: Mutex<State>
    private let logger: Logger

    /// Creates both log files (they must not exist) in `directory`. A file that cannot be created is
    /// written whole at `finish` instead, as before there were live logs.
    package init(directory: String, stdoutCap: Int, stderrCap: Int, redactor: Redactor, logger: Logger) {
        self.logger = logger
        var streams: [Stream] = []
        for (name, cap) in [("stdout", stdoutCap), ("stderr", stderrCap)] {
            let path = directory + "/" + name + ".log"
            let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0o600)
            var stream = Stream(path: path, fd: fd, cap: max(0, cap), redactor: StreamRedactor(redactor))
            if fd < 0 {
                stream.failure = "cannot create \(path): \(String(cString: strerror(errno)))"
                logger.warning("log.live-unavailable", metadata: ["path": "\(path)", "error": "\(stream.failure ?? "")"])
            }
            streams.append(stream)
        }
        state = Mutex(State(streams: streams))
    }

    /// Takes one chunk of the worker's output (stream 1 = stdout, 2 = stderr), as the monitor reads it.
    @Sendable package func append(_ stream: Int32, _ chunk: [UInt8]) {
        guard stream == 1 || stream == 2 else { return }
        let arm = state.withLock { s -> Bool in
            guard !s.finished else { return false }
            let i = Int(stream) - 1
            let room = s.streams[i].cap - s.streams[i].captured
            guard room > 0, !chunk.isEmpty else { return false }
            let taken = chunk.count <= room ? chunk : Array(chunk.prefix(room))
            s.streams[i].captured += taken.count
            s.streams[i].pending += s.streams[i].redactor.feed(taken)
            if s.streams[i].pending.count >= Self.batchBytes { Self.write(&s.streams[i], logger: logger) }
            guard !s.timerArmed, !s.timerStopped, !s.streams[i].pending.isEmpty else { return false }
            s.timerArmed = true
            return true
        }
        if arm { armFlushTimer() }
    }

    /// The flush timer's descriptor while it is open (armed and not yet closed), else -1.
    package var flushTimerFD: Int32 { state.withLock { $0.timerFD } }

    /// Stops the flush timer (at its next tick) without writing anything more.
    package func stopFlushing() {
        state.withLock { $0.timerStopped = true }
    }

    /// A timerfd on the shared event loop that flushes every `flushIntervalNanos`. It is read and
    /// closed only on the loop thread, by its own handler: once stopped, the next tick unregisters and
    /// closes it, so no other thread can close its number under the loop (or the loop read a reused one).
    private func armFlushTimer() {
        let fd = stk_timerfd_every(Self.flushIntervalNanos)
        guard fd >= 0 else {
            state.withLock { $0.timerArmed = false }  // the next output tries again
            logger.warning("log.flush-timer-unavailable", metadata: ["error": "\(String(cString: strerror(errno)))"])
            return
        }
        state.withLock { $0.timerFD = fd }
        do {
            try EventLoop.shared.register(fd) { [self] _ in
                var expirations: UInt64 = 0
                _ = read(fd, &expirations, MemoryLayout<UInt64>.size)
                let stop = state.withLock { s -> Bool in
                    guard s.finished || s.timerStopped else { return false }
                    s.timerFD = -1
                    return true
                }
                if stop {
                    EventLoop.shared.unregister(fd)
                    close(fd)
                    return false
                }
                flush()
                return true
            }
        } catch {
            state.withLock { $0.timerFD = -1; $0.timerArmed = false }
            close(fd)
            logger.warning("log.flush-timer-unavailable", metadata: ["error": "\(error)"])
        }
    }

    /// Writes what is waiting.
    package func flush() {
        state.withLock { s in
            guard !s.finished else { return }
            for i in s.streams.indices where !s.streams[i].pending.isEmpty { Self.write(&s.streams[i], logger: logger) }
        }
    }

    /// Makes each file exactly the final log (`stdout`, `stderr`: the capture as the report has it,
    /// redacted): appends the rest when the file holds a prefix of it (the normal case), else writes
    /// the whole log anew through a rename. Later chunks are ignored.
    package func finish(stdout: [UInt8], stderr: [UInt8]) {
        let streams = state.withLock { s -> [Stream] in
            s.finished = true
            return s.streams
        }
        for (stream, final) in zip(streams, [stdout, stderr]) {
            if stream.fd >= 0 {
                complete(stream, final)
                close(stream.fd)
            } else {
                rewrite(stream.path, final)
            }
        }
    }

    /// Removes the files of a run whose worker was never watched (a setup failure): such a run has no logs.
    package func discard() {
        let streams = state.withLock { s -> [Stream] in
            s.finished = true
            return s.streams
        }
        for stream in streams where stream.fd >= 0 {
            close(stream.fd)
            unlink(stream.path)
        }
    }

    private func complete(_ stream: Stream, _ final: [UInt8]) {
        // What the file holds is read back: whatever happened to it, the prefix check decides.
        var onDisk = [UInt8](repeating: 0, count: stream.written)
        let n = onDisk.withUnsafeMutableBytes { pread(stream.fd, $0.baseAddress, $0.count, 0) }
        let intact = stream.failure == nil && n == stream.written && stream.written <= final.count && final.prefix(stream.written).elementsEqual(onDisk)
        guard intact else {
            logger.error("log.live-rewritten", metadata: ["path": "\(stream.path)", "error": "\(stream.failure ?? "the live log is not a prefix of the final log")"])
            rewrite(stream.path, final)
            return
        }
        var rest = Stream(path: stream.path, fd: stream.fd, cap: stream.cap, redactor: stream.redactor)
        rest.pending = Array(final[stream.written...])
        if !rest.pending.isEmpty {
            Self.write(&rest, logger: logger)
            if rest.failure != nil { rewrite(stream.path, final) }
        }
    }

    private func rewrite(_ path: String, _ bytes: [UInt8]) {
        do {
            try FileReading.writeAtomically(path, bytes)
        } catch {
            logger.error("log.write-failed", metadata: ["path": "\(path)", "error": "\(error)"])
        }
    }

    private static func write(_ stream: inout Stream, logger: Logger) {
        guard stream.failure == nil, stream.fd >= 0 else {
            stream.pending = []
            return
        }
        var offset = 0
        while offset < stream.pending.count {
            let n = stream.pending[offset...].withUnsafeBytes { Glibc.write(stream.fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 {
                stream.failure = "cannot write \(stream.path): \(String(cString: strerror(errno)))"
                break
            }
            offset += n
        }
        stream.written += offset
        stream.pending = []
    }
}
