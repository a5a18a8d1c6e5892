import Glibc
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOCore
import NIOHTTPTypes

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
    func serverBuilder(tls: ServerTLS?, logger: Logger) throws -> HTTPServerBuilder {
        let header = TimeAmount.seconds(headerSeconds), body = TimeAmount.seconds(bodySeconds)
        // The watch (behind the HTTP decoder) puts its `RequestDeadlines` at the front of the pipeline
        // when it is added, so Hummingbird's own HTTP/1 channel is used unchanged.
        let configuration = HTTP1Channel.Configuration(additionalChannelHandlers: [RequestPartWatch(header: header, body: body, logger: logger)],
                                                       idleTimeout: .seconds(idleSeconds))
        let plain = HTTPServerBuilder.http1(configuration: configuration)
        guard let tls else { return plain }
        // With TLS, `RequestDeadlines` sits in front of the TLS handler: the first bytes of the
        // handshake arm the header deadline, so a handshake that stalls is closed like a stalled
        // header; a connection that sends nothing at all is closed by the idle timeout.
        return try .tls(plain, tlsConfiguration: tls.configuration)
    }
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
    private let logger: Logger
    private var deadlines: RequestDeadlines?

    init(header: TimeAmount, body: TimeAmount, logger: Logger) {
        self.header = header
        self.body = body
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
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

/// The soft RLIMIT_NOFILE raised to the hard limit, so many idle clients exhaust neither the
/// service's descriptors nor its runs' (each run needs a few for its pipes and pidfd). Workers get
/// their profile's own limit (`limits.rlimits.nofile`), so this does not reach them.
enum DescriptorLimit {
    /// The soft limit in force after raising it.
    static func raise() -> UInt64 {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &raised) == 0 { return UInt64(raised.rlim_cur) }
        }
        return UInt64(limit.rlim_cur)
    }
}
