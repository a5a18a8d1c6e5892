import Foundation
import Glibc
import StockadeTestSupport
import Testing

/// A service on a real Unix socket that answers `POST /v1/runs` and `GET /v1/runs/{id}/wait` from a
/// script and records each connection's request lines: what `stockade run --host` sends on which
/// connection, and what it does when the service ends a connection.
private final class ScriptedService: @unchecked Sendable {
    enum AfterSubmit {
        /// The answer keeps the connection open (HTTP/1.1's default).
        case keepOpen
        /// The answer says `Connection: close`; the service leaves the connection to the client to close.
        case sayClose
        /// The answer says nothing of it, and the connection is closed right after (an idle timeout).
        case closeSilently
        /// The first submission is answered 429 queue-full (Retry-After: 1) and its connection closed
        /// silently while the client waits that second out; the next is admitted.
        case queueFullThenClose
        /// The wait's answer announces its whole length, sends half of it and holds the connection
        /// open for `holdSeconds` before closing it: a broken service.
        case shortWaitAnswer
        /// The wait's answer comes in three parts 0.6 s apart: slow, but never quiet for long.
        case slowWaitAnswer
        /// The first wait's answer stops halfway (held `onceHoldSeconds`, then closed); the next is whole.
        case shortWaitAnswerOnce
        /// The first submission's answer stops halfway (held `onceHoldSeconds`, then closed); the next is whole.
        case shortSubmitAnswerOnce
    }

    static let holdSeconds: UInt32 = 5
    static let onceHoldSeconds: UInt32 = 2

    /// How many requests whose line starts with `prefix` were seen so far (the current one included).
    private func count(_ prefix: String) -> Int {
        lock.withLock { seen.joined().filter { $0.line.hasPrefix(prefix) }.count }
    }

    static let runId = "01M89DWRZAKYA3QDS56WVQKQ36"
    static let report = #"{"cpuTimeMs":4,"durationMs":94,"egress":null,"exitCode":0,"memoryPeakBytes":6201344,"orphansKilled":0,"outcome":"exited","profile":"default","result":{"reason":null,"status":"none"},"review":{"id":null,"state":"none"},"runId":"01M89DWRZAKYA3QDS56WVQKQ36","setupError":null,"signal":null,"stderr":"","stderrTruncated":false,"stdout":"scripted-report\n","stdoutTruncated":false,"violations":[]}"#

    let socketPath: String
    private let listener: Int32
    private let afterSubmit: AfterSubmit
    private let lock = NSLock()
    /// Per connection, in order: each request's line and whether it asked for `Connection: close`.
    private var seen: [[(line: String, close: Bool)]] = []
    /// Each submission's Idempotency-Key, in order.
    private var keys: [String] = []
    private var thread: Thread?

    init(directory: String, afterSubmit: AfterSubmit) throws {
        socketPath = directory + "/api.sock"
        self.afterSubmit = afterSubmit
        listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var sa = unixSocketAddress(socketPath)
        let bound = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        guard listener >= 0, bound == 0, listen(listener, 8) == 0 else { throw POSIXError(.EADDRINUSE) }
        let thread = Thread { [self] in serve() }
        self.thread = thread
        thread.start()
    }

    var connections: [[(line: String, close: Bool)]] { lock.withLock { seen } }
    var idempotencyKeys: [String] { lock.withLock { keys } }

    /// Stops accepting (the thread ends at its next accept).
    func stop() {
        shutdown(listener, Int32(SHUT_RDWR))
    }

