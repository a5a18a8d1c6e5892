import ArgumentParser
import Glibc
import StockadeAudit
import StockadePolicy
import StockadeImages
import StockadeSupervisor

struct ReviewCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "review",
        abstract: "Diffs waiting for or past review; accept applies beneath the workspace, reject applies nothing.",
        subcommands: [List.self, Show.self, Accept.self, Reject.self]
    )

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "Diffs, oldest first.")
        @OptionGroup var location: StateOptions
        @Option(help: "pending, accepted, rejected or conflict.") var state: String?
        @Flag(help: "One JSON object a line.") var json = false

        func validate() throws {
            if let state, !["pending", "accepted", "rejected", "conflict"].contains(state) {
                throw ValidationError("--state: expected pending, accepted, rejected or conflict, found \(state)")
            }
        }

        func run() throws {
            let supervisor = try openSupervisor(location, readOnly: true)
            let records: [DiffRecord]
            do {
                records = try supervisor.audit.diffs(state: state)
            } catch {
                Console.error("stockade: \(error)")
                throw ExitCode(1)
            }
            for r in records {
                if json {
                    Console.out(JSONValue.object([
                        "id": .number(r.id), "runId": .string(r.runId), "state": .string(r.state), "verdict": .string(r.verdict),
                        "reason": r.reason.map { .string($0) } ?? .null, "bytes": .number(r.bytes), "sha256": .string(r.sha256),
                        "createdAt": .string(r.createdAt), "decidedBy": r.decidedBy.map { .string($0) } ?? .null,
                        "note": r.note.map { .string($0) } ?? .null, "decidedAt": r.decidedAt.map { .string($0) } ?? .null,
                        "appliedAt": r.appliedAt.map { .string($0) } ?? .null,
                        "conflict": r.conflict.map { c in
                            .object(["file": c.file.map { .string($0) } ?? .null, "hunk": c.hunk.map { .string($0) } ?? .null,
                                     "reason": .string(c.reason)])
                        } ?? .null,
                    ]).serialized())
                } else {
                    // The reason column: the guard's reason, or for a diff in conflict where it stopped applying.
                    let why = r.state == "conflict" ? r.conflict.map { ReviewCommand.conflictText($0) } : r.reason
                    Console.out("\(r.id)\t\(r.runId)\t\(r.state)\t\(r.verdict)\t\(r.bytes) bytes\t\(r.createdAt)\(why.map { "\t" + TerminalOutput.field($0) } ?? "")")
                }
            }
        }
    }

    static func conflictText(_ c: DiffConflict) -> String {
        "conflict in \(c.file ?? "the workspace")\(c.hunk.map { " at " + $0 } ?? "")"
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "The diff and its validation verdict.")
        @OptionGroup var state: StateOptions
        @Argument(help: "Diff id.") var id: Int64

        func run() throws {
            let supervisor = try openSupervisor(state, readOnly: true)
            let record: DiffRecord?
            do {
                record = try supervisor.audit.diff(id: id)
            } catch {
                Console.error("stockade: \(error)")
                throw ExitCode(1)
            }
            guard let record else {
                Console.error("stockade: no diff with id \(id)")
                throw ExitCode(1)
            }
            var head = "diff \(record.id) of run \(record.runId): \(record.state); guard verdict \(record.verdict)"
            if let reason = record.reason { head += " (\(TerminalOutput.field(reason)))" }
            if let by = record.decidedBy {
                head += "; decided by \(TerminalOutput.field(by)) at \(record.decidedAt ?? "?")\(record.note.map { ": \(TerminalOutput.field($0))" } ?? "")"
            }
            if let applied = record.appliedAt { head += "; applied at \(applied)" }
            if record.state == "conflict", let conflict = record.conflict {
                head += "; \(TerminalOutput.field(ReviewCommand.conflictText(conflict))): \(TerminalOutput.field(conflict.reason))"
            }
            Console.error(head)
            TerminalOutput.write(record.content, to: 1)
        }
    }

    /// What accept and reject both take: the diff and who decides why.
    struct Decision: ParsableArguments {
        @OptionGroup var state: StateOptions
        @Argument(help: "Diff id.") var id: Int64
        @Option(help: "Who decides (recorded).") var actor: String
        @Option(help: "Why (recorded).") var note: String?

        func record(_ decide: (Supervisor) throws(SupervisorError) -> Void, done: String) throws {
            let supervisor = try openSupervisor(state, readOnly: false)
            do {
                try decide(supervisor)
            } catch {
                Console.error("stockade: \(error)")
                throw ExitCode(1)
            }
            Console.out("diff \(id) \(done) by \(actor)")
        }
    }

    struct Accept: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "accept", abstract: "Record the decision, then apply the diff to the workspace (a pending diff, or one in conflict once the workspace is fixed).")
        @OptionGroup var decision: Decision

        func run() throws {
            let d = decision
            try d.record({ (s) throws(SupervisorError) in try s.accept(diffId: d.id, actor: d.actor, note: d.note) }, done: "accepted and applied")
        }
    }

    struct Reject: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "reject", abstract: "Record the decision on a pending diff or one in conflict; nothing is applied.")
        @OptionGroup var decision: Decision

        func run() throws {
            let d = decision
            try d.record({ (s) throws(SupervisorError) in try s.reject(diffId: d.id, actor: d.actor, note: d.note) }, done: "rejected")
        }
    }
}

struct Gc: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gc", abstract: "Remove finished run directories older than a duration (never a running one).")
    @OptionGroup var state: StateOptions
    @Option(help: "Age such as 30s, 15m, 12h, 7d.") var olderThan: String

    func run() throws {
        let seconds: Double
        do {
            seconds = try RunDirectoryMaintenance.parseDuration(olderThan)
        } catch {
            Console.error("stockade: --older-than: \(error)")
            throw ExitCode(2)
        }
        do {
            let removed = try RunDirectoryMaintenance.collectGarbage(stateDirectory: state.resolved(), olderThan: seconds)
            for id in removed { Console.out(id) }
            Console.error("stockade: removed \(removed.count) run director\(removed.count == 1 ? "y" : "ies")")
            // Image layers no imported image names, unless an import or a run holds the cache.
            let layers = try ImageStore(stateDirectory: state.resolved()).collectGarbage()
            for digest in layers.removed { Console.out(digest) }
            Console.error(layers.busy ? "stockade: image layers not collected: an import or a run is using the cache"
                                      : "stockade: removed \(layers.removed.count) unused image layer\(layers.removed.count == 1 ? "" : "s")")
        } catch {
            Console.error("stockade: \(error)")
            throw ExitCode(1)
        }
    }
}
