import ArgumentParser
import Glibc
import StockadeAudit
import StockadeClient
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
        @OptionGroup var storeOptions: StoreOptions
        @OptionGroup var remote: HostOptions
        @Option(help: "pending, accepted, rejected or conflict.") var state: String?
        @Flag(help: "One JSON object a line.") var json = false

        func validate() throws {
            try ReviewCommand.checkRemote(remote, location)
            if let state, !["pending", "accepted", "rejected", "conflict"].contains(state) {
                throw ValidationError("--state: expected pending, accepted, rejected or conflict, found \(state)")
            }
        }

        func run() throws {
            if let client = try remote.client() { return try run(through: client) }
            let supervisor = try openSupervisor(location, store: storeOptions.store, readOnly: true)
            let records: [DiffRecord]
            do {
                records = try supervisor.audit.diffs(state: state)
            } catch {
                Console.error("stockade: \(error)")
                throw ExitCode(1)
            }
            Self.show(records, json: json)
        }

        /// The rows (or JSON lines) of `review list`, from the store or from the service.
        static func show(_ records: [DiffRecord], json: Bool) {
            if !json { Console.out(["ID", "RUN", "STATE", "VERDICT", "BYTES", "CREATED", "REASON"].joined(separator: "\t")) }
            for r in records {
                if json {
                    Console.out(r.jsonValue().serialized())
                } else {
                    // The reason column: the guard's reason, or for a diff in conflict where it stopped applying.
                    let why = r.state == "conflict" ? r.conflict.map { ReviewCommand.conflictText($0) } : r.reason
                    Console.out("\(r.id)\t\(r.runId)\t\(r.state)\t\(r.verdict)\t\(r.bytes) bytes\t\(r.createdAt)\(why.map { "\t" + TerminalOutput.field($0) } ?? "")")
                }
            }
        }
    }

    /// `--host` reaches the service's state directory, not the one `--state-dir` names.
    static func checkRemote(_ remote: HostOptions, _ state: StateOptions) throws {
        if try remote.client() != nil, state.stateDir != nil {
            throw ValidationError("--state-dir: with --host the service's own state directory is used; leave --state-dir out")
        }
    }

    static func conflictText(_ c: DiffConflict) -> String {
        "conflict in \(c.file ?? "the workspace")\(c.hunk.map { " at " + $0 } ?? "")"
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "show", abstract: "The diff and its validation verdict.")
        @OptionGroup var state: StateOptions
        @OptionGroup var storeOptions: StoreOptions
        @OptionGroup var remote: HostOptions
        @Argument(help: "Diff id.") var id: Int64
        @Flag(help: "The record and the diff (`content`) as one JSON object.") var json = false

        func validate() throws {
            try ReviewCommand.checkRemote(remote, state)
        }

        func run() throws {
            if let client = try remote.client() { return try run(through: client) }
            let supervisor = try openSupervisor(state, store: storeOptions.store, readOnly: true)
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
            Self.show(record, json: json)
        }

        /// `review show`'s header line (stderr) and diff (stdout), or its JSON object.
        static func show(_ record: DiffRecord, json: Bool) {
            if json {
                Console.out(record.jsonValue(content: true).serialized())
                return
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
        @OptionGroup var storeOptions: StoreOptions
        @OptionGroup var remote: HostOptions
        @Argument(help: "Diff id.") var id: Int64
        @Option(help: "Who decides (recorded; required without --host; with --host the token's name is recorded).") var actor: String?
        @Option(help: "Why (recorded).") var note: String?
        @Flag(help: "The diff's record after the decision as one JSON object.") var json = false

        func validate() throws {
            try ReviewCommand.checkRemote(remote, state)
            let remote = try self.remote.client() != nil
            if remote, actor != nil {
                throw ValidationError("--actor: through the service the decision is recorded under the token's name; leave --actor out (or make a token named for the person deciding)")
            }
            if !remote, actor == nil { throw ValidationError("--actor: required: who decides (recorded with the decision)") }
        }

        func record(_ decide: (Supervisor, String) throws(SupervisorError) -> Void, verb: String, done: String) throws {
            if let client = try remote.client() { return try record(through: client, verb: verb, done: done) }
            let actor = self.actor ?? ""
            let supervisor = try openSupervisor(state, store: storeOptions.store, readOnly: false)
            do {
                try decide(supervisor, actor)
            } catch {
                Console.error("stockade: \(error)")
                throw ExitCode(1)
            }
            if json, let record = try? supervisor.audit.diff(id: id) {
                Console.out(record.jsonValue().serialized())
            } else {
                Console.out("diff \(id) \(done) by \(actor)")
            }
        }
    }

    struct Accept: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "accept", abstract: "Record the decision, then apply the diff to the workspace (a pending diff, or one in conflict once the workspace is fixed).")
        @OptionGroup var decision: Decision

        func run() throws {
            let d = decision
            try d.record({ (s, actor) throws(SupervisorError) in try s.accept(diffId: d.id, actor: actor, note: d.note) }, verb: "accept", done: "accepted and applied")
        }
    }

    struct Reject: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "reject", abstract: "Record the decision on a pending diff or one in conflict; nothing is applied.")
        @OptionGroup var decision: Decision

        func run() throws {
            let d = decision
            try d.record({ (s, actor) throws(SupervisorError) in try s.reject(diffId: d.id, actor: actor, note: d.note) }, verb: "reject", done: "rejected")
        }
    }
}

struct Gc: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gc", abstract: "Remove finished run directories older than a duration (never a running one).")
    @OptionGroup var state: StateOptions
    @Option(help: "Age such as 30s, 15m, 12h, 7d.") var olderThan: String
    @Flag(help: "One JSON object: {\"removed\": [run ids], \"layers\": [layer digests], \"layersBusy\": bool}.") var json = false

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
            // Image layers no imported image names, unless an import or a run holds the cache.
            let layers = try ImageStore(stateDirectory: state.resolved()).collectGarbage()
            if json {
                Console.out(GarbageCollection(removed: removed, layers: layers.removed, layersBusy: layers.busy).jsonValue.serialized())
                return
            }
            for id in removed { Console.out(id) }
            Console.error("stockade: removed \(removed.count) run director\(removed.count == 1 ? "y" : "ies")")
            for digest in layers.removed { Console.out(digest) }
            Console.error(layers.busy ? "stockade: image layers not collected: an import or a run is using the cache"
                                      : "stockade: removed \(layers.removed.count) unused image layer\(layers.removed.count == 1 ? "" : "s")")
        } catch {
            Console.error("stockade: \(error)")
            throw ExitCode(1)
        }
    }
}
