import Crypto
import Foundation
import Glibc
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import StockadeAudit
import StockadePolicy
import StockadeSupervisor
import StockadeTokens

/// An error answer: `{"error":{"code":"...","message":"...","field":"..."}}`.
struct APIError: Error {
    let status: HTTPResponse.Status
    let code: String
    let message: String
    var field: String?
    var headers: HTTPFields = [:]
    /// `run-on-other-node`: the node that ran the run.
    var node: String?

    init(_ status: HTTPResponse.Status, _ code: String, _ message: String, field: String? = nil) {
        self.status = status
        self.code = code
        self.message = message
        self.field = field
    }

    var response: Response {
        var error: [String: JSONValue] = ["code": .string(code), "message": .string(message)]
        error["field"] = field.map { .string($0) } ?? .null
        if let node { error["node"] = .string(node) }
        return API.json(.object(["error": .object(error)]), status: status, headers: headers)
    }
}

/// What a handler answers, and the run it concerned (for the audit record).
struct Reply {
    var response: Response
    var runId: String?
}

/// Who is calling: the token's name and scopes.
struct Principal: Sendable {
    let name: String
    let record: TokenRecord
    /// Whether the token presented is still accepted now (not revoked, not expired, the same name):
    /// asked again by streams that outlive the call that opened them.
    let stillValid: @Sendable () -> Bool
}

/// Ends a stream whose token is no longer accepted: thrown from its body, so the response ends
/// without its last chunk and a client cannot take what it got for the whole stream.
struct TokenNoLongerAccepted: Error, CustomStringConvertible {
    var description: String { "the stream's token is no longer accepted (revoked or expired), or the token store could not be read" }
}

/// A stream's check of its caller's token, at most every `interval` (a read of the token store each
/// time): a token revoked or expired while the stream is open ends it within that long.
struct TokenRecheck: Sendable {
    static let interval: Duration = .seconds(5)
    let principal: Principal?
    private var checked = ContinuousClock.now

    init(_ principal: Principal?) {
        self.principal = principal
    }

    /// False once the token is no longer accepted (checked when `interval` has passed since the last look).
    mutating func stillValid() -> Bool {
        guard let principal, ContinuousClock.now - checked >= Self.interval else { return true }
        checked = .now
        return principal.stillValid()
    }
}

/// The `/v1` routes. Every call, answered or refused, is recorded as an `api.request` event.
final class API: Sendable {
    static let maxBody = 1 << 20
    static let idempotencyKey = HTTPField.Name("Idempotency-Key")!
    static let lastEventID = HTTPField.Name("Last-Event-ID")!
    static let nextOffset = HTTPField.Name("Stockade-Next-Offset")!

    let supervisor: Supervisor
    let registry: RunRegistry
    let tokens: TokenStore
    let shutdown: ShutdownFlag
    let logger: Logger

    /// The continuous verification's latest proof per profile (`--verify-every`), if it runs.
    let verification: VerificationStatus?
    /// The counters and histograms `/metrics` publishes after its gauges.
    let metrics: ServiceMetrics?
    /// Bounds the calls made without an authenticated caller, per peer.
    let anonymous: AnonymousLimiter
    /// Bounds the streams each principal holds open.
    let streams: StreamSlots
    /// Bounds the calls each principal makes (`--max-calls-per-token`); nil: no bound.
    let tokenRate: TokenRateLimiter?

    init(supervisor: Supervisor, registry: RunRegistry, tokens: TokenStore, shutdown: ShutdownFlag, logger: Logger,
         verification: VerificationStatus? = nil, metrics: ServiceMetrics? = nil, streamsPerToken: Int = StreamSlots.defaultPerPrincipal,
         callsPerToken: Int = 0) {
        streams = StreamSlots(perPrincipal: streamsPerToken)
        tokenRate = TokenRateLimiter(perSecond: callsPerToken) { principal, calls, seconds in
            API.recordThrottled(supervisor, logger, who: ("principal", principal), calls: calls, seconds: seconds,
                                burst: callsPerToken, perSecond: callsPerToken)
        }
        self.verification = verification
        self.metrics = metrics
        self.supervisor = supervisor
        self.registry = registry
        self.tokens = tokens
        self.shutdown = shutdown
        self.logger = logger
        anonymous = AnonymousLimiter { peer, calls, seconds in
            let all = peer == AnonymousLimiter.everyone
            API.recordThrottled(supervisor, logger, who: ("peer", peer), calls: calls, seconds: seconds,
                                burst: Int(all ? AnonymousLimiter.allBurst : AnonymousLimiter.burst),
                                perSecond: Int(all ? AnonymousLimiter.allPerSecond : AnonymousLimiter.perSecond))
        }
    }

