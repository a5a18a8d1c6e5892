import Foundation
import Hummingbird
import StockadeAudit
import StockadePolicy
import StockadeSupervisor

/// Signed run receipts and the review routes.
extension API {
    // MARK: Receipts

    @Sendable func receipt(_ request: Request, _ context: StockadeRequestContext, _ principal: Principal?) async throws -> Reply {
        let id = try runId(context)
        try await requireRunHere(id)
        if let submitted = await registry.submitted(id), submitted.handle.currentState != .finished {
            throw APIError(.conflict, "not-finished", "run \(id) is \(submitted.handle.currentState.rawValue): a receipt is issued once it has finished")
        }
        let body: JSONValue
        do {
            body = try RunReceipt.body(audit: supervisor.audit, stateDirectory: stateDirectory, runId: id)
        } catch {
            switch error.kind {
            case .notFound: throw APIError(.notFound, "not-found", error.description, field: "id")
            case .notFinished: throw APIError(.conflict, "not-finished", error.description)
            case .unavailable: throw failed("receipt-unavailable", "the receipt of run \(id) cannot be made", error)
            }
        }
        // The audit checkpoint key: created on first use, as `stockade audit checkpoint` does.
        let keyPath = CheckpointKeyFile.defaultPath(stateDirectory: stateDirectory)
        let document: JSONValue
        do {
            let key = try CheckpointKeyFile.loadOrCreate(path: keyPath).key
            document = try RunReceipt.sign(body, with: key)
        } catch {
            throw failed("receipt-key-unavailable", "cannot sign the receipt with the checkpoint key", "\(keyPath): \(error)")
        }
        return Reply(response: API.json(document), runId: id)
    }

    // MARK: Reviews

    func diffId(_ context: StockadeRequestContext) throws -> Int64 {
        let text = context.parameters.get("id") ?? ""
        guard let id = Int64(text), id >= 1, String(id) == text else {
            throw APIError(.notFound, "not-found", "no diff \(text) (diff ids are positive integers)", field: "id")
        }
        return id
    }

    func diffRecord(_ id: Int64) throws -> DiffRecord {
        let record: DiffRecord?
        do {
            record = try supervisor.audit.diff(id: id)
        } catch {
            throw failed("audit-unavailable", "cannot read diff \(id)", error)
        }
        guard let record else { throw APIError(.notFound, "not-found", "no diff \(id)", field: "id") }
        return record
    }

    @Sendable func reviews(_ request: Request, _ context: StockadeRequestContext, _ principal: Principal?) async throws -> Reply {
        let state = API.query(request)["state"]
        if let state, !["pending", "accepted", "rejected", "conflict"].contains(state) {
            throw APIError(.badRequest, "invalid-parameter", "state: must be pending, accepted, rejected or conflict, found \(state)", field: "state")
        }
        let records: [DiffRecord]
        do {
            records = try supervisor.audit.diffs(state: state)
        } catch {
            throw failed("audit-unavailable", "cannot read the diffs", error)
        }
        return Reply(response: API.json(.object(["reviews": .array(records.map { $0.jsonValue() })])), runId: nil)
    }

    @Sendable func review(_ request: Request, _ context: StockadeRequestContext, _ principal: Principal?) async throws -> Reply {
        let record = try diffRecord(try diffId(context))
        return Reply(response: API.json(record.jsonValue(content: true)), runId: record.runId)
    }

    @Sendable func acceptReview(_ request: Request, _ context: StockadeRequestContext, _ principal: Principal?) async throws -> Reply {
        try await decide(request, context, principal, accept: true)
    }

    @Sendable func rejectReview(_ request: Request, _ context: StockadeRequestContext, _ principal: Principal?) async throws -> Reply {
        try await decide(request, context, principal, accept: false)
    }

