import ArgumentParser
import Glibc
import Logging
import StockadeSupervisor

struct Verify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Prove each control on this host with the built-in probes; exit 0 only if every applicable control holds.",
        discussion: "Each probe runs inside a real sandboxed run under the profile and once unsandboxed as a positive control. Verdicts: enforced (the control's own mechanism stopped the probe, and the evidence says which: the filter recorded the call, the pids counter moved, the OOM kill), not-enforced (the probe did it, or the call got past the filter), not-applicable (the profile grants it), inconclusive (the host cannot do it either, the probe could not tell, or another mechanism stopped it before this control was reached). The verification and its probe runs are kept in the audit trail; the probe runs' directories are removed. Verdicts are coloured on a terminal (not with NO_COLOR, never in a pipe or with --json)."
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
        let verifier: Verifier
        do {
            Supervisor.prepareToSpawn(concurrency: 4)
            let supervisor = try Supervisor(stateDirectory: state.resolved(), catalog: .standard(),
                                            environment: ProcessEnvironment.current(), logger: Logger(label: "stockade"))
            verifier = Verifier(supervisor: supervisor, probePath: probe, profile: profile)
            report = try await verifier.run()
            // The evidence is part of the trail: a verification nobody can find later proves nothing.
            // The probe runs were real runs of this state directory, so their own events (run.created,
            // violations, kills) stay in the trail too, named by the verification's `runs`; only their
            // directories go, and only once the verification that names them is recorded.
            try supervisor.audit.record(runId: nil, kind: "verification", detail: report.jsonValue)
        } catch {
            Console.error("stockade verify: \(error)")
            throw ExitCode(1)
        }
        do {
            _ = try verifier.removeRunDirectories(of: report)
        } catch {
            Console.error("stockade verify: recorded, but cannot remove the probe run directories: \(error)")
        }
        // Colour only for a person at a terminal: never into a pipe or a file, never in JSON.
        let colored = !json && isatty(STDOUT_FILENO) == 1 && ProcessEnvironment.current()["NO_COLOR"] == nil
        if colored {
            // Every field escaped for the terminal; the colour codes are the only control bytes written.
            Console.outUnescaped(report.table(colored: true, escape: TerminalOutput.field))
        } else {
            Console.out(json ? report.jsonValue.serialized() : report.table)
        }
        throw ExitCode(report.passed ? 0 : 1)
    }
}