    /// One `api.throttled` row: `calls` not recorded one by one for `who` (a peer or a token's name)
    /// over `seconds`, under the bound (`burst`, `perSecond`); a row the trail refuses is logged.
    static func recordThrottled(_ supervisor: Supervisor, _ logger: Logger, who: (key: String, value: String), calls: Int, seconds: Int,
                                burst: Int, perSecond: Int) {
        do {
            try supervisor.audit.record(runId: nil, kind: "api.throttled", detail: .object([
                who.key: .string(who.value), "calls": .number(calls), "seconds": .number(seconds),
                "burst": .number(burst), "perSecond": .number(perSecond),
            ]))
        } catch {
            logger.error("audit.write-failed", metadata: ["kind": "api.throttled", "\(who.key)": "\(who.value)", "calls": "\(calls)", "error": "\(error)"])
        }
    }

    var stateDirectory: String { supervisor.stateDirectory }

    func router() -> Router<StockadeRequestContext> {
        let router = Router(context: StockadeRequestContext.self)
        router.addMiddleware { UnmatchedRoutes(api: self) }
        router.get("/v1/health", use: endpoint("/v1/health", scope: nil, health))
        router.post("/v1/runs", use: endpoint("/v1/runs", scope: .runWrite, submit))
        router.get("/v1/runs", use: endpoint("/v1/runs", scope: .runRead, list))
        router.get("/v1/runs/{id}", use: endpoint("/v1/runs/{id}", scope: .runRead, show))
        router.post("/v1/runs/{id}/cancel", use: endpoint("/v1/runs/{id}/cancel", scope: .runWrite, cancel))
        router.get("/v1/runs/{id}/wait", use: endpoint("/v1/runs/{id}/wait", scope: .runRead, wait))
        router.get("/v1/runs/{id}/logs", use: endpoint("/v1/runs/{id}/logs", scope: .runRead, logs))
        router.get("/v1/runs/{id}/receipt", use: endpoint("/v1/runs/{id}/receipt", scope: .runRead, receipt))
        router.get("/v1/runs/{id}/result", use: endpoint("/v1/runs/{id}/result", scope: .runRead, result))
        router.get("/v1/runs/{id}/result/**", use: endpoint("/v1/runs/{id}/result/{path}", scope: .runRead, resultFile))
        router.post("/v1/verify", use: endpoint("/v1/verify", scope: .admin, verify))
        router.get("/v1/reviews", use: endpoint("/v1/reviews", scope: .reviewRead, reviews))
        router.get("/v1/reviews/{id}", use: endpoint("/v1/reviews/{id}", scope: .reviewRead, review))
        router.post("/v1/reviews/{id}/accept", use: endpoint("/v1/reviews/{id}/accept", scope: .reviewSubmit, acceptReview))
        router.post("/v1/reviews/{id}/reject", use: endpoint("/v1/reviews/{id}/reject", scope: .reviewSubmit, rejectReview))
        router.get("/v1/events", use: endpoint("/v1/events", scope: .auditRead, events))
        router.get("/metrics", use: endpoint("/metrics", scope: .auditRead, metrics))
        return router
    }

    // MARK: The frame: authentication, errors, audit

    typealias Handler = @Sendable (Request, StockadeRequestContext, Principal?) async throws -> Reply

    func endpoint(_ route: String, scope: TokenScope?, _ handler: @escaping Handler) -> @Sendable (Request, StockadeRequestContext) async throws -> Response {
        { request, context in
            var principal: Principal?
            var authFailure: String?
            var reply: Reply
            var counted = false
            do {
                if let scope {
                    principal = try self.authenticate(request, &authFailure)
                    if let limiter = self.tokenRate, let seconds = limiter.admit(principal!.name) {
                        counted = true
                        throw self.rateLimited(principal!.name, seconds: seconds, perSecond: limiter.perSecond)
                    }
                    guard principal!.record.allows(scope) else {
                        throw APIError(.forbidden, "forbidden", "this token lacks the scope \(scope.rawValue) that \(request.method.rawValue) \(route) needs")
                    }
                }
                reply = try await handler(request, context, principal)
            } catch let error as APIError {
                reply = Reply(response: error.response, runId: context.parameters.get("id"))
            } catch {
                // The error can name the store or a file on the host: it stays in the log, under a
                // reference the answer gives, so an operator can find it and a caller learns nothing more.
                reply = Reply(response: self.failed("internal", "the service failed", error, route: route).response, runId: nil)
            }
            return self.audited(request, context, route: route, principal: principal?.name, authFailure: authFailure, reply: reply,
                                counted: counted)
        }
    }

