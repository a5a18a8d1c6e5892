import FoundationEssentials
import StockadePolicy

/// The structured report of one run: exactly the keys of the contract
/// (DESIGN.md, "Report"); `stockade run --json` prints it as one object.
public struct RunReport: Sendable, Equatable, Codable {
    public enum Outcome: String, Sendable, Codable, CaseIterable {
        case exited, signaled, oom, timeout, seccomp, cancelled
        case setupFailed = "setup-failed"
    }

    public struct Violation: Sendable, Equatable, Codable {
        public var kind: String
        public var syscall: String?
        public var architecture: String?
        public var count: Int
        public var action: String?
        /// For `egress`: the host and port the worker asked for, and why it was refused.
        public var host: String?
        public var port: Int?
        public var reason: String?

        public init(kind: String, syscall: String? = nil, architecture: String? = nil, count: Int, action: String? = nil,
                    host: String? = nil, port: Int? = nil, reason: String? = nil) {
            self.kind = kind
            self.syscall = syscall
            self.architecture = architecture
            self.count = count
            self.action = action
            self.host = host
            self.port = port
            self.reason = reason
        }
    }

    /// What a run in `network.mode: "proxy"` sent through the egress proxy.
    public struct Egress: Sendable, Equatable, Codable {
        public var connections: Int
        public var allowed: Int
        public var denied: Int
        public var bytesOut: Int64
        public var bytesIn: Int64
        public init(connections: Int = 0, allowed: Int = 0, denied: Int = 0, bytesOut: Int64 = 0, bytesIn: Int64 = 0) {
            self.connections = connections
            self.allowed = allowed
            self.denied = denied
            self.bytesOut = bytesOut
            self.bytesIn = bytesIn
        }
    }

