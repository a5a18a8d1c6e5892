import Glibc
import StockadeAudit
import StockadePatches
import StockadePolicy

/// Review decisions: the decision is recorded first, then an accepted diff is
/// applied beneath the run's workspace (re-guarded against the workspace as
/// it is now); a rejected diff is never applied. An accepted diff that does
/// not apply is recorded as `conflict` (file, hunk, reason), nothing written:
/// it can be accepted again once the workspace is fixed, or rejected.
extension Supervisor {
    public func accept(diffId: Int64, actor: String, note: String?) throws(SupervisorError) {
        let record = try undecidedDiff(diffId)
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
            let conflict = DiffConflict(file: error.path, hunk: error.hunk, reason: error.description)
            do {
                try audit.markConflict(diffId: diffId, conflict: conflict, detail: .object(["workspace": .string(workspace)]))
            } catch let auditError {
                throw SupervisorError(.audit, "diff \(diffId) did not apply to \(workspace) (\(error)) and the audit could not record the conflict: \(auditError); nothing was written")
            }
            throw SupervisorError(.review, """
                diff \(diffId) is in conflict with \(workspace): \(error); nothing was written. \
                Make the workspace match the diff's old side and run `stockade review accept \(diffId)` again, \
                or `stockade review reject \(diffId)`
                """)
        }
        do {
            try audit.markApplied(diffId: diffId, detail: .object(["workspace": .string(workspace), "files": .number(set.files.count)]))
        } catch {
            throw SupervisorError(.audit, "diff \(diffId) was applied but the audit could not record it: \(error)")
        }
    }

    public func reject(diffId: Int64, actor: String, note: String?) throws(SupervisorError) {
        _ = try undecidedDiff(diffId)
        do {
            _ = try audit.decide(diffId: diffId, accept: false, actor: actor, note: note)
        } catch {
            throw SupervisorError(.audit, "cannot record the decision on diff \(diffId): \(error)")
        }
    }

    /// A diff that may still be decided: `pending`, or `conflict` (its last application failed).
    func undecidedDiff(_ id: Int64) throws(SupervisorError) -> DiffRecord {
        let record: DiffRecord?
        do {
            record = try audit.diff(id: id)
        } catch {
            throw SupervisorError(.audit, "cannot read diff \(id): \(error)")
        }
        guard let record else { throw SupervisorError(.review, "no diff with id \(id)") }
        guard record.state == "pending" || record.state == "conflict" else {
            throw SupervisorError(.review, "diff \(id) is \(record.state), not pending or in conflict\(record.reason.map { ": \($0)" } ?? "")")
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