    /// 429 `rate-limited`: `name` made its `--max-calls-per-token` calls in the last second.
    func rateLimited(_ name: String, seconds: Int, perSecond: Double) -> APIError {
        var refusal = APIError(.tooManyRequests, "rate-limited",
                               "\(name) made \(Int(perSecond)) calls within a second, the most one token may (--max-calls-per-token): send again in \(seconds) s")
        refusal.headers[.retryAfter] = "\(seconds)"
        return refusal
    }

    /// A run's report as a caller is given it. A run the audit store failed (`setupError.stage`
    /// `audit`) has a message that can quote the store's URL or file and its error (`<what>:
    /// <error>`, made by `RunReport.SetupError.audit`, whose `<what>` never holds `": "`): the answer
    /// keeps what could not be recorded and says where the whole message is, the run's `report.json`
    /// on the host that ran it, as a 500 keeps its cause for the log.
    static func forCaller(_ report: JSONValue) -> JSONValue {
        guard var members = report.object, var error = members["setupError"]?.object, error["stage"]?.string == "audit",
              let message = error["message"]?.string, let colon = message.range(of: ": ") else { return report }
        error["message"] = .string(String(message[..<colon.lowerBound]) + " (the store's error is in the run's report.json on the host that ran it)")
        members["setupError"] = .object(error)
        return .object(members)
    }

    /// A 500 whose cause is on the service's side (its store, a key file, an unexpected error).
    /// The error can name the store's URL or a host path: it goes to the log as an `api.failed`
    /// entry under a fresh reference, and the answer says what could not be done and gives that
    /// reference, quoting nothing of the error.
    func failed(_ code: String, _ what: String, _ error: Any, route: String? = nil) -> APIError {
        let reference = API.failureReference()
        var metadata: Logger.Metadata = ["code": "\(code)", "reference": "\(reference)", "error": "\(error)"]
        if let route { metadata["route"] = "\(route)" }
        logger.error("api.failed", metadata: metadata)
        return APIError(.internalServerError, code, "\(what) (reference \(reference): the service's log says why under api.failed)")
    }

