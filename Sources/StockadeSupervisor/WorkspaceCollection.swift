import Glibc
import StockadeAudit
import StockadeBundles
import StockadePatches
import StockadePolicy
import SystemPackage
import Logging

/// Turns the worker's workspace changes into one diff, guards every path in
/// it, records it (the event is committed before the diff can be listed),
/// and hands it to review, or applies it at once under `autoAcceptDiffs`.
extension Supervisor {
    func collectWorkspace(_ context: RunScope, profile: Profile, patches: [UInt8], report: inout RunReport) {
        guard let dir = context.runDirectory, context.workspace != nil || !patches.isEmpty else { return }
        let upper = context.workspace == nil || context.layer < 0 ? -1 : openat(context.layer, "data", O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)
        let lower = context.workspace.map { open($0, O_RDONLY | O_DIRECTORY | O_CLOEXEC) } ?? -1
        defer {
            if upper >= 0 { close(upper) }
            if lower >= 0 { close(lower) }
        }
        var diff: [UInt8] = []
        var rejection: String?
        if context.workspace == nil {
            // Patches only: nothing of a workspace to compare.
        } else if upper < 0 || lower < 0 {
            rejection = "cannot open the workspace or its upper directory to collect changes: \(String(cString: strerror(errno)))"
        } else {
            recordPendingEvents(context)  // on disk before the worker's changes are scanned (I8)
            do {
                let changes = try WorkspaceScanner.scan(upper: upper, lower: lower, limits: ScanLimits(profile.bundles), xattrs: .trusted)
                if changes.isEmpty && patches.isEmpty { return }
                (diff, rejection) = Self.render(changes)
            } catch {
                rejection = "the workspace changes cannot be collected: \(error)"
            }
        }
        diff += patches
        if rejection == nil {
            rejection = Self.guardVerdict(diff, bounds: profile.bundles, workspace: lower >= 0 ? lower : nil)
        }
        let stored = context.redactor.redact(diff)
        if rejection == nil, stored != diff {
            rejection = "the diff contains a secret value; it was redacted and is not applied"
        }
        try? FileReading.writeAtomically(dir.path + "/diff.patch", stored)
        recordPendingEvents(context)
        do {
            let id = try audit.recordDiff(runId: context.runId, content: stored, verdict: rejection == nil ? "passed" : "rejected",
                                          reason: rejection)
            report.review = RunReport.Review(id: id, state: rejection == nil ? "pending" : "rejected")
            // Only a run that ended cleanly is trusted to change the workspace
            // unattended; a killed or failed one waits for a human.
            let clean = report.outcome == .exited && report.exitCode == 0 && report.setupError == nil
            if rejection == nil && profile.review.autoAcceptDiffs && clean {
                do {
                    try accept(diffId: id, actor: "auto", note: "profile \(profile.name) sets autoAcceptDiffs")
                    report.review.state = "accepted"
                } catch {
                    report.review.state = (try? audit.diff(id: id))?.state ?? "pending"
                    logger.error("review.auto-accept-failed", metadata: ["run.id": "\(context.runId)", "error": "\(error)"])
                }
            }
        } catch {
            context.auditFailed = true
            if report.setupError == nil {
                report.setupError = .audit("the run's diff could not be recorded", storeError: error)
            }
        }
    }

    /// One git-style diff of the changes; a change no diff may carry (a
    /// symlink, device, FIFO, special mode) rejects the whole diff.
    static func render(_ changes: [WorkspaceChange]) -> ([UInt8], String?) {
        var diff: [UInt8] = []
        func gitMode(_ mode: UInt32) -> UInt32? { mode & 0o7000 == 0 ? 0o100000 | (mode & 0o777) : nil }
        for change in changes {
            switch change {
            case let .special(path, kind):
                return (diff, "\(path): the worker left a \(kind) in the workspace (rule special_file)")
            case let .created(path, content, mode):
                guard let m = gitMode(mode) else { return (diff, "\(path): mode \(String(mode, radix: 8)) (rule bad_mode)") }
                diff += DiffWriter.fileDiff(path: path, old: nil, new: content, oldMode: nil, newMode: m)
            case let .modified(path, old, new, oldMode, newMode):
                guard let o = gitMode(oldMode), let n = gitMode(newMode) else {
                    return (diff, "\(path): mode \(String(newMode, radix: 8)) (rule bad_mode)")
                }
                diff += DiffWriter.fileDiff(path: path, old: old, new: new, oldMode: o, newMode: n)
            case let .deleted(path, old, oldMode):
                diff += DiffWriter.fileDiff(path: path, old: old, new: nil, oldMode: gitMode(oldMode) ?? 0o100644, newMode: nil)
            }
        }
        return (diff, nil)
    }

    /// The path guard's verdict on a whole diff, as a reason, or nil when it passes.
    static func guardVerdict(_ diff: [UInt8], bounds: BundleBounds, workspace: Int32?) -> String? {
        let set: PatchSet
        do {
            set = try DiffParser.parse(diff, limits: DiffLimits(bounds: bounds))
        } catch {
            return "the diff cannot be parsed: \(error)"
        }
        let root = workspace.map { FileDescriptor(rawValue: $0) }
        if case let .rejected(path, rule, message) = PathGuard.check(set, workspaceRoot: root) {
            return "\(path): \(message) (rule \(rule.rawValue))"
        }
        return nil
    }
}
