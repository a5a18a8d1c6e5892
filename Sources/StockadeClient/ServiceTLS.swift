import Synchronization

/// How this process reaches an `https://` service: the TLS client a binary that links one registers
/// first thing (`stockade-server`, with `ClientTLS`). The one-shot `stockade` links none (it starts
/// faster without SwiftNIO and swift-nio-ssl) and hands a command for an `https://` service to
/// `stockade-server cli` before reading anything.
public enum ServiceTLS {
    /// The client's end of a connection relayed over TLS to `host`:`port`, the certificate checked
    /// for `host` against the system's roots or the PEM file `caFile`.
    public typealias Connect = @Sendable (_ host: String, _ port: UInt16, _ description: String, _ caFile: String?) throws(ClientError) -> Int32

    private static let registered = Mutex<Connect?>(nil)

    public static func register(_ connect: @escaping Connect) {
        registered.withLock { $0 = connect }
    }

    /// Whether this process can reach an `https://` service.
    public static var isAvailable: Bool { registered.withLock { $0 != nil } }

    static func connect(host: String, port: UInt16, description: String, caFile: String?) throws(ClientError) -> Int32 {
        guard let connect = registered.withLock({ $0 }) else {
            throw ClientError(.connect, "cannot reach \(description): this binary has no TLS client; stockade runs a command for an https:// service in stockade-server, which must be installed beside it")
        }
        return try connect(host, port, description, caFile)
    }
}