    private func serve() {
        while true {
            let fd = accept(listener, nil, nil)
            if fd < 0 { return }
            var timeout = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            let index = lock.withLock { seen.append([]); return seen.count - 1 }
            var buffer: [UInt8] = []
            while let (line, close, key) = readRequest(fd, &buffer) {
                lock.withLock {
                    seen[index].append((line, close))
                    if line.hasPrefix("POST "), let key { keys.append(key) }
                }
                if line.hasPrefix("POST /v1/runs "), afterSubmit == .queueFullThenClose, lock.withLock({ seen.count == 1 }) {
                    let body = #"{"error":{"code":"queue-full","message":"the queue is full"}}"#
                    write(fd, "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 1\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
                    break
                } else if line.hasPrefix("POST /v1/runs "), afterSubmit == .shortSubmitAnswerOnce, count("POST ") == 1 {
                    let body = #"{"id":"\#(Self.runId)","state":"queued","replayed":false}"#
                    write(fd, "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + String(body.prefix(10)))
                    sleep(Self.onceHoldSeconds)
                    break
                } else if line.hasPrefix("POST /v1/runs ") {
                    let body = #"{"id":"\#(Self.runId)","state":"queued","replayed":false}"#
                    let closing = afterSubmit == .sayClose ? "Connection: close\r\n" : ""
                    write(fd, "HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\n\(closing)Content-Length: \(body.utf8.count)\r\n\r\n\(body)")
                    // After Connection: close the connection stays open here, so a client that
                    // ignored the header would be seen sending its wait on it.
                    if afterSubmit == .closeSilently || close { break }
                } else if line.hasPrefix("GET /v1/runs/\(Self.runId)/wait ") {
                    let body = #"{"id":"\#(Self.runId)","state":"finished","report":\#(Self.report)}"#
                    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n"
                    let bytes = Array(body.utf8)
                    if afterSubmit == .shortWaitAnswerOnce, count("GET ") == 1 {
                        write(fd, head + String(decoding: bytes.prefix(bytes.count / 2), as: UTF8.self))
                        sleep(Self.onceHoldSeconds)
                        break
                    }
                    switch afterSubmit {
                    case .shortWaitAnswer:
                        write(fd, head + String(decoding: bytes.prefix(bytes.count / 2), as: UTF8.self))
                        sleep(Self.holdSeconds)
                    case .slowWaitAnswer:
                        write(fd, head)
                        for part in [bytes.prefix(40), bytes.dropFirst(40).prefix(40), bytes.dropFirst(80)] {
                            usleep(600_000)
                            write(fd, String(decoding: part, as: UTF8.self))
                        }
                    default:
                        write(fd, head + body)
                    }
                    if close || afterSubmit == .shortWaitAnswer { break }
                } else {
                    write(fd, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                    break
                }
            }
            Glibc.close(fd)
        }
    }

    private func write(_ fd: Int32, _ text: String) {
        let bytes = Array(text.utf8)
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            offset += n
        }
    }

    /// One request: its head (request line and whether it asks for the connection's close) and its
    /// Content-Length body, read and dropped; nil at the end of the connection.
    private func readRequest(_ fd: Int32, _ buffer: inout [UInt8]) -> (String, Bool, String?)? {
        let end = Array("\r\n\r\n".utf8)
        while buffer.firstRange(of: end) == nil {
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return nil }
            buffer += chunk[0..<n]
        }
        let headEnd = buffer.firstRange(of: end)!
        let head = String(decoding: buffer[..<headEnd.lowerBound], as: UTF8.self)
        buffer.removeSubrange(..<headEnd.upperBound)
        let lines = head.components(separatedBy: "\r\n")
        let fields = lines.dropFirst().map { $0.lowercased() }
        let length = fields.first { $0.hasPrefix("content-length:") }.flatMap { Int($0.dropFirst(15).trimmingCharacters(in: .whitespaces)) } ?? 0
        while buffer.count < length {
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return nil }
            buffer += chunk[0..<n]
        }
        buffer.removeSubrange(..<length)
        let key = fields.first { $0.hasPrefix("idempotency-key:") }.map { $0.dropFirst(16).trimmingCharacters(in: .whitespaces) }
        return (lines[0], fields.contains("connection: close"), key)
    }
}

@Suite("stockade run --host: one connection for the submission and the wait", .serialized, .timeLimit(.minutes(2)))
struct KeepAliveTests {
    private func run(_ afterSubmit: ScriptedService.AfterSubmit, environment: [String: String] = [:]) throws -> (status: Int32, stdout: String, stderr: String, connections: [[(line: String, close: Bool)]], keys: [String]) {
        let directory = makeScratchDirectory("stk-keepalive")
        defer { removeTree(directory) }
        let service = try ScriptedService(directory: directory, afterSubmit: afterSubmit)
        defer { service.stop() }
        let r = try ServerHarness.exec(ServerHarness.stockade, ["run", "--", "/bin/true"],
                                       environment: ["STOCKADE_HOST": "unix://" + service.socketPath, "STOCKADE_TOKEN": "stk_test",
                                                     "STOCKADE_STATE_DIR": directory + "/client-state"].merging(environment) { $1 })
        return (r.status, r.stdout, r.stderr, service.connections, service.idempotencyKeys)
    }

    private func lines(_ connection: [(line: String, close: Bool)]) -> [String] {
        connection.map { String($0.line.split(separator: " ").prefix(2).joined(separator: " ")) }
    }

    @Test("the wait goes on the connection the run was submitted on")
    func kept() throws {
        let r = try run(.keepOpen)
        #expect(r.status == 0 && r.stdout == "scripted-report\n", "\(r.status) \(r.stdout) \(r.stderr)")
        #expect(r.connections.count == 1, "\(r.connections)")
        #expect(r.connections.first.map(lines) == ["POST /v1/runs", "GET /v1/runs/\(ScriptedService.runId)/wait"], "\(r.connections)")
        // The submission asked to keep the connection; the wait, the last request, did not need to.
        #expect(r.connections.first?.first?.close == false, "\(r.connections)")
    }