    /// 16 hex digits naming one `api.failed` log entry.
    static func failureReference() -> String {
        var generator = SystemRandomNumberGenerator()
        let value = generator.next() as UInt64
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    /// Records the call; a call the trail cannot record is answered 500 (its effect, if any, stands).
    /// A call without an authenticated caller (which has no effect) from a peer over its bound is
    /// answered as usual but not recorded on its own: it is counted in an `api.throttled` row; so is
    /// a call refused `rate-limited` (`counted`: the token's limiter has counted it).
    func audited(_ request: Request, _ context: StockadeRequestContext, route: String, principal: String?, authFailure: String?,
                 reply: Reply, counted: Bool = false) -> Response {
        if counted || (principal == nil && !anonymous.admit(AnonymousLimiter.peer(context.channel.remoteAddress))) {
            metrics?.request(route: route, method: request.method.rawValue, status: reply.response.status.code)
            return reply.response
        }
        var detail: [String: JSONValue] = [
            "principal": principal.map { .string($0) } ?? .null, "method": .string(request.method.rawValue),
            "route": .string(route), "status": .number(reply.response.status.code),
            "runId": reply.runId.flatMap { RunIds.isValid($0) ? JSONValue.string($0) : nil } ?? .null,
        ]
        if let authFailure { detail["authFailure"] = .string(authFailure) }
        var response = reply.response
        do {
            try supervisor.audit.record(runId: nil, kind: "api.request", detail: .object(detail))
        } catch {
            logger.error("audit.write-failed", metadata: ["kind": "api.request", "error": "\(error)"])
            response = failed("audit-unavailable", "the call could not be recorded in the audit trail", error, route: route).response
        }
        metrics?.request(route: route, method: request.method.rawValue, status: response.status.code)
        return response
    }

    func authenticate(_ request: Request, _ failure: inout String?) throws -> Principal {
        let header = request.headers[.authorization]
        var presented: String?
        if let header {
            guard header.hasPrefix("Bearer ") else {
                failure = "malformed"
                throw unauthorized("the Authorization header must be \"Bearer <token>\"")
            }
            presented = String(header.dropFirst("Bearer ".count)).trimmingCharacters(in: .whitespaces)
        }
        let result: Result<TokenRecord, TokenRejection>
        do {
            result = try tokens.authenticate(presented)
        } catch {
            // Answered before anyone is authenticated: the store's location and error stay in the log.
            logger.error("token-store.failed", metadata: ["error": "\(error)"])
            throw APIError(.internalServerError, "token-store-unavailable", "cannot read the token store (the service's log says why)")
        }
        switch result {
        case .success(let record):
            let name = record.name
            return Principal(name: name, record: record, stillValid: { [tokens, presented] in
                // A store that cannot be read now cannot say the token still holds: the stream ends
                // (its client resumes it by seq, and is checked afresh).
                guard case .success(let again)? = try? tokens.authenticate(presented) else { return false }
                return again.name == name
            })
        case .failure(let rejection):
            failure = rejection.rawValue
            switch rejection {
            case .missing: throw unauthorized("no bearer token: send Authorization: Bearer <token> (stockade token create makes one)")
            default: throw unauthorized("the bearer token is unknown, expired or revoked")
            }
        }
    }

    func unauthorized(_ message: String) -> APIError {
        var error = APIError(.unauthorized, "unauthorized", message)
        error.headers[.wwwAuthenticate] = "Bearer"
        return error
    }

    static func json(_ value: JSONValue, status: HTTPResponse.Status = .ok, headers: HTTPFields = [:]) -> Response {
        var headers = headers
        headers[.contentType] = "application/json"
        var buffer = ByteBuffer()
        buffer.writeString(value.serialized() + "\n")
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: buffer))
    }

    static func query(_ request: Request) -> [String: String] {
        var out: [String: String] = [:]
        guard let query = request.uri.query else { return out }
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            func decode(_ s: Substring) -> String { String(s).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String(s) }
            let key = decode(parts[0])
            if out[key] == nil { out[key] = parts.count > 1 ? decode(parts[1]) : "" }
        }
        return out
    }

    func runId(_ context: StockadeRequestContext) throws -> String {
        let id = context.parameters.get("id") ?? ""
        guard RunIds.isValid(id) else { throw APIError(.notFound, "not-found", "no run \(id) (run ids are 26-character ULIDs)", field: "id") }
        return id
    }

    // MARK: Routes

    @Sendable func health(_ request: Request, _ context: StockadeRequestContext, _ principal: Principal?) async throws -> Reply {
        let load = await registry.service.load
        let draining = await registry.isDraining
        return Reply(response: API.json(.object([
            "status": .string(draining ? "draining" : "ok"), "running": .number(load.running), "queued": .number(load.queued),
            "maxRunning": .number(registry.service.admission.maxRunning), "maxQueued": .number(registry.service.admission.maxQueued),
        ])), runId: nil)
    }

    @Sendable func metrics(_ request: Request, _ context: StockadeRequestContext, _ principal: Principal?) async throws -> Reply {
        let load = await registry.service.load
        let entries = await verification?.entries ?? [:]
        var headers = HTTPFields()
        headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
        let text = Metrics.text(load: load, verification: entries) + (metrics?.text ?? "")
        return Reply(response: Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: text))), runId: nil)
    }

    @Sendable func submit(_ request: Request, _ context: StockadeRequestContext, _ principal: Principal?) async throws -> Reply {
        let body = try await API.body(request)
        var key: String?
        if let value = request.headers[API.idempotencyKey] {
            guard (1...255).contains(value.utf8.count), value.utf8.allSatisfy({ $0 >= 0x21 && $0 <= 0x7E }) else {
                throw APIError(.badRequest, "invalid-header", "Idempotency-Key: must be 1 to 255 printable ASCII characters without spaces", field: "Idempotency-Key")
            }
            key = value
        }
        var parsed: BatchRequest
        do {
            parsed = try BatchRequest.parse(body)
        } catch {
            throw API.invalidRequest(error.description)
        }
        if registry.node == nil, let problem = parsed.withoutNodesProblem("this service (started without --node)") {
            throw API.invalidRequest(problem.description)
        }
        // Recorded in run.created: the principal that may not decide this run's diff.
        parsed.options.submittedBy = principal?.name
        // A profile under continuous verification whose required controls stopped holding runs nothing.
        if let verification, let reason = await verification.refusal(for: parsed.options.profile) {
            var refusal = APIError(.serviceUnavailable, "profile-not-verified", reason, field: "profile")
            refusal.headers[.retryAfter] = "10"
            throw refusal
        }
        let hash = Hex.lowercase(SHA256.hash(data: body))
        let queued = registry.node.map { _ in
            RunRegistry.Queued(body: String(decoding: body, as: UTF8.self), nodeLabels: parsed.nodeLabels, retries: parsed.retries)
        }
        switch await registry.submit(parsed.options, principal: principal?.name ?? "", idempotencyKey: key, bodyHash: hash, queued: queued) {
        case .success(let (runId, replayed)):
            var state = await registry.submitted(runId)?.handle.currentState.rawValue ?? "finished"
            if registry.node != nil, let row = try queuedRun(runId) { state = API.state(row) }
            var answer: [String: JSONValue] = ["id": .string(runId), "state": .string(state), "replayed": .bool(replayed)]
            if let requestId = parsed.id { answer["requestId"] = .string(requestId) }
            return Reply(response: API.json(.object(answer), status: .accepted), runId: runId)
        case .failure(.queueFull(let error)):
            var refusal = APIError(.tooManyRequests, "queue-full", error.description)
            refusal.headers[.retryAfter] = "5"
            throw refusal
        case .failure(.quotaExceeded(let limit)):
            var refusal = APIError(.tooManyRequests, "quota-exceeded",
                                   "\(principal?.name ?? "this principal") has \(limit) runs queued or running, the most --max-per-principal allows: wait for one to finish")
            refusal.headers[.retryAfter] = "5"
            throw refusal
        case .failure(.closed):
            throw APIError(.serviceUnavailable, "shutting-down", "the service is shutting down and admits no more runs")
        case .failure(.queueFailed(let message)):
            throw failed("queue-unavailable", "the shared run queue did not confirm the run, which may be queued all the same: retry with the same Idempotency-Key (it answers the run's id if it was queued) rather than as a new submission", message)
        case .failure(.keyStoreFailed(let message)):
            throw failed("idempotency-store-unavailable", "cannot read the stored idempotency keys, so nothing was started", message)
        case .failure(.keyReused):
            throw APIError(.unprocessableContent, "idempotency-key-reused",
                           "this Idempotency-Key was used before with another body: use a new key for a new run", field: "Idempotency-Key")
        }
    }

    /// The request body, at most 1 MiB (413 beyond).
    static func body(_ request: Request) async throws -> [UInt8] {
        if let length = request.headers[.contentLength].flatMap(Int.init), length > API.maxBody {
            throw APIError(.contentTooLarge, "body-too-large", "the request body is \(length) bytes; at most 1 MiB (1048576) is accepted")
        }
        var body: [UInt8] = []
        for try await buffer in request.body {
            body += buffer.readableBytesView
            if body.count > API.maxBody {
                throw APIError(.contentTooLarge, "body-too-large", "the request body is over 1 MiB (1048576 bytes)")
            }
        }
        return body
    }

    /// A batch parser message (`key: reason`, `not valid JSON: ...`) as a 400 naming the field.
    static func invalidRequest(_ description: String) -> APIError {
        if description.hasPrefix("not valid JSON") || description.hasPrefix("expected a JSON object") {
            return APIError(.badRequest, "invalid-json", "the body must be one JSON object: \(description)")
        }
        if let colon = description.range(of: ": ") {
            let field = String(description[..<colon.lowerBound])
            if !field.isEmpty, field.count <= 200, !field.contains(" ") {
                return APIError(.badRequest, "invalid-field", description, field: field)
            }
        }
        return APIError(.badRequest, "invalid-request", description)
    }

    /// A run's state and, once finished, its report: from this service's registry, else the run
    /// directory's report.json, else the audit trail. Nil when no run has the id.
    func lookup(_ runId: String) async throws -> (state: String, report: JSONValue?)? {
        if let submitted = await registry.submitted(runId) {
            let state = submitted.handle.currentState
            if state == .finished { return ("finished", API.forCaller(await submitted.handle.report().jsonValue)) }
            return (state.rawValue, nil)
        }
        if let report = await registry.refusedReport(runId) { return ("finished", API.forCaller(report.jsonValue)) }
        let reportPath = stateDirectory + "/runs/" + runId + "/report.json"
        if let bytes = FileBytes.read(reportPath, limit: 64 << 20),
           let value = try? StrictJSON.parse(bytes, limits: .init(maxBytes: 64 << 20, maxDepth: 16)) {
            return ("finished", API.forCaller(value))
        }
        var found: String?
        try supervisor.audit.runs { run in
            if run.runId == runId { found = run.state }
        }
        return found.map { ($0, nil) }
    }

    @Sendable func show(_ request: Request, _ context: StockadeRequestContext, _ principal: Principal?) async throws -> Reply {
        let id = try runId(context)
        if registry.node != nil, await registry.submitted(id) == nil, let row = try queuedRun(id) {
            var answer = API.placement(row)
            answer["id"] = .string(id)
            answer["state"] = .string(API.state(row))
            answer["report"] = API.report(row) ?? .null
            return Reply(response: API.json(.object(answer)), runId: id)
        }
        guard let (state, report) = try await lookup(id) else { throw APIError(.notFound, "not-found", "no run \(id)", field: "id") }
        return Reply(response: API.json(.object(try withPlacement(["id": .string(id), "state": .string(state), "report": report ?? .null], id))),
                     runId: id)
    }

    @Sendable func wait(_ request: Request, _ context: StockadeRequestContext, _ principal: Principal?) async throws -> Reply {
        let id = try runId(context)
        if let submitted = await registry.submitted(id) {
            let report = await submitted.handle.report()
            return Reply(response: API.json(.object(try withPlacement(["id": .string(id), "state": .string("finished"),
                                                                       "report": API.forCaller(report.jsonValue)], id))),
                         runId: id)
        }
        if registry.node != nil, try queuedRun(id) != nil {
            return try await waitInQueue(id)
        }
        guard let (state, report) = try await lookup(id) else { throw APIError(.notFound, "not-found", "no run \(id)", field: "id") }
        guard let report else {
            throw APIError(.conflict, "not-waitable", "run \(id) is \(state) and was not started by this service: its report cannot be awaited here")
        }
        return Reply(response: API.json(.object(["id": .string(id), "state": .string(state), "report": report])), runId: id)
    }

    @Sendable func cancel(_ request: Request, _ context: StockadeRequestContext, _ principal: Principal?) async throws -> Reply {
        let id = try runId(context)
        if let submitted = await registry.submitted(id) {
            submitted.handle.cancel()
            // In the queue too, so a reaper never tries again a run its caller cancelled.
            if let node = registry.node, (try? queuedRun(id)) != nil {
                do { _ = try node.queue.requestCancel(runId: id) } catch {
                    logger.error("node.cancel-not-recorded", metadata: ["run.id": "\(id)", "error": "\(error)"])
                }
            }
            return Reply(response: API.json(.object(["id": .string(id), "state": .string(submitted.handle.currentState.rawValue),
                                                     "cancelRequested": .bool(true)]), status: .accepted), runId: id)
        }
        if let node = registry.node, try queuedRun(id) != nil {
            let outcome: QueueCancel
            do {
                outcome = try node.queue.requestCancel(runId: id)
            } catch {
                throw queueUnavailable(error)
            }
            switch outcome {
            case .cancelled:
                return Reply(response: API.json(.object(["id": .string(id), "state": .string("cancelled"), "cancelRequested": .bool(true)]),
                                                status: .accepted), runId: id)
            case .requested(let owner):
                return Reply(response: API.json(.object(["id": .string(id), "state": .string("running"), "cancelRequested": .bool(true),
                                                         "node": .string(owner)]), status: .accepted), runId: id)
            case .ended(let state):
                throw APIError(.conflict, "not-cancellable", "run \(id) is \(state == .claimed ? "running" : state.rawValue): it cannot be cancelled")
            }
        }
        guard let (state, _) = try await lookup(id) else { throw APIError(.notFound, "not-found", "no run \(id)", field: "id") }
        throw APIError(.conflict, "not-cancellable", "run \(id) is \(state)\(state == "finished" ? "" : " and was not started by this service"): it cannot be cancelled")
    }

    @Sendable func list(_ request: Request, _ context: StockadeRequestContext, _ principal: Principal?) async throws -> Reply {
        let query = API.query(request)
        let states: Set = registry.node == nil ? ["queued", "running", "finished", "abandoned"] : ["queued", "running", "finished", "abandoned", "cancelled"]
        if let state = query["state"], !states.contains(state) {
            throw APIError(.badRequest, "invalid-parameter", "state: must be \(states.sorted().joined(separator: ", ")), found \(state)", field: "state")
        }
        var wantedLabel: (String, String)?
        if let label = query["label"] {
            guard let eq = label.firstIndex(of: "=") else {
                throw APIError(.badRequest, "invalid-parameter", "label: must be KEY=VALUE, found \(label)", field: "label")
            }
            wantedLabel = (String(label[..<eq]), String(label[label.index(after: eq)...]))
        }
        var limit = 100
        if let text = query["limit"] {
            guard let n = Int(text), (1...1000).contains(n) else {
                throw APIError(.badRequest, "invalid-parameter", "limit: must be 1 to 1000, found \(text)", field: "limit")
            }
            limit = n
        }
        let after = query["after"] ?? ""
        if !after.isEmpty && !RunIds.isValid(after) {
            throw APIError(.badRequest, "invalid-parameter", "after: must be a run id (the last id of the previous page)", field: "after")
        }
        if let node = registry.node {
            return try listQueue(node, after: after, limit: limit, state: query["state"], label: wantedLabel)
        }
        struct Row { var state: String; var outcome: String?; var exitStatus: Int32?; var name: String?; var labels: [String: String]; var createdAt: String? }
        var rows: [String: Row] = [:]
        var tags: [String: (String?, [String: String])] = [:]
        try supervisor.audit.events(runId: nil, since: nil, kind: "run.created") { event in
            guard let runId = event.runId, let detail = event.detailValue?.object else { return }
            var labels: [String: String] = [:]
            for (k, v) in detail["labels"]?.object ?? [:] { if let s = v.string { labels[k] = s } }
            tags[runId] = (detail["name"]?.string, labels)
        }
        try supervisor.audit.runs { run in
            let tag = tags[run.runId] ?? (nil, [:])
            rows[run.runId] = Row(state: run.state, outcome: run.outcome, exitStatus: run.exitStatus, name: tag.0, labels: tag.1, createdAt: run.createdAt)
        }
        for (runId, submitted) in await registry.all {
            let state = submitted.handle.currentState
            if var row = rows[runId] {
                if state != .finished { row.state = state.rawValue }
                rows[runId] = row
            } else {
                rows[runId] = Row(state: state == .finished ? "running" : state.rawValue, outcome: nil, exitStatus: nil,
                                  name: submitted.name, labels: submitted.labels, createdAt: nil)
            }
        }
        let selected = rows.filter { id, row in
            id > after && (query["state"].map { row.state == $0 } ?? true)
                && (wantedLabel.map { row.labels[$0.0] == $0.1 } ?? true)
        }.sorted { $0.key < $1.key }
        let page = selected.prefix(limit)
        let items: [JSONValue] = page.map { id, row in
            .object([
                "id": .string(id), "state": .string(row.state), "outcome": row.outcome.map { .string($0) } ?? .null,
                "exitStatus": row.exitStatus.map { .number($0) } ?? .null, "name": row.name.map { .string($0) } ?? .null,
                "labels": .object(row.labels.mapValues { .string($0) }), "createdAt": row.createdAt.map { .string($0) } ?? .null,
            ])
        }
        let next: JSONValue = selected.count > limit ? .string(page.last!.key) : .null
        return Reply(response: API.json(.object(["runs": .array(items), "next": next])), runId: nil)
    }

    // MARK: Events

    @Sendable func events(_ request: Request, _ context: StockadeRequestContext, _ principal: Principal?) async throws -> Reply {
        let query = API.query(request)
        var since: Int64 = 0
        if let text = request.headers[API.lastEventID] {
            guard let n = Int64(text.trimmingCharacters(in: .whitespaces)), n >= 0 else {
                throw APIError(.badRequest, "invalid-header", "Last-Event-ID: must be an event seq, found \(text)", field: "Last-Event-ID")
            }
            since = n
        } else if let text = query["since"] {
            guard let n = Int64(text), n >= 0 else { throw APIError(.badRequest, "invalid-parameter", "since: must be an event seq (0 or more), found \(text)", field: "since") }
            since = n
        }
        let run = query["run"]
        if let run, !RunIds.isValid(run) { throw APIError(.badRequest, "invalid-parameter", "run: must be a run id, found \(run)", field: "run") }
        let kind = query["kind"]
        if let kind, !AuditEventKind.known.contains(kind) {
            throw APIError(.badRequest, "invalid-parameter", "kind: unknown event kind \(kind) (known: \(AuditEventKind.known.joined(separator: ", ")))", field: "kind")
        }
        var headers = HTTPFields()
        headers[.contentType] = "text/event-stream"
        headers[.cacheControl] = "no-store"
        let slot = try streamSlot(principal, context)
        let stream = EventStream(audit: supervisor.audit, channel: context.channel, shutdown: shutdown, since: since, runId: run, kind: kind,
                                 logger: logger, recheck: TokenRecheck(principal))
        return Reply(response: Response(status: .ok, headers: headers, body: ResponseBody { writer in
            defer { slot.release() }
            try await stream.run(&writer)
        }), runId: run)
    }

    /// One of the principal's stream slots, or 429 `too-many-streams`.
    func streamSlot(_ principal: Principal?, _ context: StockadeRequestContext) throws -> StreamSlots.Slot {
        let name = principal?.name ?? ""
        guard let slot = streams.take(name) else {
            var refusal = APIError(.tooManyRequests, "too-many-streams",
                                   "\(name) holds \(streams.perPrincipal) streams open (events or followed logs), the most one token may (--max-streams-per-token): close one first")
            refusal.headers[.retryAfter] = "5"
            throw refusal
        }
        slot.release(onClose: context.channel)
        return slot
    }
}

