import Glibc
import StockadeAudit
import StockadePatches
import StockadePolicy

/// Review decisions: the decision is recorded first, then an accepted diff is
/// applied beneath the run's workspace (re-guarded against the workspace as
/// it is now); a rejected diff is never applied.
extension Supervisor {
    public func accept(diffId: Int64, actor: String, note: String?) throws(SupervisorError) {
        let record = try pendingDiff(diffId)
        let workspace = try workspacePath(of: record.runId)
        let set: PatchSet
        do {
            set = try DiffParser.parse(record.content)
        } catch {
            throw SupervisorError(.review, "diff \(diffId) cannot be parsed: \(error)")
        }
        do {
            _ = try audit.decide(diffId: diffId, accept: true, actor: actor, note: note)
        } catch {
            throw SupervisorError(.audit, "cannot record the decision on diff \(diffId): \(error)")
        }
        do {
            try PatchApplier.apply(set, workspaceRoot: workspace)
        } catch {
            _ = try? audit.record(runId: record.runId, kind: "diff.apply-failed",
                                  detail: .object(["diffId": .number(diffId), "reason": .string(error.description)]))
            throw SupervisorError(.review, "diff \(diffId) was accepted but could not be applied to \(workspace): \(error); nothing was written")
        }
        do {
            try audit.markApplied(diffId: diffId, detail: .object(["workspace": .string(workspace), "files": .number(set.files.count)]))
        } catch {
            throw SupervisorError(.audit, "diff \(diffId) was applied but the audit could not record it: \(error)")
        }
    }

    public func reject(diffId: Int64, actor: String, note: String?) throws(SupervisorError) {
        _ = try pendingDiff(diffId)
        do {
            _ = try audit.decide(diffId: diffId, accept: false, actor: actor, note: note)
        } catch {
            throw SupervisorError(.audit, "cannot record the decision on diff \(diffId): \(error)")
        }
    }

    func pendingDiff(_ id: Int64) throws(SupervisorError) -> DiffRecord {
        let record: DiffRecord?
        do {
            record = try audit.diff(id: id)
        } catch {
            throw SupervisorError(.audit, "cannot read diff \(id): \(error)")
        }
        guard let record else { throw SupervisorError(.review, "no diff with id \(id)") }
        guard record.state == "pending" else {
            throw SupervisorError(.review, "diff \(id) is \(record.state), not pending\(record.reason.map { ": \($0)" } ?? "")")
        }
        return record
    }

    /// The workspace the run was given, from its `run.created` event.
    func workspacePath(of runId: String) throws(SupervisorError) -> String {
        var path: String?
        do {
            try audit.events(runId: runId, since: nil, kind: "run.created") { event in
                path = event.detailValue?.object?["workspace"]?.string
            }
        } catch {
            throw SupervisorError(.audit, "cannot read run \(runId): \(error)")
        }
        guard let path else { throw SupervisorError(.review, "run \(runId) had no workspace") }
        return path
    }
}
