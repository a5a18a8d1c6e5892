/// The one public error of StockadeSupervisor.
public struct SupervisorError: Error, Sendable, Equatable, CustomStringConvertible {
    public struct Code: RawRepresentable, Hashable, Sendable {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public static let usage = Code(rawValue: "usage")
        public static let profile = Code(rawValue: "profile")
        public static let audit = Code(rawValue: "audit")
        public static let io = Code(rawValue: "io")
        public static let review = Code(rawValue: "review")
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