    public struct ResultVerdict: Sendable, Equatable, Codable {
        public var status: String
        public var reason: String?
        public init(status: String, reason: String?) {
            self.status = status
            self.reason = reason
        }
        enum CodingKeys: String, CodingKey { case status, reason }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(status, forKey: .status)
            try c.encode(reason, forKey: .reason)
        }
    }

    public struct Review: Sendable, Equatable, Codable {
        public var id: Int64?
        public var state: String
        public init(id: Int64?, state: String) {
            self.id = id
            self.state = state
        }
        enum CodingKeys: String, CodingKey { case id, state }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(id, forKey: .id)
            try c.encode(state, forKey: .state)
        }
    }

    public struct SetupError: Sendable, Equatable, Codable {
        public var stage: SetupStage
        public var errno: Int32
        public var message: String
        public init(stage: SetupStage, errno: Int32, message: String) {
            self.stage = stage
            self.errno = errno
            self.message = message
        }

        /// An audit-stage error: what could not be recorded, then, after `": "`, the store's own error
        /// when there is one. A store's error can name its URL or a host path: the service answers
        /// callers with the part before the first `": "` only (`API.forCaller`), so `what` never holds one.
        public static func audit(_ what: String, storeError: (any Error)? = nil) -> SetupError {
            SetupError(stage: .audit, errno: 0, message: auditMessage(what, storeError: storeError))
        }

        static func auditMessage(_ what: String, storeError: (any Error)?) -> String {
            precondition(!what.contains(": "), "an audit-stage message's own part holds \": \", where the store's error begins: \(what)")
            return storeError.map { "\(what): \($0)" } ?? what
        }
    }

    public var runId: String
    public var profile: String
    public var outcome: Outcome
    public var exitCode: Int32?
    public var signal: Int32?
    public var durationMs: Int64
    public var cpuTimeMs: Int64
    public var memoryPeakBytes: Int64
    public var violations: [Violation]
    public var orphansKilled: Int
    public var stdout: String
    public var stderr: String
    public var stdoutTruncated: Bool
    public var stderrTruncated: Bool
    public var result: ResultVerdict
    public var review: Review
    public var setupError: SetupError?
    /// Egress totals; nil (null) unless the run's network mode is `proxy`.
    public var egress: Egress?
    /// The batch request's `id`, echoed as the key `id` (only in `stockade batch` output).
    public var requestId: String?
    /// The batch input line the request was on, as the key `line` (only in `stockade batch` output).
    public var line: Int?
    /// The captured bytes exactly, base64, only when they are not valid UTF-8 (`stdout` then holds
    /// them with U+FFFD for each invalid sequence).
    public var stdoutBase64: String?
    public var stderrBase64: String?

    /// Base64 of `bytes` when they are not valid UTF-8, else nil.
    public static func base64IfNotUTF8(_ bytes: [UInt8]) -> String? {
        String(validating: bytes, as: UTF8.self) == nil ? Data(bytes).base64EncodedString() : nil
    }
    /// The manifest digest of the image the worker's root was made from.
    public var image: String?

    public init(runId: String, profile: String, outcome: Outcome) {
        self.runId = runId
        self.profile = profile
        self.outcome = outcome
        exitCode = nil
        signal = nil
        durationMs = 0
        cpuTimeMs = 0
        memoryPeakBytes = 0
        violations = []
        orphansKilled = 0
        stdout = ""
        stderr = ""
        stdoutTruncated = false
        stderrTruncated = false
        result = ResultVerdict(status: "none", reason: nil)
        review = Review(id: nil, state: "none")
        setupError = nil
        egress = nil
    }

    enum CodingKeys: String, CodingKey {
        case runId, profile, outcome, exitCode, signal, durationMs, cpuTimeMs, memoryPeakBytes, violations,
             orphansKilled, stdout, stderr, stdoutTruncated, stderrTruncated, result, review, setupError, egress
        case requestId = "id"
        case line, stdoutBase64, stderrBase64
    }

    /// Every key is always present; absent values are `null`, as the contract says.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(runId, forKey: .runId)
        try c.encode(profile, forKey: .profile)
        try c.encode(outcome, forKey: .outcome)
        try c.encode(exitCode, forKey: .exitCode)
        try c.encode(signal, forKey: .signal)
        try c.encode(durationMs, forKey: .durationMs)
        try c.encode(cpuTimeMs, forKey: .cpuTimeMs)
        try c.encode(memoryPeakBytes, forKey: .memoryPeakBytes)
        try c.encode(violations, forKey: .violations)
        try c.encode(orphansKilled, forKey: .orphansKilled)
        try c.encode(stdout, forKey: .stdout)
        try c.encode(stderr, forKey: .stderr)
        try c.encode(stdoutTruncated, forKey: .stdoutTruncated)
        try c.encode(stderrTruncated, forKey: .stderrTruncated)
        try c.encode(result, forKey: .result)
        try c.encode(review, forKey: .review)
        try c.encode(setupError, forKey: .setupError)
        try c.encode(egress, forKey: .egress)
        if let requestId { try c.encode(requestId, forKey: .requestId) }
        if let line { try c.encode(line, forKey: .line) }
        if let stdoutBase64 { try c.encode(stdoutBase64, forKey: .stdoutBase64) }
        if let stderrBase64 { try c.encode(stderrBase64, forKey: .stderrBase64) }
    }

    /// The exit status of `stockade run` for this report (DESIGN.md, "Exit status").
    public var exitStatus: Int32 {
        // The worker ran, but the supervisor could not finish its job (e.g. the
        // audit refused a write): never report that run as a success.
        if outcome != .setupFailed && setupError != nil { return 125 }
        return switch outcome {
        case .exited: exitCode ?? 0
        case .signaled: 128 + (signal ?? 0)
        case .oom: 137
        case .timeout: 124
        case .seccomp: 159
        case .cancelled: 130
        case .setupFailed:
            switch (setupError?.stage, setupError?.errno) {
            case (.exec?, 2?): Int32(127) // ENOENT: command not found
            case (.exec?, _): 126  // found but cannot be executed
            default: 125
            }
        }
    }

    /// One JSON object, compact, keys sorted: what `encode(to:)` gives, written without an encoder
    /// (every run's report goes through here; JSONEncoder was a measurable part of a run's CPU).
    public func json() -> String {
        jsonValue.serialized()
    }

    /// The report as a JSON value: every contract key always present, absent values `null`; a
    /// violation's optional keys only when set (as its synthesized `Codable` writes them).
    public var jsonValue: JSONValue {
        func int<I: BinaryInteger>(_ i: I?) -> JSONValue { i.map { JSONValue.number($0) } ?? .null }
        func string(_ s: String?) -> JSONValue { s.map { JSONValue.string($0) } ?? .null }
        var object: [String: JSONValue] = [
            "runId": .string(runId), "profile": .string(profile), "outcome": .string(outcome.rawValue),
            "exitCode": int(exitCode), "signal": int(signal), "durationMs": .number(durationMs),
            "cpuTimeMs": .number(cpuTimeMs), "memoryPeakBytes": .number(memoryPeakBytes),
            "violations": .array(violations.map { v in
                var o: [String: JSONValue] = ["kind": .string(v.kind), "count": .number(v.count)]
                if let syscall = v.syscall { o["syscall"] = .string(syscall) }
                if let architecture = v.architecture { o["architecture"] = .string(architecture) }
                if let action = v.action { o["action"] = .string(action) }
                if let host = v.host { o["host"] = .string(host) }
                if let port = v.port { o["port"] = .number(port) }
                if let reason = v.reason { o["reason"] = .string(reason) }
                return .object(o)
            }),
            "orphansKilled": .number(orphansKilled), "stdout": .string(stdout), "stderr": .string(stderr),
            "stdoutTruncated": .bool(stdoutTruncated), "stderrTruncated": .bool(stderrTruncated),
            "result": .object(["status": .string(result.status), "reason": string(result.reason)]),
            "review": .object(["id": int(review.id), "state": .string(review.state)]),
            "setupError": setupError.map { e in
                .object(["stage": .string(e.stage.rawValue), "errno": .number(e.errno), "message": .string(e.message)])
            } ?? .null,
            "egress": egress.map { e in
                .object(["connections": .number(e.connections), "allowed": .number(e.allowed), "denied": .number(e.denied),
                         "bytesOut": .number(e.bytesOut), "bytesIn": .number(e.bytesIn)])
            } ?? .null,
        ]
        if let requestId { object["id"] = .string(requestId) }
        if let line { object["line"] = .number(line) }
        if let stdoutBase64 { object["stdoutBase64"] = .string(stdoutBase64) }
        if let stderrBase64 { object["stderrBase64"] = .string(stderrBase64) }
        if let image { object["image"] = .string(image) }
        return .object(object)
    }

    /// The report read back from its JSON (what `jsonValue` writes, and what the service answers), by
    /// hand: a client that reads one report pays no `JSONDecoder` start-up (`JSONMembers` says why).
    /// Reads what the `Codable` decoder reads, and `image` as well; a bad member fails naming its path.
    public init(json: JSONValue) throws(JSONMembers.Invalid) {
        let o = try JSONMembers(json)
        self.init(runId: try o.string("runId"), profile: try o.string("profile"), outcome: try o.value("outcome", as: Outcome.self))
        exitCode = try o.optionalInt32("exitCode")
        signal = try o.optionalInt32("signal")
        durationMs = try o.int64("durationMs")
        cpuTimeMs = try o.int64("cpuTimeMs")
        memoryPeakBytes = try o.int64("memoryPeakBytes")
        violations = try o.objects("violations") { (v) throws(JSONMembers.Invalid) in
            Violation(kind: try v.string("kind"), syscall: try v.optionalString("syscall"),
                      architecture: try v.optionalString("architecture"), count: try v.int("count"),
                      action: try v.optionalString("action"), host: try v.optionalString("host"),
                      port: try v.optionalInt("port"), reason: try v.optionalString("reason"))
        }
        orphansKilled = try o.int("orphansKilled")
        stdout = try o.string("stdout")
        stderr = try o.string("stderr")
        stdoutTruncated = try o.bool("stdoutTruncated")
        stderrTruncated = try o.bool("stderrTruncated")
        let verdict = try o.object("result")
        result = ResultVerdict(status: try verdict.string("status"), reason: try verdict.optionalString("reason"))
        let review = try o.object("review")
        self.review = Review(id: try review.optionalInt64("id"), state: try review.string("state"))
        setupError = try o.optionalObject("setupError").map { (e) throws(JSONMembers.Invalid) in
            SetupError(stage: try e.value("stage", as: SetupStage.self), errno: try e.int32("errno"), message: try e.string("message"))
        }
        egress = try o.optionalObject("egress").map { (e) throws(JSONMembers.Invalid) in
            Egress(connections: try e.int("connections"), allowed: try e.int("allowed"), denied: try e.int("denied"),
                   bytesOut: try e.int64("bytesOut"), bytesIn: try e.int64("bytesIn"))
        }
        requestId = try o.optionalString("id")
        line = try o.optionalInt("line")
        stdoutBase64 = try o.optionalString("stdoutBase64")
        stderrBase64 = try o.optionalString("stderrBase64")
        image = try o.optionalString("image")
    }

    /// The one-line summary printed to stderr without `--json`.
    public var summary: String {
        var line = "stockade: run \(runId) \(outcome.rawValue)"
        switch outcome {
        case .exited: line += " with code \(exitCode ?? 0)"
        case .signaled: line += " by signal \(signal ?? 0)"
        case .setupFailed: line += ": \(setupError?.message ?? "")"
        default: break
        }
        line += " in \(durationMs) ms"
        if !violations.isEmpty {
            line += "; violations: " + violations.map { "\($0.kind)\(($0.syscall ?? $0.host).map { ":" + $0 } ?? "")×\($0.count)" }.joined(separator: ", ")
        }
        if let id = review.id {
            // The diff id is what the next command needs: name it with the way to look at it.
            let named: String = switch review.state {
            case "pending": "; diff \(id) pending review: stockade review show \(id)"
            case "conflict": "; diff \(id) in conflict: stockade review show \(id)"
            default: "; diff \(id) \(review.state)"
            }
            line += named
        }
        return line
    }
}