    @Test("an answer that says Connection: close ends the connection: the wait goes on a new one")
    func closedBySaying() throws {
        let r = try run(.sayClose)
        #expect(r.status == 0 && r.stdout == "scripted-report\n", "\(r.status) \(r.stdout) \(r.stderr)")
        #expect(r.connections.map(lines) == [["POST /v1/runs"], ["GET /v1/runs/\(ScriptedService.runId)/wait"]], "\(r.connections)")
    }

    @Test("a kept connection the service closed since is replaced: the wait is sent again on a new one and answered")
    func closedSilently() throws {
        let r = try run(.closeSilently)
        #expect(r.status == 0 && r.stdout == "scripted-report\n", "\(r.status) \(r.stdout) \(r.stderr)")
        // The wait reached only the second connection (the first was closed before it was sent).
        #expect(r.connections.map(lines) == [["POST /v1/runs"], ["GET /v1/runs/\(ScriptedService.runId)/wait"]], "\(r.connections)")
    }

    @Test("a wait's answer the service stops sending halfway, twice, ends the command after the stall limit, naming it; asked twice, never more")
    func stalledAnswer() throws {
        var clock = timespec()
        clock_gettime(CLOCK_MONOTONIC, &clock)
        let started = clock.tv_sec
        let r = try run(.shortWaitAnswer, environment: ["STOCKADE_ANSWER_STALL_SECONDS": "1"])
        clock_gettime(CLOCK_MONOTONIC, &clock)
        #expect(r.status == 125 && r.stdout.isEmpty, "\(r.status) \(r.stdout) \(r.stderr)")
        #expect(r.stderr.contains("began an answer and sent nothing more of it for 1 s"), "\(r.stderr)")
        #expect(r.stderr.contains("twice") && r.stderr.contains("--run \(ScriptedService.runId)"), "\(r.stderr)")
        // The service (one connection at a time) holds each 5 s: the second was given up while held.
        #expect(clock.tv_sec - started < 2 * Int(ScriptedService.holdSeconds), "\(clock.tv_sec - started) s")
        #expect(r.connections.flatMap(lines).filter { $0.hasPrefix("GET") }.count == 2, "\(r.connections)")
    }

    @Test("a wait's answer that stalls once is asked for again on a new connection, and the report printed")
    func stalledWaitOnce() throws {
        let r = try run(.shortWaitAnswerOnce, environment: ["STOCKADE_ANSWER_STALL_SECONDS": "1"])
        #expect(r.status == 0 && r.stdout == "scripted-report\n", "\(r.status) \(r.stdout) \(r.stderr)")
        #expect(r.connections.map(lines) == [["POST /v1/runs", "GET /v1/runs/\(ScriptedService.runId)/wait"],
                                             ["GET /v1/runs/\(ScriptedService.runId)/wait"]], "\(r.connections)")
    }

    @Test("a submission's answer that stalls once is sent again with the same Idempotency-Key, and the run waited for")
    func stalledSubmitOnce() throws {
        let r = try run(.shortSubmitAnswerOnce, environment: ["STOCKADE_ANSWER_STALL_SECONDS": "1"])
        #expect(r.status == 0 && r.stdout == "scripted-report\n", "\(r.status) \(r.stdout) \(r.stderr)")
        #expect(r.connections.map(lines) == [["POST /v1/runs"], ["POST /v1/runs", "GET /v1/runs/\(ScriptedService.runId)/wait"]], "\(r.connections)")
        #expect(Set(r.keys).count == 1 && r.keys.count == 2, "the two submissions' keys: \(r.keys)")
    }

    @Test("an answer that comes slowly but never pauses for the stall limit is read whole")
    func slowAnswer() throws {
        let r = try run(.slowWaitAnswer, environment: ["STOCKADE_ANSWER_STALL_SECONDS": "1"])
        #expect(r.status == 0 && r.stdout == "scripted-report\n", "\(r.status) \(r.stdout) \(r.stderr)")
    }

    @Test("a submission refused for a full queue is sent again after its Retry-After, on a new connection when the service closed the kept one meanwhile")
    func queueFullThenClosed() throws {
        let r = try run(.queueFullThenClose)
        #expect(r.status == 0 && r.stdout == "scripted-report\n", "\(r.status) \(r.stdout) \(r.stderr)")
        #expect(r.connections.map(lines) == [["POST /v1/runs"], ["POST /v1/runs", "GET /v1/runs/\(ScriptedService.runId)/wait"]], "\(r.connections)")
    }
}
