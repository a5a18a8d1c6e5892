import Hummingbird
import StockadePolicy
import StockadeSupervisor
import StockadeVerify
import Synchronization

/// `POST /v1/verify`: `stockade verify` inside the service. The probe runs go through the service's
/// own run queue (as `--verify-every`'s do); the verification is recorded as a `verification` event
/// and answered as `stockade verify --json` prints it. One at a time: a second call while one runs
/// is answered 409 `verify-running`.
extension API {
    /// Held while a verification started through the API runs.
    static let verifyGate = VerifyGate()

    @Sendable func verify(_ request: Request, _ context: StockadeRequestContext, _ principal: Principal?) async throws -> Reply {
        let (profile, controls) = try parseVerifyBody(try await API.body(request))
        if await registry.isDraining {
            throw APIError(.serviceUnavailable, "shutting-down", "the service is shutting down and starts no verification")
        }
        guard let probe = Verifier.probeNextToExecutable() else {
            throw APIError(.internalServerError, "verify-unavailable",
                           "no executable stockade-probe next to stockade-server: install (or build) the stockade-probe product beside it")
        }
        guard API.verifyGate.enter() else {
            throw APIError(.conflict, "verify-running", "a verification started through the API is running: retry when it has finished")
        }
        defer { API.verifyGate.leave() }
        let verifier = Verifier(supervisor: supervisor, probePath: probe, profile: profile, controls: controls, service: registry.service)
        let report: VerificationReport
        do {
            report = try await verifier.run()
        } catch {
            throw failed("verify-failed", "the verification could not run", error)
        }
        do {
            try verifier.record(report)
        } catch let error as Verifier.CleanupFailure {
            logger.warning("verify.cleanup-failed", metadata: ["profile": "\(profile)", "error": "\(error.underlying)"])
        } catch {
            // Unrecorded, a verification proves nothing: it is not answered as if it did.
            throw failed("audit-unavailable", "the verification could not be recorded in the audit trail", error)
        }
        return Reply(response: API.json(report.jsonValue), runId: nil)
    }

    /// `{}` or `{"profile": "NAME", "only": ["id", "prefix*", "class:N"]}`: the profile (default
    /// `default`, which must load) and the controls the selectors name (default: all).
    func parseVerifyBody(_ body: [UInt8]) throws -> (profile: String, controls: [Control]) {
        var members: [String: JSONValue] = [:]
        if !body.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) {
            let value: JSONValue
            do {
                value = try StrictJSON.parse(body, limits: .init(maxBytes: API.maxBody, maxDepth: 8))
            } catch {
                throw APIError(.badRequest, "invalid-json", "the body must be one JSON object: \(error)")
            }
            guard let object = value.object else {
                throw APIError(.badRequest, "invalid-json", "the body must be one JSON object, found \(value.typeName)")
            }
            members = object
        }
        for key in members.keys.sorted() where key != "profile" && key != "only" {
            throw APIError(.badRequest, "invalid-field", "\(key): unknown key (known: profile, only)", field: key)
        }
        var profile = "default"
        if let value = members["profile"] {
            guard let name = value.string, !name.isEmpty else {
                throw APIError(.badRequest, "invalid-field", "profile: must be a non-empty string (a profile name or path)", field: "profile")
            }
            profile = name
        }
        do {
            _ = try supervisor.catalog.load(profile)
        } catch {
            throw APIError(.badRequest, "invalid-field", "profile: \(error.description)", field: "profile")
        }
        var controls = ControlCatalog.all
        if let value = members["only"] {
            guard let selectors = value.array, !selectors.isEmpty else {
                throw APIError(.badRequest, "invalid-field", "only: must be a non-empty array of selectors (an id, prefix*, class:N or *)", field: "only")
            }
            var ids = Set<String>()
            for (index, item) in selectors.enumerated() {
                guard let selector = item.string else {
                    throw APIError(.badRequest, "invalid-field", "only[\(index)]: must be a string, found \(item.typeName)", field: "only[\(index)]")
                }
                let selected = ControlCatalog.select(selector)
                guard !selected.isEmpty else {
                    throw APIError(.badRequest, "invalid-field", "only[\(index)]: \(selector) names no control (see stockade verify --list)", field: "only[\(index)]")
                }
                ids.formUnion(selected.map(\.id))
            }
            controls = controls.filter { ids.contains($0.id) }
        }
        return (profile, controls)
    }
}

/// One verification through the API at a time.
final class VerifyGate: Sendable {
    private let busy = Mutex(false)

    /// True when the caller may verify now (and must `leave` after).
    func enter() -> Bool {
        busy.withLock { busy in
            if busy { return false }
            busy = true
            return true
        }
    }

    func leave() { busy.withLock { $0 = false } }
}
