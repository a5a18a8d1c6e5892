/// Why a call to `stockade serve` did not get an answer, or got one that is not HTTP we accept.
/// A service's own refusal (an HTTP error answer) is `ServiceRefusal`, not this.
public struct ClientError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// `--host` / `$STOCKADE_HOST` or `$STOCKADE_TOKEN` is not usable: a usage error.
        case usage
        /// The socket could not be reached (no service listening, no permission, ...).
        case connect
        /// The connection broke, or the answer broke the protocol or its bounds.
        case protocolViolation = "protocol"
        /// The service began an answer and sent no further byte of it within the stall limit
        /// (`ResponseReader.stallLimit`). Only a request that is safe to send again is, once: `run`'s
        /// submission (its Idempotency-Key) and its wait (a GET).
        case stalled
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}

/// An HTTP error answer of the service: `{"error":{"code","message","field"}}`.
public struct ServiceRefusal: Error, Sendable, CustomStringConvertible {
    public let status: Int
    public let code: String
    public let message: String
    public let field: String?
    /// `Retry-After` in seconds, when the answer had one (429 `queue-full`, 503 `profile-not-verified`).
    public let retryAfter: Int?

    public init(status: Int, code: String, message: String, field: String?, retryAfter: Int?) {
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.retryAfter = retryAfter
    }

    public var description: String { message }
}
