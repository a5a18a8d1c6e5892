import Glibc
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import StockadeClient

/// `https://` for the CLI: a TLS connection to the service (swift-nio-ssl on SwiftNIO) glued to one
/// end of a Unix socketpair; the other end is an ordinary blocking socket, so the client's HTTP code
/// (`ServiceConnection`, `ResponseReader` and their bounds) is the same for every kind of address.
///
/// The certificate must verify against the system's trust roots, or against the PEM file named by
/// `$STOCKADE_CA_FILE` (for a private CA or a self-signed service), for the host named in the URL.
/// TLS 1.2 or later. Linked by `stockade-server` only, which registers it (`ClientTLS.register`):
/// the one-shot `stockade` starts faster without SwiftNIO and swift-nio-ssl and hands a command
/// for an `https://` service to `stockade-server cli` (Benchmarks/BENCHMARKS.md).
public enum ClientTLS {
    /// Makes `https://` addresses reachable in this process: call it first thing.
    public static func register() {
        ServiceTLS.register { host, port, description, caFile throws(ClientError) in
            try TLSBridge.connect(host: host, port: port, description: description, caFile: caFile)
        }
    }
}

enum TLSBridge {
    /// Bytes relayed one way: from `partner`'s reads to this channel's writes; either side closing
    /// closes the other.
    final class Glue: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        // Set once on the event loop before any read (both channels share one loop).
        var partner: (any Channel)?
        /// On the TLS side: completed when the handshake is (failed with its error, or with the close).
        let handshake: EventLoopPromise<Void>?

        init(handshake: EventLoopPromise<Void>? = nil) { self.handshake = handshake }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            partner?.writeAndFlush(unwrapInboundIn(data), promise: nil)
        }

        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if let event = event as? TLSUserEvent, case .handshakeCompleted = event { handshake?.succeed(()) }
            context.fireUserInboundEventTriggered(event)
        }

        func channelInactive(context: ChannelHandlerContext) {
            handshake?.fail(ChannelError.eof)
            partner?.close(promise: nil)
            context.fireChannelInactive()
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            handshake?.fail(error)
            context.close(promise: nil)
        }
    }

    /// The client's end of a socketpair whose other end is relayed over TLS to `host`:`port`.
    static func connect(host: String, port: UInt16, description: String, caFile: String?) throws(ClientError) -> Int32 {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        if let file = caFile, !file.isEmpty {
            do {
                configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(file))
            } catch {
                throw ClientError(.usage, "$STOCKADE_CA_FILE: cannot read the PEM certificates in \(file): \(error)")
            }
        }
        let context: NIOSSLContext
        do {
            context = try NIOSSLContext(configuration: configuration)
        } catch {
            throw ClientError(.connect, "cannot set up TLS for \(description): \(error)")
        }
        // SNI only for names; the certificate is checked against the URL's host either way.
        let serverName: String? = ServiceAddress.isNumeric(host) ? nil : host
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw ClientError(.connect, "cannot make a socketpair: \(String(cString: strerror(errno)))")
        }
        let group = MultiThreadedEventLoopGroup.singleton
        let loop = group.next()
        let handshake = loop.makePromise(of: Void.self)
        let local = Glue(), remote = Glue(handshake: handshake)
        do {
            let tls = try ClientBootstrap(group: loop)
                .connectTimeout(.seconds(30))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let handler = try NIOSSLClientHandler(context: context, serverHostname: serverName)
                        try channel.pipeline.syncOperations.addHandler(handler)
                        try channel.pipeline.syncOperations.addHandler(remote)
                    }
                }
                .connect(host: host, port: Int(port)).wait()
            // The certificate is checked before anything is sent: a refusal is this call's error.
            let timeout = loop.scheduleTask(in: .seconds(30)) { handshake.fail(ChannelError.connectTimeout(.seconds(30))) }
            do {
                try handshake.futureResult.wait()
                timeout.cancel()
            } catch {
                timeout.cancel()
                tls.close(promise: nil)
                throw error
            }
            let inner = try ClientBootstrap(group: tls.eventLoop)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(local) }
                }
                .withConnectedSocket(pair[1]).wait()
            try tls.eventLoop.submit {
                remote.partner = inner
                local.partner = tls
                // The TLS side may have closed since the handshake: its close found no partner to close.
                if !tls.isActive { inner.close(promise: nil) }
            }.wait()
        } catch {
            close(pair[0])
            close(pair[1])
            throw ClientError(.connect, "cannot reach the service at \(description) over TLS: \(error)")
        }
        return pair[0]
    }
}