    /// `{"note": "..."}` (optional, or an empty body): the note recorded with the decision.
    static func decisionNote(_ body: [UInt8]) throws -> String? {
        if body.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) { return nil }
        let value: JSONValue
        do {
            value = try StrictJSON.parse(body, limits: .init(maxBytes: API.maxBody, maxDepth: 2))
        } catch {
            throw APIError(.badRequest, "invalid-json", "the body must be one JSON object: \(error)")
        }
        guard let object = value.object else {
            throw APIError(.badRequest, "invalid-json", "the body must be one JSON object, found \(value.typeName)")
        }
        if let unknown = object.keys.filter({ $0 != "note" }).sorted().first {
            throw APIError(.badRequest, "invalid-field", "\(unknown): unknown key (a decision takes only note)", field: unknown)
        }
        guard let note = object["note"] else { return nil }
        if case .null = note { return nil }
        guard let text = note.string else { throw APIError(.badRequest, "invalid-field", "note: expected a string, found \(note.typeName)", field: "note") }
        guard text.utf8.count <= 4096 else { throw APIError(.badRequest, "invalid-field", "note: at most 4096 bytes, found \(text.utf8.count)", field: "note") }
        return text
    }

    /// Who submitted the diff's run and what its profile said about self-approval, from the run's
    /// `run.created` (`submittedBy`, `allowSelfApproval`: absent means false).
    func submission(of runId: String) throws -> (submittedBy: String?, allowSelfApproval: Bool) {
        var found: (String?, Bool) = (nil, false)
        do {
            try supervisor.audit.events(runId: runId, since: nil, kind: "run.created") { event in
                let detail = event.detailValue?.object
                found = (detail?["submittedBy"]?.string, detail?["allowSelfApproval"]?.bool ?? false)
            }
        } catch {
            throw failed("audit-unavailable", "cannot read run \(runId)", error)
        }
        return found
    }

    func decide(_ request: Request, _ context: StockadeRequestContext, _ principal: Principal?, accept: Bool) async throws -> Reply {
        let id = try diffId(context)
        let note = try API.decisionNote(try await API.body(request))
        let record = try diffRecord(id)
        guard record.state == "pending" || record.state == "conflict" else {
            throw APIError(.conflict, "already-decided", "diff \(id) is \(record.state), not pending or in conflict: it cannot be decided again")
        }
        let actor = principal?.name ?? ""
        let (submittedBy, allowSelfApproval) = try submission(of: record.runId)
        if let submittedBy, submittedBy == actor, !allowSelfApproval {
            throw APIError(.forbidden, "self-approval", "diff \(id) is of run \(record.runId), which \(actor) submitted: another principal with review:submit must decide it (or the run's profile sets review.allowSelfApproval)")
        }
        // Accepting writes the diff into the run's workspace, which is on the host that ran it.
        if accept { try await requireRunHere(record.runId, what: "its workspace, where an accepted diff is written, is on that host") }
        do {
            if accept {
                try supervisor.accept(diffId: id, actor: actor, note: note)
            } else {
                try supervisor.reject(diffId: id, actor: actor, note: note)
            }
        } catch {
            // A diff decided meanwhile, or one that did not apply (now in conflict, nothing written).
            let now = try? supervisor.audit.diff(id: id)
            if error.code == .review, accept, let now, now.state == "conflict" {
                // From the recorded conflict (paths relative to the workspace), not the supervisor's
                // message, which names the workspace's place on the host.
                let reason = now.conflict?.reason ?? "it does not apply"
                throw APIError(.conflict, "diff-conflict", "diff \(id) is in conflict with the run's workspace: \(reason); nothing was written. Make the workspace match the diff's old side and accept again, or reject it")
            }
            if error.code == .review, let state = now?.state, state == "accepted" || state == "rejected" {
                throw APIError(.conflict, "already-decided", error.description)
            }
            if error.code == .review {
                throw APIError(.conflict, "not-decidable", error.description)
            }
            // The trail or the workspace failed: the message can name the store or the workspace's
            // place on the host.
            throw failed("review-failed", "the decision on diff \(id) could not be completed (GET /v1/reviews/\(id) shows where it stands)", error)
        }
        let decided = try diffRecord(id)
        return Reply(response: API.json(decided.jsonValue()), runId: record.runId)
    }
}
