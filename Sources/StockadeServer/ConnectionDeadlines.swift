import Glibc
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOCore
import NIOHTTPTypes
import Synchronization

/// How long a client may take, so a hostile or broken client holds a connection for a bounded time:
/// `--idle-timeout` (no request under way), `--header-timeout` (from a request's first byte to the
/// end of its head), `--body-timeout` (from the head to the end of the body). A connection past one
/// of them is closed without an answer. Answering (a long `wait`, an event stream) is not bounded here.
public struct ConnectionTimeouts: Sendable, Equatable {
    public var idleSeconds: Int64
    public var headerSeconds: Int64
    public var bodySeconds: Int64

    public static let standard = ConnectionTimeouts(idleSeconds: 60, headerSeconds: 10, bodySeconds: 30)

    public init(idleSeconds: Int64, headerSeconds: Int64, bodySeconds: Int64) {
        self.idleSeconds = idleSeconds
        self.headerSeconds = headerSeconds
        self.bodySeconds = bodySeconds
    }

    /// The HTTP/1.1 server: Hummingbird's idle timeout, the header and body deadlines, and TLS when given.
    func serverBuilder(tls: ServerTLS?, budget: ConnectionBudget, logger: Logger) throws -> HTTPServerBuilder {
        let header = TimeAmount.seconds(headerSeconds), body = TimeAmount.seconds(bodySeconds)
        // The watch (behind the HTTP decoder) puts its `RequestDeadlines` at the front of the pipeline
        // when it is added, so Hummingbird's own HTTP/1 channel is used unchanged.
        let configuration = HTTP1Channel.Configuration(additionalChannelHandlers: [RequestPartWatch(header: header, body: body, budget: budget,
                                                                                                    logger: logger)],
                                                       idleTimeout: .seconds(idleSeconds))
        let plain = HTTPServerBuilder.http1(configuration: configuration)
        guard let tls else { return plain }
        // With TLS, `RequestDeadlines` sits in front of the TLS handler: the first bytes of the
        // handshake arm the header deadline, so a handshake that stalls is closed like a stalled
        // header; a connection that sends nothing at all is closed by the idle timeout.
        return try .tls(plain, tlsConfiguration: tls.configuration)
    }
}

/// How many connections the service holds at once (`--max-connections`). Each costs a descriptor and
/// needs no token, so clients holding many could otherwise use up the descriptors that runs (pipes,
/// pidfds, run directories) and the store need, and libdispatch ends the process when it cannot open
/// `/proc` for its thread pool. A connection past the limit is closed as soon as it is accepted,
/// without an answer; those already open are served as before.
public final class ConnectionBudget: Sendable {
    public let limit: Int
    private let open = Atomic<Int>(0)
    private let refused = Atomic<Int>(0)

    public init(limit: Int) { self.limit = limit }

    /// The default: half the descriptors the process may open, the other half left to runs and the
    /// store, and at least `reserve` left where the limit is small (but never under 16 connections).
    public static func standardLimit(descriptors: UInt64) -> Int {
        let d = Int(min(descriptors, 1 << 30))
        return max(16, min(d / 2, d - reserve))
    }

    /// The descriptors `--max-connections` must leave to everything else.
    public static let reserve = 256

    /// Counts a new connection; false (nothing counted) when the service holds `limit` already.
    func take() -> Bool {
        if open.wrappingAdd(1, ordering: .relaxed).newValue > limit {
            open.wrappingSubtract(1, ordering: .relaxed)
            return false
        }
        return true
    }

    func give() { open.wrappingSubtract(1, ordering: .relaxed) }

    /// How many connections were refused so far, this one included.
    func refusal() -> Int { refused.wrappingAdd(1, ordering: .relaxed).newValue }
}

/// Sees a connection's bytes before the HTTP decoder: the first byte of a request arms the header
/// deadline; `RequestPartWatch`, behind the decoder, says when the head and the body are complete.
final class RequestDeadlines: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    enum Phase { case idle, head, body, answering }

    private let header: TimeAmount
    private let body: TimeAmount
    private let logger: Logger
    private var phase = Phase.idle
    private var timer: Scheduled<Void>?
    private var context: ChannelHandlerContext?

    init(header: TimeAmount, body: TimeAmount, logger: Logger) {
        self.header = header
        self.body = body
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        disarm()
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        disarm()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if phase == .idle {
            phase = .head
            arm(header, "header")
        }
        context.fireChannelRead(data)
    }

    func headReceived() {
        phase = .body
        arm(body, "body")
    }

    func requestReceived() {
        phase = .answering
        disarm()
    }

    func responseSent() {
        // Bytes of a pipelined request that came while answering arm nothing until more arrive;
        // the idle timeout bounds that connection.
        if phase == .answering { phase = .idle }
    }

    private func arm(_ amount: TimeAmount, _ what: String) {
        disarm()
        guard let context else { return }
        timer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: amount) { [self] in
            timer = nil
            logger.info("connection.timeout", metadata: ["phase": "\(what)", "after": "\(amount.nanoseconds / 1_000_000_000)s"])
            self.context?.close(promise: nil)
        }
    }

    private func disarm() {
        timer?.cancel()
        timer = nil
    }
}

/// Behind the HTTP decoder: tells `RequestDeadlines` where each request and answer is.
final class RequestPartWatch: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let header: TimeAmount
    private let body: TimeAmount
    private let budget: ConnectionBudget
    private let logger: Logger
    private var deadlines: RequestDeadlines?
    private var counted = false

    init(header: TimeAmount, body: TimeAmount, budget: ConnectionBudget, logger: Logger) {
        self.header = header
        self.body = body
        self.budget = budget
        self.logger = logger
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if counted { budget.give() }
        counted = false
    }

    func handlerAdded(context: ChannelHandlerContext) {
        guard budget.take() else {
            let refused = budget.refusal()
            // Said for the first refusal and every 1000th after it, not once per connection of a flood.
            if refused % 1000 == 1 {
                logger.warning("connection.refused", metadata: ["limit": "\(budget.limit)", "refused": "\(refused)",
                                                                "why": "--max-connections connections are open"])
            }
            context.close(promise: nil)
            return
        }
        counted = true
        let deadlines = RequestDeadlines(header: header, body: body, logger: logger)
        do {
            try context.pipeline.syncOperations.addHandler(deadlines, position: .first)
            self.deadlines = deadlines
        } catch {
            // Fail closed: a connection without its deadlines is not served.
            context.close(promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head: deadlines?.headReceived()
        case .end: deadlines?.requestReceived()
        case .body: break
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) { deadlines?.responseSent() }
        context.write(data, promise: promise)
    }
}