/// A route no handler matches: a JSON 404 (or the router's status), recorded like any other call.
struct UnmatchedRoutes: RouterMiddleware {
    typealias Context = StockadeRequestContext
    let api: API

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError {
            let reply = Reply(response: APIError(error.status, error.status == .notFound ? "not-found" : "http-error",
                                                 error.status == .notFound ? "no route \(request.method.rawValue) \(request.uri.path)" : (error.body ?? "\(error.status)")).response,
                              runId: nil)
            return api.audited(request, context, route: "unmatched", principal: nil, authFailure: nil, reply: reply)
        }
    }
}

/// Server-Sent Events over the audit trail: `id:` is the event's seq. The store is polled; each
/// batch is bounded, and a write the client does not take within `stallSeconds` ends the stream,
/// so a slow reader holds at most one batch and the socket's buffers.
struct EventStream: Sendable {
    let audit: any AuditStore
    /// The client's connection: each write waits until it has taken the last one (`BoundedWrite`).
    let channel: any Channel
    let shutdown: ShutdownFlag
    var since: Int64
    let runId: String?
    let kind: String?
    let logger: Logger
    let recheck: TokenRecheck
    static let batch = 256
    static let pollMilliseconds: UInt64 = 200
    static let keepAliveSeconds = 15.0
    /// 30 s, or `$STOCKADE_SERVE_STALL_SECONDS` (1 to 3600) for tests that stall a reader.
    static let stallSeconds: UInt64 = {
        let value = ProcessInfo.processInfo.environment["STOCKADE_SERVE_STALL_SECONDS"].flatMap(UInt64.init) ?? 30
        return (1...3600).contains(value) ? value : 30
    }()

