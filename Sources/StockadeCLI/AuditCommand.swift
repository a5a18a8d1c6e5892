import ArgumentParser
import Glibc
import Logging
import StockadeAudit
import StockadePolicy
import StockadeSupervisor
import Crypto

/// Opens the state directory's supervisor (and its audit store) for a command that runs no worker.
/// `readOnly` for queries: they change nothing in the state directory (no migration, no abandoned-run
/// marking, no cgroup sweep).
/// `store`: the `--store` flag (else `$STOCKADE_STORE`, else the state directory's SQLite file).
func openSupervisor(_ state: StateOptions, store: String?, readOnly: Bool) throws -> Supervisor {
    let url = try resolveStore(state, store)
    do {
        return try Supervisor(stateDirectory: state.resolved(), catalog: .standard(),
                              environment: ProcessEnvironment.current(), logger: Logger(label: "stockade"), readOnly: readOnly, store: url)
    } catch {
        Console.error("stockade: \(error)")
        throw ExitCode(1)
    }
}

struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Read, verify, back up and move the audit trail.",
        subcommands: [Events.self, Runs.self, Verify.self, Checkpoint.self, Backup.self, Export.self, Import.self]
    )

    struct Events: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "events",
            abstract: "Audit events in seq order (resume with --since the last seq seen).")
        @OptionGroup var state: StateOptions
        @OptionGroup var storeOptions: StoreOptions
        @OptionGroup var remote: HostOptions
        @Option(name: .customLong("run"), help: "Only this run's events.") var runId: String?
        @Option(help: "Only events with seq greater than this.") var since: Int64?
        @Option(help: "Only events of this kind (e.g. violation, kill, review.decided).") var kind: String?
        @Flag(help: "With --host: go on printing events as the service records them (until interrupted).") var follow = false
        @Flag(help: "One JSON object a line.") var json = false

        func validate() throws {
            let remote = try self.remote.client() != nil
            if remote, state.stateDir != nil {
                throw ValidationError("--state-dir: with --host the service's own state directory is used; leave --state-dir out")
            }
            if follow, !remote {
                throw ValidationError("--follow: only with --host (the service's event stream); without it, resume with --since the last seq seen")
            }
            if let kind, !AuditEventKind.known.contains(kind) {
                throw ValidationError("--kind: unknown event kind \(kind); known kinds: \(AuditEventKind.known.joined(separator: ", "))")
            }
        }

        func run() throws {
            if let client = try remote.client() { return try run(through: client) }
            let supervisor = try openSupervisor(state, store: storeOptions.store, readOnly: true)
            if let runId {
                var known = false
                do {
                    try supervisor.audit.runs { run in if run.runId == runId { known = true } }
                } catch {
                    Console.error("stockade: \(error)")
                    throw ExitCode(1)
                }
                guard known else {
                    Console.error("stockade: --run: no run \(TerminalOutput.field(runId)) in this state directory's audit trail (see `stockade audit runs`)")
                    throw ExitCode(1)
                }
            }
            do {
                try supervisor.audit.events(runId: runId, since: since, kind: kind) { event in show(event) }
            } catch {
                Console.error("stockade: \(error)")
                throw ExitCode(1)
            }
        }

        /// One event as a row, or its JSON object (from the store or the service's stream).
        func show(_ event: AuditEvent) {
            if json {
                Console.out(event.jsonValue.serialized())
            } else {
                // Every field escaped: a worker-chosen string must not start a row or split a column.
                let fields = [event.at, event.runId ?? "-", event.kind, event.detail].map(TerminalOutput.field)
                Console.out(([String(event.seq)] + fields).joined(separator: "\t"))
            }
        }
    }

    struct Runs: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "runs", abstract: "Runs with their outcome, oldest first (a header row, then one run a line).")
        @OptionGroup var state: StateOptions
        @OptionGroup var storeOptions: StoreOptions
        @Option(help: "Only runs recorded with this label KEY=VALUE (repeatable: all must match).") var label: [String] = []
        @Flag(help: "One JSON object a line, no header.") var json = false

        func validate() throws {
            for l in label where !l.contains("=") { throw ValidationError("--label: must be KEY=VALUE, found \(l)") }
        }

        func run() throws {
            let supervisor = try openSupervisor(state, store: storeOptions.store, readOnly: true)
            let wanted = label.compactMap { l in
                l.firstIndex(of: "=").map { (String(l[..<$0]), String(l[l.index(after: $0)...])) }
            }
            do {
                if !json {
                    Console.out(["RUN", "CREATED", "PROFILE", "STATE", "OUTCOME", "EXIT", "NAME", "LABELS", "COMMAND"].joined(separator: "\t"))
                }
                try supervisor.runSummaries(labels: wanted) { summary in
                    if json {
                        Console.out(summary.jsonValue.serialized())
                    } else {
                        let run = summary.record
                        // Every field escaped: a command holding a newline or tab must stay one row.
                        let command = run.command.map(TerminalOutput.field).joined(separator: " ")
                        let labels = summary.labels.sorted { $0.key < $1.key }.map { TerminalOutput.field("\($0.key)=\($0.value)") }.joined(separator: ",")
                        let fields = [run.runId, run.createdAt, run.profile, run.state, run.outcome ?? "-"].map(TerminalOutput.field)
                        Console.out((fields + [run.exitStatus.map(String.init) ?? "-", TerminalOutput.field(summary.name ?? "-"),
                                               labels.isEmpty ? "-" : labels, command]).joined(separator: "\t"))
                    }
                }
            } catch {
                Console.error("stockade: \(error)")
                throw ExitCode(1)
            }
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "verify",
            abstract: "Recompute the audit hash chain; exit 1 naming the first broken seq.",
            discussion: """
                Without a checkpoint this proves the integrity of the events there are, not that none \
                were removed from the end. With --checkpoint FILE it also fails when the event at the \
                checkpoint's seq is missing or changed, or its signature does not verify with the \
                trusted key: --public-key FILE, else the state directory's checkpoint key (never the \
                key the checkpoint carries).
                """)
        @OptionGroup var state: StateOptions
        @OptionGroup var storeOptions: StoreOptions
        @Option(help: "A checkpoint from `stockade audit checkpoint` the trail must still hold (repeatable).")
        var checkpoint: [String] = []
        @Option(help: "A file holding the trusted public key for --checkpoint (64 hex digits, as in <key>.pub); default: the state directory's checkpoint key.")
        var publicKey: String?
        @Flag(help: "The result as one JSON object.") var json = false

        func validate() throws {
            if publicKey != nil && checkpoint.isEmpty {
                throw ValidationError("--public-key: only used with --checkpoint FILE")
            }
        }

        func run() throws {
            let supervisor = try openSupervisor(state, store: storeOptions.store, readOnly: true)
            var checked: [(path: String, checkpoint: AuditCheckpoint)] = []
            if !checkpoint.isEmpty {
                do {
                    // Never the key a checkpoint carries: whoever can cut the trail can sign with a key of their own.
                    let trusted = if let publicKey {
                        try CheckpointKeyFile.loadPublicKey(path: publicKey)
                    } else {
                        try CheckpointKeyFile.load(path: CheckpointKeyFile.defaultPath(stateDirectory: supervisor.stateDirectory)).publicKey
                    }
                    for path in checkpoint {
                        let document = try AuditCheckpoint.read(path: path)
                        do throws(AuditError) {
                            try document.verify(trusting: trusted)
                        } catch {
                            fail(seq: document.head.seq, "checkpoint \(path): \(error.message)")
                        }
                        checked.append((path, document))
                    }
                } catch {
                    fail(seq: nil, "\(error)")
                }
            }
            let result: ChainVerification
            do {
                result = try supervisor.audit.verifyChain(anchors: checked.map { $0.checkpoint.head })
            } catch {
                fail(seq: nil, "\(error)")
            }
            if let seq = result.firstBrokenSeq {
                fail(seq: seq, "audit chain broken at seq \(seq): \(TerminalOutput.field(result.reason ?? "hash mismatch")) (\(result.eventsChecked) events checked)",
                     eventsChecked: result.eventsChecked)
            }
            if json {
                Console.out(result.jsonValue(checkpoints: checked.map { (file: $0.0, head: $0.1.head, at: $0.1.at, keyId: $0.1.keyId) }).serialized())
            } else if checked.isEmpty {
                Console.out("audit chain intact: \(result.eventsChecked) events (no checkpoint given: events cut from the end would not show)")
            } else {
                let through = checked.map { $0.checkpoint.head.seq }.max() ?? 0
                Console.out("audit chain intact: \(result.eventsChecked) events; holds every signed checkpoint (through seq \(through))")
            }
        }

        /// Exit 1 naming the seq: on stderr, or as the JSON result on stdout.
        private func fail(seq: Int64?, _ message: String, eventsChecked: Int64? = nil) -> Never {
            if json {
                Console.out(ChainVerification.failureJSON(firstBrokenSeq: seq, reason: message, eventsChecked: eventsChecked).serialized())
            } else {
                Console.error(seq == nil ? "stockade: \(message)" : message)
            }
            Glibc.exit(1)
        }
    }

    struct Checkpoint: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "checkpoint",
            abstract: "Sign the audit chain's head with the checkpoint key; write the checkpoint where it cannot be edited with the database.",
            discussion: """
                The chain is verified first; a broken chain is never signed. The checkpoint (JSON: seq, \
                hash, time, key id, public key, signature) goes to stdout or --out. Keep it, and the \
                public key, away from the state directory: `stockade audit verify --checkpoint FILE \
                --public-key FILE` then fails if any event up to that seq was changed or removed.
                """)
        @OptionGroup var state: StateOptions
        @OptionGroup var storeOptions: StoreOptions
        @Option(help: "The Ed25519 key file (default <state>/keys/audit-checkpoint.ed25519; created on first use, mode 0600).")
        var key: String?
        @Option(help: "Write the checkpoint to this file instead of stdout.") var out: String?
        @Flag(help: "Also print the checkpoint on stdout when --out is given; no summary on stderr.") var json = false

        func run() throws {
            let supervisor = try openSupervisor(state, store: storeOptions.store, readOnly: true)
            let keyPath = key ?? CheckpointKeyFile.defaultPath(stateDirectory: supervisor.stateDirectory)
            let document: AuditCheckpoint
            do {
                let verification = try supervisor.audit.verifyChain()
                if let seq = verification.firstBrokenSeq {
                    Console.error("stockade: not signing a broken chain: audit chain broken at seq \(seq): \(TerminalOutput.field(verification.reason ?? "hash mismatch"))")
                    throw ExitCode(1)
                }
                guard let head = verification.head else {
                    Console.error("stockade: the audit trail is empty: there is nothing to checkpoint yet")
                    throw ExitCode(1)
                }
                let (signingKey, created) = try CheckpointKeyFile.loadOrCreate(path: keyPath)
                if created {
                    Console.error("stockade: created checkpoint key \(keyPath) (public key in \(CheckpointKeyFile.publicPath(of: keyPath)): copy it to where checkpoints are checked)")
                }
                document = try AuditCheckpoint.sign(head, with: signingKey)
            } catch let error as AuditError {
                Console.error("stockade: \(error)")
                throw ExitCode(1)
            }
            let text = document.serialized() + "\n"
            if let out {
                do throws(FileWriteError) {
                    try writeFile(out, Array(text.utf8))
                } catch {
                    Console.error("stockade: --out \(out): \(error.description)")
                    throw ExitCode(1)
                }
                if json { Console.out(text) }
            } else {
                Console.out(text)
            }
            if !json {
                Console.error("stockade: checkpoint of seq \(document.head.seq) (hash \(document.head.hash)) signed by key \(document.keyId)")
            }
        }

        private func writeFile(_ path: String, _ bytes: [UInt8]) throws(FileWriteError) {
            let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o644)
            guard fd >= 0 else { throw FileWriteError(errno) }
            defer { close(fd) }
            var offset = 0
            while offset < bytes.count {
                let n = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw FileWriteError(errno) }
                offset += n
            }
            guard fsync(fd) == 0 else { throw FileWriteError(errno) }
        }
    }
}

/// An errno as a message, for the CLI's own small file writes.
struct FileWriteError: Error, CustomStringConvertible {
    let code: Int32
    init(_ code: Int32) { self.code = code }
    var description: String { String(cString: strerror(code)) }
}
