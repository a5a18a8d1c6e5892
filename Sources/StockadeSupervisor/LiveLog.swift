import Glibc
import Logging
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
/// Small chunks are gathered and written when `batchBytes` are waiting or when `flush` is called
/// (every `flushInterval` by the run's flusher task), so a chatty worker costs one write per batch,
/// not one per pipe read.
package final class LiveLog: Sendable {
    package static let batchBytes = 64 << 10
    package static let flushInterval: Duration = .milliseconds(50)

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
        state.withLock { s in
            guard !s.finished else { return }
            let i = Int(stream) - 1
            let room = s.streams[i].cap - s.streams[i].captured
            guard room > 0, !chunk.isEmpty else { return }
            let taken = chunk.count <= room ? chunk : Array(chunk.prefix(room))
            s.streams[i].captured += taken.count
            s.streams[i].pending += s.streams[i].redactor.feed(taken)
            if s.streams[i].pending.count >= Self.batchBytes { Self.write(&s.streams[i], logger: logger) }
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
