import ArgumentParser
import Glibc
import Logging
import StockadeSupervisor

struct Verify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Prove each control on this host with the built-in probes; exit 0 only if every applicable control holds.",
        discussion: "Each probe runs inside a real sandboxed run under the profile and once unsandboxed as a positive control. Verdicts: enforced, not-enforced, not-applicable (the profile grants it), inconclusive (the host cannot do it either, or the probe could not tell)."
    )

    @OptionGroup var state: StateOptions
    @Option(help: "Profile name or path.") var profile: String = "default"
    @Flag(help: "Print one JSON object instead of a table.") var json = false

    func run() async throws {
        guard getuid() == 0 else {
            Console.error("stockade verify: needs root (sandboxed runs map ids and the positive controls try privileged calls)")
            throw ExitCode(1)
        }
        guard let probe = Verifier.probeNextToExecutable() else {
            Console.error("stockade verify: no executable stockade-probe next to this stockade binary: build the stockade-probe product")
            throw ExitCode(1)
        }
        let report: VerificationReport
        do {
            Supervisor.prepareToSpawn(concurrency: 4)
            let supervisor = try Supervisor(stateDirectory: state.resolved(), catalog: .standard(),
                                            environment: ProcessEnvironment.current(), logger: Logger(label: "stockade"))
            report = try await Verifier(supervisor: supervisor, probePath: probe, profile: profile).run()
            // The evidence is part of the trail: a verification nobody can find later proves nothing.
            try supervisor.audit.record(runId: nil, kind: "verification", detail: report.jsonValue)
        } catch {
            Console.error("stockade verify: \(error)")
            throw ExitCode(1)
        }
        Console.out(json ? report.jsonValue.serialized() : report.table)
        throw ExitCode(report.passed ? 0 : 1)
    }
}
