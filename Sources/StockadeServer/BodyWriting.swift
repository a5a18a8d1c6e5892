import Hummingbird
import Logging
import NIOCore

/// The request context of every route: Hummingbird's core context and the client's connection, so a
/// streamed answer can wait on what the client has actually taken (`BoundedWrite`).
struct StockadeRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let channel: any Channel

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}

/// Writes one bounded buffer of a streamed response and then waits until the connection has taken
/// it, for at most `EventStream.stallSeconds` in all: a client that does not read by then is cut off
/// (it resumes from where it was), so a slow reader holds about one buffer beyond the socket's,
/// never a backlog that grows with what there is to send.
///
/// Why not the writer's own back-pressure alone: `write` suspends only once the channel has said it
/// is not writable, and that news travels through the channel's event loop, so a producer that reads
/// quickly (a log file) can hand over many buffers before it arrives. Here each write is followed by
/// a round trip through the event loop (which runs after the writes handed over before it, so the
/// channel's pending bytes include them) and then by a wait, polled, until the channel is writable
/// again (its pending bytes under the high-water mark, 64 KiB by default).
enum BoundedWrite {
    struct Stalled: Error {}

    /// Holds the writer while a child task writes and the parent waits on the stall timer: only one
    /// task touches it at a time (the parent is suspended until both children have ended).
    private final class WriterBox: @unchecked Sendable {
        var writer: any ResponseBodyWriter
        init(_ writer: any ResponseBodyWriter) { self.writer = writer }
    }

    static let pollMilliseconds = 10

    static func write(_ writer: inout any ResponseBodyWriter, _ buffer: ByteBuffer, channel: any Channel, logger: Logger,
                      what: String) async throws {
        let deadline = ContinuousClock.now + .seconds(EventStream.stallSeconds)
        let box = WriterBox(writer)
        let written = try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                try await box.writer.write(buffer)
                // After the writes handed over so far have reached the channel, wait for it to drain
                // below its high-water mark.
                try await channel.eventLoop.submit {}.get()
                while !channel.isWritable {
                    guard channel.isActive else { return true }
                    try await Task.sleep(for: .milliseconds(Self.pollMilliseconds))
                }
                return true
            }
            group.addTask {
                try await Task.sleep(until: deadline)
                return false
            }
            let first = try await group.next()!
            group.cancelAll()
            return first
        }
        writer = box.writer
        guard written else {
            logger.notice("\(what).stalled", metadata: ["stream": "\(what)", "after": "\(EventStream.stallSeconds)s"])
            throw Stalled()
        }
    }
}
