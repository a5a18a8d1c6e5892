import Hummingbird
import Logging
import NIOCore

/// Writes one bounded buffer of a streamed response, waiting on the client (NIO's back-pressure)
/// for at most `EventStream.stallSeconds`: a client that does not take it by then is cut off
/// (it resumes from where it was), so a slow reader holds one buffer, never a growing backlog.
enum BoundedWrite {
    struct Stalled: Error {}

    /// Holds the writer while a child task writes and the parent waits on the stall timer: only one
    /// task touches it at a time (the parent is suspended until both children have ended).
    private final class WriterBox: @unchecked Sendable {
        var writer: any ResponseBodyWriter
        init(_ writer: any ResponseBodyWriter) { self.writer = writer }
    }

    static func write(_ writer: inout any ResponseBodyWriter, _ buffer: ByteBuffer, logger: Logger, what: String) async throws {
        let box = WriterBox(writer)
        let written = try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                try await box.writer.write(buffer)
                return true
            }
            group.addTask {
                try await Task.sleep(for: .seconds(EventStream.stallSeconds))
                return false
            }
            let first = try await group.next()!
            group.cancelAll()
            return first
        }
        writer = box.writer
        guard written else {
            logger.notice("stream.stalled", metadata: ["stream": "\(what)", "after": "\(EventStream.stallSeconds)s"])
            throw Stalled()
        }
    }
}