    struct Full: Error {}

    func run(_ writer: inout any ResponseBodyWriter) async throws {
        var cursor = since
        var lastWrite = ContinuousClock.now
        var recheck = self.recheck
        // A comment first: the client knows the stream is open before any event exists.
        try await write(&writer, ": stockade events after seq \(cursor)\n\n")
        while !shutdown.isSet && !Task.isCancelled {
            guard recheck.stillValid() else {
                try await write(&writer, ": the token is no longer accepted (revoked or expired), or the token store could not be read\n\n")
                throw TokenNoLongerAccepted()
            }
            var events: [AuditEvent] = []
            do {
                try audit.events(runId: runId, since: cursor, kind: kind) { event in
                    events.append(event)
                    if events.count >= Self.batch { throw Full() }
                }
            } catch is Full {}
            if events.isEmpty {
                if ContinuousClock.now - lastWrite > .seconds(Self.keepAliveSeconds) {
                    try await write(&writer, ": keep-alive\n\n")
                    lastWrite = .now
                }
                try await Task.sleep(for: .milliseconds(Self.pollMilliseconds))
                continue
            }
            var text = ""
            for event in events {
                // The same object `stockade audit events --json` prints.
                let data = event.jsonValue.serialized()
                text += "id: \(event.seq)\nevent: \(event.kind)\ndata: \(data)\n\n"
            }
            try await write(&writer, text)
            lastWrite = .now
            cursor = events.last!.seq
        }
        try await writer.finish(nil)
    }

    private func write(_ writer: inout any ResponseBodyWriter, _ text: String) async throws {
        try await BoundedWrite.write(&writer, ByteBuffer(string: text), channel: channel, logger: logger, what: "events")
    }
}

enum RunIds {
    /// A ULID: 26 characters of Crockford base32. Checked before an id reaches a path.
    static func isValid(_ id: String) -> Bool {
        id.utf8.count == 26 && id.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) }
    }
}

enum FileBytes {
    /// The whole file (no symlink followed at the last component), or nil.
    static func read(_ path: String, limit: Int) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while out.count <= limit {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { return nil }
            if n == 0 { return out }
            out += chunk[0..<n]
        }
        return nil
    }
}
