import Glibc
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import StockadePolicy
import StockadeSupervisor

/// `GET /v1/runs/{id}/logs`: the run directory's logs, which the supervisor writes as the worker's
/// output arrives (capped, secrets redacted; what is written is always a prefix of the final log).
extension API {
    /// At most this much is answered at once without `follow` (`Stockade-Next-Offset` says where to go on).
    static let logAnswerBytes = 64 << 20

    @Sendable func logs(_ request: Request, _ context: StockadeRequestContext, _ principal: Principal?) async throws -> Reply {
        let id = try runId(context)
        try await requireRunHere(id)
        let query = API.query(request)
        let stream = query["stream"] ?? "stdout"
        guard stream == "stdout" || stream == "stderr" else {
            throw APIError(.badRequest, "invalid-parameter", "stream: must be stdout or stderr, found \(stream)", field: "stream")
        }
        var offset = 0
        if let text = query["offset"] {
            guard let n = Int(text), n >= 0 else { throw APIError(.badRequest, "invalid-parameter", "offset: must be a byte offset (0 or more), found \(text)", field: "offset") }
            offset = n
        }
        var follow = false
        if let text = query["follow"] {
            switch text {
            case "true", "1": follow = true
            case "false", "0": follow = false
            default: throw APIError(.badRequest, "invalid-parameter", "follow: must be true or false, found \(text)", field: "follow")
            }
        }
        guard let (state, _) = try await lookup(id) else { throw APIError(.notFound, "not-found", "no run \(id)", field: "id") }
        let path = stateDirectory + "/runs/" + id + "/logs/" + stream + ".log"
        let ended = state == "finished" || state == "abandoned"
        let first: LogFile.Read
        do {
            first = try LogFile.read(path, from: offset, limit: follow ? 0 : API.logAnswerBytes)
        } catch {
            throw failed("logs-unavailable", "run \(id)'s \(stream) log cannot be read", error)
        }
        if case .missing = first, ended {
            throw APIError(.notFound, "no-logs", "run \(id) has no \(stream) log (it was refused before it ran, or its run directory was collected)")
        }
        var headers = HTTPFields()
        headers[.contentType] = "application/octet-stream"
        guard follow else {
            // A queued run, or one still being set up, has written nothing yet.
            let bytes: [UInt8] = if case .bytes(let b) = first { b } else { [] }
            headers[API.nextOffset] = String(offset + bytes.count)
            return Reply(response: Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes))), runId: id)
        }
        headers[.cacheControl] = "no-store"
        let slot = try streamSlot(principal, context)
        let follower = LogFollower(path: path, offset: offset, channel: context.channel, shutdown: shutdown, logger: logger,
                                   recheck: TokenRecheck(principal)) { [self] in await logComplete(id) }
        return Reply(response: Response(status: .ok, headers: headers, body: ResponseBody { writer in
            defer { slot.release() }
            try await follower.run(&writer)
        }), runId: id)
    }

    /// True once nothing more will be written to the run's logs: the run has finished (its report
    /// is written after its logs are complete), was abandoned, or is unknown.
    func logComplete(_ id: String) async -> Bool {
        if let submitted = await registry.submitted(id) { return submitted.handle.currentState == .finished }
        if access(stateDirectory + "/runs/" + id + "/report.json", F_OK) == 0 { return true }
        // Not this service's run and no report yet: another supervisor of this state directory may be writing it.
        var state: String?
        do {
            try supervisor.audit.runs { run in if run.runId == id { state = run.state } }
        } catch {
            return false
        }
        return state == nil || state == "abandoned" || state == "finished"
    }
}

/// Streams a log from an offset as it grows: bounded chunks read from the file (never the whole
/// log in memory, never a backlog for a slow reader: each write waits on the client, and a client
/// that does not read for the stall limit is cut off), until the run has ended and every byte has
/// been sent.
struct LogFollower: Sendable {
    let path: String
    let offset: Int
    let channel: any Channel
    let shutdown: ShutdownFlag
    let logger: Logger
    let recheck: TokenRecheck
    let isComplete: @Sendable () async -> Bool
    static let chunkBytes = 64 << 10
    /// The file is polled: first after 2 ms, the wait doubling while nothing comes, up to 100 ms, and
    /// back to 2 ms after bytes came (a short run's first line reaches its follower in milliseconds;
    /// a quiet run costs its follower ten stats a second).
    static let firstPollMilliseconds: UInt64 = 2
    static let maxPollMilliseconds: UInt64 = 100

    init(path: String, offset: Int, channel: any Channel, shutdown: ShutdownFlag, logger: Logger, recheck: TokenRecheck = TokenRecheck(nil),
         isComplete: @escaping @Sendable () async -> Bool) {
        self.recheck = recheck
        self.path = path
        self.offset = offset
        self.channel = channel
        self.shutdown = shutdown
        self.logger = logger
        self.isComplete = isComplete
    }

    func run(_ writer: inout any ResponseBodyWriter) async throws {
        var offset = self.offset
        // Set once the run was seen complete: the next empty read is the end of the log.
        var completeSeen = false
        var poll = Self.firstPollMilliseconds
        var recheck = self.recheck
        while !Task.isCancelled {
            // A token revoked or expired meanwhile ends the stream without its last chunk: the client
            // cannot take it for the whole log.
            guard recheck.stillValid() else { throw TokenNoLongerAccepted() }
            if case .bytes(let chunk) = try LogFile.read(path, from: offset, limit: Self.chunkBytes), !chunk.isEmpty {
                try await BoundedWrite.write(&writer, ByteBuffer(bytes: chunk), channel: channel, logger: logger, what: "logs")
                offset += chunk.count
                poll = Self.firstPollMilliseconds
                continue
            }
            if completeSeen { break }
            // Read once more after seeing the end: the last bytes may have landed since the read above.
            if await isComplete() {
                completeSeen = true
                continue
            }
            if shutdown.isSet { break }
            try await Task.sleep(for: .milliseconds(poll))
            poll = min(poll * 2, Self.maxPollMilliseconds)
        }
        try await writer.finish(nil)
    }
}

/// One read of a log file, opened anew each time (the file may not exist yet) without following a link.
enum LogFile {
    enum Read {
        case missing
        case bytes([UInt8])
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// At most `limit` bytes from `offset` (0: only whether the file exists).
    static func read(_ path: String, from offset: Int, limit: Int) throws(Failure) -> Read {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
        guard fd >= 0 else {
            if errno == ENOENT { return .missing }
            throw Failure(description: "cannot open \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { throw Failure(description: "\(path) is not a regular file") }
        let available = max(0, Int(st.st_size) - offset)
        var out = [UInt8](repeating: 0, count: min(limit, available))
        var filled = 0
        while filled < out.count {
            let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + filled, $0.count - filled, off_t(offset + filled)) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw Failure(description: "cannot read \(path): \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            filled += n
        }
        out.removeSubrange(filled...)
        return .bytes(out)
    }
}
