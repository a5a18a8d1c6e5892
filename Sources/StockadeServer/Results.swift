import Crypto
import Glibc
import HTTPTypes
import Hummingbird
import NIOCore
import StockadeBundles
import StockadePolicy
import StockadeSupervisor

/// `GET /v1/runs/{id}/result` and `GET /v1/runs/{id}/result/{path}`: the verified result bundle of a
/// finished run, and nothing else. Only a path the accepted manifest lists is ever opened, beneath
/// the run directory's `result/` without following a link; the manifest must hash to the SHA-256
/// recorded in the run's `bundle.accepted` event, and a file to its listed size and SHA-256.
extension API {
    static let resultChunkBytes = 64 << 10

    @Sendable func result(_ request: Request, _ context: StockadeRequestContext, _ principal: Principal?) async throws -> Reply {
        let id = try runId(context)
        try await requireRunHere(id)
        let result = try await acceptedResult(id)
        let files: [JSONValue] = result.manifest.files.map { file in
            .object(["path": .string(file.path), "size": .number(file.size), "sha256": .string(file.sha256)])
        }
        return Reply(response: API.json(.object([
            "runId": .string(id), "manifestSha256": .string(result.manifestSHA256), "files": .array(files),
            "patches": .array(result.manifest.patches.map { .string($0) }),
            "artifacts": .array(result.manifest.artifacts.map { .string($0) }),
            "totalBytes": .number(result.manifest.declaredBytes),
        ])), runId: id)
    }

    @Sendable func resultFile(_ request: Request, _ context: StockadeRequestContext, _ principal: Principal?) async throws -> Reply {
        let id = try runId(context)
        try await requireRunHere(id)
        // The raw path of the request, not the router's view of it: `a//b`, `%2e%2e` and the like
        // are judged here, byte for byte, before anything is looked up.
        let prefix = "/v1/runs/\(id)/result/"
        let raw = request.uri.path
        guard raw.hasPrefix(prefix) else { throw APIError(.notFound, "not-found", "no route GET \(raw)") }
        guard let bytes = Self.percentDecoded(raw.utf8.dropFirst(prefix.utf8.count)) else {
            throw APIError(.badRequest, "invalid-parameter", "path: malformed percent-encoding", field: "path")
        }
        if let problem = AcceptedResult.pathProblem(bytes) {
            throw APIError(.badRequest, "invalid-parameter", "path: \(problem)", field: "path")
        }
        let path = String(decoding: bytes, as: UTF8.self)
        let result = try await acceptedResult(id)
        guard let file = result.listed(path) else {
            throw APIError(.notFound, "not-found", "path: \(BundlePath.display(bytes)) is not a file of run \(id)'s accepted result", field: "path")
        }
        let handle: OpenFile
        do {
            handle = OpenFile(try result.open(file))
        } catch {
            throw failed("result-unavailable", "run \(id): \(BundlePath.display(bytes)) cannot be read", error)
        }
        // Hashed before a byte is sent: a copy that differs from what was accepted is never served.
        guard let digest = handle.sha256(), digest == file.sha256 else {
            throw APIError(.internalServerError, "result-unavailable",
                           "run \(id): \(BundlePath.display(bytes)) no longer has the SHA-256 it was accepted with")
        }
        var headers = HTTPFields()
        headers[.contentType] = "application/octet-stream"
        let size = Int(file.size)
        let logger = self.logger
        let channel = context.channel
        return Reply(response: Response(status: .ok, headers: headers, body: ResponseBody(contentLength: size) { writer in
            var offset = 0
            while offset < size {
                let chunk = try handle.read(at: offset, count: min(API.resultChunkBytes, size - offset))
                try await BoundedWrite.write(&writer, ByteBuffer(bytes: chunk), channel: channel, logger: logger, what: "result")
                offset += chunk.count
            }
            try await writer.finish(nil)
        }), runId: id)
    }

    /// The accepted result bundle of a finished run, or the error that answers why there is none.
    func acceptedResult(_ id: String) async throws -> AcceptedResult {
        guard let (state, report) = try await lookup(id) else { throw APIError(.notFound, "not-found", "no run \(id)", field: "id") }
        guard state == "finished", let report else {
            throw APIError(.conflict, "not-finished", "run \(id) is \(state): its result bundle is read once the run has finished")
        }
        let verdict = report.object?["result"]?.object
        switch verdict?["status"]?.string {
        case "accepted":
            break
        case "rejected":
            let reason = verdict?["reason"]?.string ?? "no reason recorded"
            throw APIError(.conflict, "result-rejected", "run \(id)'s result bundle was rejected (\(reason)): nothing of it is served")
        default:
            throw APIError(.notFound, "no-result", "run \(id) left no result bundle")
        }
        var expected: String?
        do {
            try supervisor.audit.events(runId: id, since: nil, kind: "bundle.accepted") { event in
                if let detail = event.detailValue?.object, detail["role"]?.string == "result" { expected = detail["manifestSha256"]?.string }
            }
        } catch {
            throw failed("audit-unavailable", "cannot read run \(id)'s bundle.accepted event", error)
        }
        guard let expected else {
            throw APIError(.internalServerError, "result-unavailable", "run \(id): the audit trail holds no bundle.accepted event for its result, so its copy cannot be checked")
        }
        do {
            return try AcceptedResult.open(directory: stateDirectory + "/runs/" + id + "/result", expectedSHA256: expected)
        } catch {
            throw failed("result-unavailable", "run \(id)'s accepted result cannot be opened, or no longer matches what was accepted", error)
        }
    }

    /// `%XX` decoded once; nil for a `%` not followed by two hex digits.
    static func percentDecoded(_ text: Substring.UTF8View) -> [UInt8]? {
        var out: [UInt8] = []
        var iterator = text.makeIterator()
        func hex(_ byte: UInt8?) -> UInt8? {
            switch byte {
            case let b? where b >= 0x30 && b <= 0x39: b - 0x30
            case let b? where b >= 0x41 && b <= 0x46: b - 0x41 + 10
            case let b? where b >= 0x61 && b <= 0x66: b - 0x61 + 10
            default: nil
            }
        }
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else { out.append(byte); continue }
            guard let high = hex(iterator.next()), let low = hex(iterator.next()) else { return nil }
            out.append(high << 4 | low)
        }
        return out
    }
}

/// A file descriptor a streamed response reads from; closed when the response is done with it.
final class OpenFile: Sendable {
    let fd: Int32

    init(_ fd: Int32) { self.fd = fd }

    deinit { close(fd) }

    struct Failure: Error {}

    /// `count` bytes at `offset` (fewer only at the end of the file, which is a failure here: the size was checked).
    func read(at offset: Int, count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var filled = 0
        while filled < count {
            let n = out.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + filled, count - filled, off_t(offset + filled)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw Failure() }
            filled += n
        }
        return out
    }

    /// The SHA-256 (hex) of the whole file, read in bounded chunks, or nil when it cannot be read.
    func sha256() -> String? {
        var hasher = SHA256()
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var offset: off_t = 0
        while true {
            let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, offset) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { return nil }
            if n == 0 { break }
            hasher.update(data: buffer[0..<n])
            offset += off_t(n)
        }
        return Hex.lowercase(hasher.finalize())
    }
}
