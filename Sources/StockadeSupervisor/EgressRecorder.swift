import Logging
import StockadeAudit
import StockadeLinux
import StockadePolicy
import Synchronization

/// One run's egress on record: each relayed connection an `egress.opened` event before its
/// first byte, and each proxy connection an `egress.allowed` or `egress.denied` event as it ends, each per-run limit a `limit.hit` the first
/// time it is reached, and the policy's refusals gathered for the report's violations.
final class EgressRecorder: Sendable {
    struct Refusal: Hashable {
        var host: String?
        var port: Int?
        var reason: String
    }

    private let audit: any AuditStore
    private let runId: String
    private let logger: Logger
    private let state = Mutex<(refusals: [Refusal: Int], order: [Refusal], failed: Bool)>(([:], [], false))

    init(audit: any AuditStore, runId: String, logger: Logger) {
        self.audit = audit
        self.runId = runId
        self.logger = logger
    }

    /// Whether an event could not be recorded (the run then fails, as for any lost audit row).
    var failed: Bool { state.withLock { $0.failed } }

    func configuration(policy: EgressPolicy) -> EgressProxy.Configuration {
        var c = EgressProxy.Configuration(policy: policy)
        if let text = policy.egress.resolver, let (address, port) = ProfileDecoder.parseResolver(text) {
            let resolver = DNSResolver(server: address, port: port)
            c.resolve = { resolver.resolve($0) }
        }
        c.onEvent = { [self] in record($0) }
        c.onOpen = { [self] e in
            write("egress.opened") { try audit.record(runId: runId, kind: "egress.opened", detail: Self.openedDetail(e)) }
        }
        c.onLimit = { [self] name in
            write("limit.hit") {
                try audit.record(runId: runId, kind: "limit.hit", detail: .object(["limit": .string(name)]))
            }
        }
        return c
    }

    /// What an `egress.opened` row says: where the connection goes and which rule admitted it.
    static func openedDetail(_ e: EgressProxy.Event) -> JSONValue {
        guard case .object(var d) = detail(e) else { return .object([:]) }
        for key in ["bytesOut", "bytesIn", "durationMs", "bytesDropped", "reason"] { d[key] = nil }
        return .object(d)
    }

    static func detail(_ e: EgressProxy.Event) -> JSONValue {
        var d: [String: JSONValue] = ["bytesOut": .number(e.bytesOut), "bytesIn": .number(e.bytesIn), "durationMs": .number(e.durationMs)]
        if e.connection > 0 { d["connection"] = .number(e.connection) }
        if let k = e.kind { d["protocol"] = .string(k.rawValue) }
        // The worker chose the host: it is recorded as sent, the store's sanitizer escaping it.
        if let h = e.host { d["host"] = .string(h) }
        if let p = e.port { d["port"] = .number(p) }
        if let a = e.address { d["address"] = .string(a) }
        if let r = e.rule { d["rule"] = .string(r) }
        if let n = e.serverName { d["serverName"] = .string(n) }
        if e.bytesDropped > 0 { d["bytesDropped"] = .number(e.bytesDropped) }
        if let r = e.reason { d["reason"] = .string(r) }
        return .object(d)
    }

    func record(_ e: EgressProxy.Event) {
        if e.allowed {
            write("egress.allowed") { try audit.record(runId: runId, kind: "egress.allowed", detail: Self.detail(e)) }
        } else {
            write("egress.denied") { try audit.record(runId: runId, kind: "egress.denied", detail: Self.detail(e)) }
        }
        guard !e.allowed, e.policy, let reason = e.reason else { return }
        let key = Refusal(host: e.host.map { String($0.prefix(255)) }, port: e.port.map(Int.init), reason: reason)
        state.withLock { s in
            // Bounded: a run has at most maxConnections connections, each one refusal.
            if s.refusals[key] == nil { s.order.append(key) }
            s.refusals[key, default: 0] += 1
        }
    }

    @discardableResult
    private func write(_ kind: String, _ body: () throws -> Void) -> Bool {
        do {
            try body()
            return true
        } catch {
            state.withLock { $0.failed = true }
            logger.error("audit.write-failed", metadata: ["run.id": "\(runId)", "kind": "\(kind)", "error": "\(error)"])
            return false
        }
    }

    /// The report's violations for the refusals, in the order they first happened.
    var violations: [RunReport.Violation] {
        state.withLock { s in
            s.order.map { r in
                RunReport.Violation(kind: "egress", count: s.refusals[r] ?? 0, action: "refused", host: r.host, port: r.port, reason: r.reason)
            }
        }
    }
}
