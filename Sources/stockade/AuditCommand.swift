import ArgumentParser
import Glibc
import Logging
import StockadeAudit
import StockadePolicy
import StockadeSupervisor

/// Opens the state directory's supervisor (and its audit store) for a query command.
func openSupervisor(_ state: StateOptions) throws -> Supervisor {
    do {
        return try Supervisor(stateDirectory: state.resolved(), catalog: .standard(),
                              environment: ProcessEnvironment.current(), logger: Logger(label: "stockade"))
    } catch {
        Console.error("stockade: \(error)")
        throw ExitCode(1)
    }
}

struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Read and verify the audit trail.",
        subcommands: [Events.self, Runs.self, Verify.self]
    )

    struct Events: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "events",
            abstract: "Audit events in seq order (resume with --since the last seq seen).")
        @OptionGroup var state: StateOptions
        @Option(name: .customLong("run"), help: "Only this run's events.") var runId: String?
        @Option(help: "Only events with seq greater than this.") var since: Int64?
        @Option(help: "Only events of this kind (e.g. violation, kill, review.decided).") var kind: String?
        @Flag(help: "One JSON object a line.") var json = false

        func run() throws {
            let supervisor = try openSupervisor(state)
            do {
                try supervisor.audit.events(runId: runId, since: since, kind: kind) { event in
                    if json {
                        Console.out(JSONValue.object([
                            "seq": .number(event.seq), "runId": event.runId.map { .string($0) } ?? .null,
                            "runSeq": .number(event.runSeq), "kind": .string(event.kind), "at": .string(event.at),
                            "detail": event.detailValue ?? .string(event.detail), "hash": .string(event.hash),
                        ]).serialized())
                    } else {
                        // Every field escaped: a worker-chosen string must not start a row or split a column.
                        let fields = [event.at, event.runId ?? "-", event.kind, event.detail].map(TerminalOutput.field)
                        Console.out(([String(event.seq)] + fields).joined(separator: "\t"))
                    }
                }
            } catch {
                Console.error("stockade: \(error)")
                throw ExitCode(1)
            }
        }
    }

    struct Runs: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "runs", abstract: "Runs with their outcome, oldest first.")
        @OptionGroup var state: StateOptions
        @Flag(help: "One JSON object a line.") var json = false

        func run() throws {
            let supervisor = try openSupervisor(state)
            do {
                try supervisor.audit.runs { run in
                    if json {
                        Console.out(JSONValue.object([
                            "runId": .string(run.runId), "profile": .string(run.profile), "profileDigest": .string(run.profileDigest),
                            "command": .array(run.command.map { .string($0) }), "state": .string(run.state),
                            "outcome": run.outcome.map { .string($0) } ?? .null,
                            "exitStatus": run.exitStatus.map { .number($0) } ?? .null,
                            "createdAt": .string(run.createdAt), "endedAt": run.endedAt.map { .string($0) } ?? .null,
                        ]).serialized())
                    } else {
                        // Every field escaped: a command holding a newline or tab must stay one row.
                        let command = run.command.map(TerminalOutput.field).joined(separator: " ")
                        let fields = [run.runId, run.createdAt, run.profile, run.state, run.outcome ?? "-"].map(TerminalOutput.field)
                        Console.out((fields + [run.exitStatus.map(String.init) ?? "-", command]).joined(separator: "\t"))
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
            abstract: "Recompute the audit hash chain; exit 1 naming the first broken seq.")
        @OptionGroup var state: StateOptions

        func run() throws {
            let supervisor = try openSupervisor(state)
            let result: ChainVerification
            do {
                result = try supervisor.audit.verifyChain()
            } catch {
                Console.error("stockade: \(error)")
                throw ExitCode(1)
            }
            if let seq = result.firstBrokenSeq {
                Console.error("audit chain broken at seq \(seq): \(result.reason ?? "hash mismatch") (\(result.eventsChecked) events checked)")
                throw ExitCode(1)
            }
            Console.out("audit chain intact: \(result.eventsChecked) events")
        }
    }
}
