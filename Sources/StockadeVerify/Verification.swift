import StockadeSupervisor
import FoundationEssentials
import Glibc
import StockadeLinux
import StockadePolicy
import StockadeAudit

/// How one control fared on this host under one profile.
public enum Verdict: String, Sendable, Equatable, CaseIterable {
    /// The control's own mechanism stopped the sandboxed probe (the filter
    /// recorded the call, the pids counter moved, ...), and the same probe
    /// succeeded unsandboxed (or the mechanism's own record shows it acted).
    case enforced
    /// The sandboxed probe did the forbidden thing, or a call the filter must
    /// stop got past it (something else refused it).
    case notEnforced = "not-enforced"
    /// The profile grants it on purpose.
    case notApplicable = "not-applicable"
    /// No proof either way: the positive control also failed on this host, the
    /// sandboxed probe could not tell, or another mechanism stopped it first.
    case inconclusive

    /// The SGR colour of the verdict on a terminal; nil for plain text.
    var terminalColor: Int? {
        switch self {
        case .enforced: 32
        case .notEnforced: 31
        case .inconclusive: 33
        case .notApplicable: nil
        }
    }
}

/// What one probe run showed: how it ended and what it printed.
public struct ProbeObservation: Sendable, Equatable {
    /// `exited`, `signaled`, ... for sandboxed runs (the report's outcome); `exited`/`signaled` unsandboxed.
    public var outcome: String
    public var exitCode: Int32?
    public var signal: Int32?
    /// The probe's output, trimmed to its first two lines.
    public var output: String
    /// Violations the supervisor recorded: seccomp ones as `arch/syscall`,
    /// limits by their kind (`pids`, `memory`).
    public var violations: [String]
    /// The call the filter killed the worker at, as `arch/syscall`.
    public var seccompKill: String?
    /// Why the run itself failed, if it did.
    public var setupError: String?
    /// Anything unusual about how the observation was made (a repeated run).
    public var note: String?
    /// The sandboxed run's id (its events stay in the audit trail).
    public var runId: String?

    public init(outcome: String, exitCode: Int32?, signal: Int32?, output: String, violations: [String] = [],
                seccompKill: String? = nil, setupError: String? = nil, note: String? = nil, runId: String? = nil) {
        self.outcome = outcome
        self.exitCode = exitCode
        self.signal = signal
        self.output = output
        self.violations = violations
        self.seccompKill = seccompKill
        self.setupError = setupError
        self.note = note
        self.runId = runId
    }

    var refused: Bool { outcome == "exited" && exitCode == 0 }

    /// The syscall names of the recorded seccomp violations (any architecture).
    var violatedCalls: [String] { violations.compactMap { $0.split(separator: "/", maxSplits: 1).last.map(String.init) } }

    var summary: String {
        var s = output.isEmpty ? "(no output)" : output
        if let setupError { s = "setup failed: \(setupError)" }
        switch outcome {
        case "exited": s += " [exit \(exitCode ?? -1)]"
        case "signaled": s += " [signal \(signal ?? -1)]"
        default: s += " [\(outcome)]"
        }
        if !violations.isEmpty { s += " [violations: \(violations.joined(separator: ", "))]" }
        if let note { s += " (\(note))" }
        return s
    }

    var jsonValue: JSONValue {
        .object([
            "outcome": .string(outcome),
            "exitCode": exitCode.map { .number($0) } ?? .null,
            "signal": signal.map { .number($0) } ?? .null,
            "output": .string(output),
            "violations": .array(violations.map { .string($0) }),
            "seccompKill": seccompKill.map { .string($0) } ?? .null,
            "setupError": setupError.map { .string($0) } ?? .null,
            "note": note.map { .string($0) } ?? .null,
            "runId": runId.map { .string($0) } ?? .null,
        ])
    }
}

/// One control's verdict with its evidence.
public struct ControlResult: Sendable, Equatable {
    public var control: Control
    public var verdict: Verdict
    public var evidence: String
    /// Whether this result makes the verification fail: `not-enforced`, or
    /// `inconclusive` because the sandboxed run could not tell (an
    /// inconclusive positive control only says this kernel cannot do the thing).
    public var fails: Bool
    public var positiveControl: ProbeObservation
    public var sandboxed: ProbeObservation

    public var jsonValue: JSONValue {
        .object([
            "id": .string(control.id),
            "threatClass": .number(control.threatClass),
            "title": .string(control.title),
            "incident": control.incident.map { .string($0) } ?? .null,
            "verdict": .string(verdict.rawValue),
            "evidence": .string(evidence),
            "fails": .bool(fails),
            "needsCgroups": .bool(control.needsCgroups),
            "probe": .string(control.probe),
            "positiveControl": positiveControl.jsonValue,
            "sandboxed": sandboxed.jsonValue,
        ])
    }
}

/// The result of `stockade verify`: every control's verdict on this host under one profile.
public struct VerificationReport: Sendable, Equatable {
    public var profile: String
    public var profileDigest: String
    /// The image the probes ran on, if any.
    public var image: String?
    public var kernel: String
    public var cgroupMode: String
    public var controls: [ControlResult]
    public var durationMs: Int64
    /// Every sandboxed probe run, repeated ones included: their events stay in
    /// the audit trail; their run directories are removed once this report is recorded.
    public var runIds: [String]
    /// Where the profile came from: its file, or `builtin:NAME`.
    public var profileSource: String?

    public init(profile: String, profileDigest: String, kernel: String, cgroupMode: String, controls: [ControlResult], durationMs: Int64,
                runIds: [String] = [], profileSource: String? = nil, image: String? = nil) {
        self.profileSource = profileSource
        self.image = image
        self.profile = profile
        self.profileDigest = profileDigest
        self.kernel = kernel
        self.cgroupMode = cgroupMode
        self.controls = controls
        self.durationMs = durationMs
        self.runIds = runIds
    }

    public func count(_ verdict: Verdict) -> Int { controls.filter { $0.verdict == verdict }.count }

    /// Every applicable control holds (the exit status of `stockade verify` is 0).
    public var passed: Bool { !controls.contains { $0.fails } }

    /// The report as one JSON object (also the `detail` of the `verification` audit event).
    public var jsonValue: JSONValue {
        .object([
            "profile": .string(profile),
            "profileDigest": .string(profileDigest),
            "profileSource": profileSource.map { .string($0) } ?? .null,
            "kernel": .string(kernel),
            "cgroupMode": .string(cgroupMode),
            "controls": .array(controls.map(\.jsonValue)),
            "enforced": .number(count(.enforced)),
            "notEnforced": .number(count(.notEnforced)),
            "notApplicable": .number(count(.notApplicable)),
            "inconclusive": .number(count(.inconclusive)),
            "passed": .bool(passed),
            "durationMs": .number(durationMs),
            "runs": .array(runIds.map { .string($0) }),
            "image": image.map { .string($0) } ?? .null,
        ])
    }

    /// A readable table: control, verdict, evidence.
    public var table: String { table(colored: false) }

    /// The table, with each verdict in its colour when `colored` (for a
    /// terminal: green enforced, red not-enforced, yellow inconclusive).
    /// `escape` is applied to every text field (the evidence quotes what ran in
    /// the sandbox), so that the colour codes are the only control bytes a
    /// caller writing the result to a terminal unescaped lets through.
    public func table(colored: Bool, escape: (String) -> String = { $0 }) -> String {
        let width = max(7, controls.map(\.control.id.count).max() ?? 0)
        func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
        func paint(_ verdict: Verdict) -> String {
            let padded = pad(verdict.rawValue, 14)
            guard colored, let code = verdict.terminalColor else { return padded }
            // Only the word is coloured; the padding stays outside so columns line up.
            return "\u{1B}[\(code)m\(verdict.rawValue)\u{1B}[0m" + String(padded.dropFirst(verdict.rawValue.count))
        }
        var lines = [escape("profile \(profile), kernel \(kernel), cgroup \(cgroupMode)"), ""]
        lines.append(pad("CONTROL", width) + "  " + pad("VERDICT", 14) + "  EVIDENCE")
        for r in controls {
            lines.append(pad(escape(r.control.id), width) + "  " + paint(r.verdict) + "  " + escape(r.evidence))
        }
        lines.append("")
        lines.append("\(count(.enforced)) enforced, \(count(.notEnforced)) not enforced, \(count(.notApplicable)) not applicable, "
            + "\(count(.inconclusive)) inconclusive: " + (passed ? "every applicable control holds" : "FAILED"))
        return lines.joined(separator: "\n")
    }
}

/// Runs the built-in probes under one profile, inside real sandboxed runs and
/// unsandboxed as positive controls, and judges each control.
public struct Verifier: Sendable {
    public var supervisor: Supervisor
    /// The `stockade-probe` binary (bound read-only into each sandbox at `/probe/stockade-probe`).
    public var probePath: String
    public var profile: String
    public var controls: [Control]
    /// An imported image whose root the probes run on (else the profile's root).
    public var image: String?
    /// Probes in flight at once (each is a sandboxed and an unsandboxed run).
    public var concurrency: Int

    /// The run service the probes' sandboxed runs are submitted to, as any client's runs are (a
    /// daemon passes its own, so verification shares its admission); nil: one of its own, admitting
    /// `concurrency` at once.
    public var service: RunService?

    public static let probeMountPoint = "/probe/stockade-probe"

    public init(supervisor: Supervisor, probePath: String, profile: String, controls: [Control] = ControlCatalog.all, concurrency: Int = 4,
                service: RunService? = nil) {
        self.supervisor = supervisor
        self.probePath = probePath
        self.profile = profile
        self.controls = controls
        self.concurrency = max(1, concurrency)
        self.service = service
    }

    /// The probe runs' directories could not be removed (the verification itself is recorded).
    public struct CleanupFailure: Error {
        public var underlying: SupervisorError
    }

    /// Records the verification in the audit trail, then removes its probe runs' directories.
    /// The evidence is part of the trail: a verification nobody can find later proves nothing. The
    /// probe runs were real runs of this state directory, so their own events (run.created,
    /// violations, kills) stay in the trail too, named by the verification's `runs`; only their
    /// directories go, and only once the verification that names them is recorded.
    public func record(_ report: VerificationReport) throws {
        try supervisor.audit.record(runId: nil, kind: "verification", detail: report.jsonValue)
        do {
            _ = try removeRunDirectories(of: report)
        } catch {
            throw CleanupFailure(underlying: error)
        }
    }

    /// `stockade-probe` next to the running executable (`/proc/self/exe`).
    public static func probeNextToExecutable() -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        let exe = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard let slash = exe.lastIndex(of: "/") else { return nil }
        let probe = String(exe[..<slash]) + "/stockade-probe"
        return access(probe, X_OK) == 0 ? probe : nil
    }

    public func run() async throws(SupervisorError) -> VerificationReport {
        let started = WorkerClock.now()
        let loaded: LoadedProfile
        do {
            loaded = try supervisor.catalog.load(profile)
        } catch {
            throw SupervisorError(.profile, error.description)
        }
        guard access(probePath, X_OK) == 0 else {
            throw SupervisorError(.usage, "the probe binary \(probePath) is missing or not executable: build the stockade-probe product next to stockade")
        }
        let fixtures = try Fixtures()
        defer { fixtures.close() }

        let profile = loaded.profile
        let jobs = controls.map { control in
            (control, control.arguments.map { argument(for: $0, control: control, profile: profile, fixtures: fixtures) })
        }
        // Positive controls first, one after another on one thread, and only
        // then the sandboxed runs: a thread being created while the spawner
        // clones can leave the child waiting forever in glibc's setxid
        // (stk_spawn.c calls setresgid/setresuid, which signal every thread).
        let probePath = self.probePath
        let positives = await Blocking.run { jobs.map { PositiveControl.run(probePath, [$0.0.probe] + $0.1) } }

        // Every probe is submitted at once; the run service admits `concurrency` at a time.
        let service = self.service ?? RunService(supervisor: supervisor,
                                                 admission: .init(maxRunning: concurrency, maxQueued: 2 * jobs.count))
        var sandboxed = [ProbeObservation?](repeating: nil, count: jobs.count)
        var runIds = [[String]](repeating: [], count: jobs.count)
        await withTaskGroup(of: (Int, ProbeObservation, [String]).self) { group in
            for index in jobs.indices {
                group.addTask {
                    let (observation, ids) = await self.sandboxed(jobs[index].0, jobs[index].1, profile: profile, service: service)
                    return (index, observation, ids)
                }
            }
            while let (index, observation, ids) = await group.next() {
                sandboxed[index] = observation
                runIds[index] = ids
            }
        }
        var results: [ControlResult] = []
        for (index, job) in jobs.enumerated() {
            guard let observation = sandboxed[index] else { continue }
            results.append(Self.judge(job.0, profile: profile, positive: positives[index], sandboxed: observation))
        }
        return VerificationReport(profile: profile.name, profileDigest: loaded.digest, kernel: Self.kernelRelease(),
                                  cgroupMode: Self.cgroupMode(), controls: results,
                                  durationMs: Int64((WorkerClock.now() - started) / 1_000_000), runIds: runIds.flatMap { $0 },
                                  profileSource: loaded.source, image: image)
    }

    /// Removes the run directories of a verification's probe runs, once the
    /// verification is recorded: the audit keeps every run's events and the
    /// verification event keeps each probe's output, so the directories hold
    /// nothing the trail lacks. Returns how many were removed.
    public func removeRunDirectories(of report: VerificationReport) throws(SupervisorError) -> Int {
        try RunDirectoryMaintenance.remove(stateDirectory: supervisor.stateDirectory, runIds: report.runIds).count
    }

    /// The probe inside a real run under the profile, bound read-only at `/probe/stockade-probe`;
    /// with the ids of the runs it took.
    func sandboxed(_ control: Control, _ arguments: [String], profile: Profile, service: RunService) async -> (ProbeObservation, [String]) {
        var options = RunOptions(command: [Self.probeMountPoint, control.probe] + arguments)
        options.profile = self.profile
        options.image = image
        options.volumes = [Profile.Volume(source: probePath, target: Self.probeMountPoint, readOnly: true)]
        options.timeoutSeconds = min(profile.limits.timeoutSeconds, 15)
        if let egress = control.egress, let port = fixturePort(control, arguments) {
            options.network = .proxy
            options.allowHosts = ControlCatalog.EgressNames.allowed.compactMap { EgressRule.parse("\($0):\(port)") }
            options.pinnedHosts = Dictionary(uniqueKeysWithValues: ControlCatalog.EgressNames.pinned.map { ($0, "127.0.0.1") })
            options.allowPrivate = egress.allowPrivate
        }
        func submit() async -> RunReport {
            do {
                return try await service.submit(options, whenFull: .wait).report()
            } catch {
                var refused = RunReport(runId: "", profile: self.profile, outcome: .setupFailed)
                refused.setupError = RunReport.SetupError(stage: .supervisor, errno: 0, message: "the run service refused the probe: \(error)")
                return refused
            }
        }
        var report = await submit()
        // Every probe is bounded well under the deadline, so a timeout is never
        // a probe's answer; one more run tells a stuck run from a stuck probe.
        var note: String?
        var ids = [report.runId].filter { !$0.isEmpty }
        if report.outcome == .timeout {
            note = "run \(report.runId) timed out; this is a second run"
            report = await submit()
            if !report.runId.isEmpty { ids.append(report.runId) }
        }
        func name(_ v: RunReport.Violation) -> String {
            switch v.kind {
            case "seccomp": "\(v.architecture ?? "?")/\(v.syscall ?? "?")"
            case "egress": "egress/\(v.reason ?? "?")"
            default: v.kind
            }
        }
        let observation = ProbeObservation(
            outcome: report.outcome.rawValue, exitCode: report.exitCode, signal: report.signal,
            output: Self.firstLines(report.stdout.isEmpty ? report.stderr : report.stdout),
            violations: report.violations.map(name),
            seccompKill: report.outcome == .seccomp
                ? report.violations.first { $0.kind == "seccomp" && $0.action == "kill" }.map(name) : nil,
            setupError: report.setupError.map { "\($0.stage.rawValue): \($0.message)" }, note: note, runId: report.runId)
        return (observation, ids)
    }

    /// The fixture's port among a control's resolved arguments (where `.fixture` stood).
    func fixturePort(_ control: Control, _ arguments: [String]) -> String? {
        guard let i = control.arguments.firstIndex(of: .fixture), i < arguments.count else { return nil }
        return arguments[i]
    }

    func argument(for argument: Control.Argument, control: Control, profile: Profile, fixtures: Fixtures) -> String {
        let mib: Int64 = 1 << 20
        switch argument {
        case .literal(let s): return s
        case .fixture:
            switch control.fixture {
            case .loopbackListener: return String(fixtures.port)
            case .abstractListener: return fixtures.abstractName
            case .pathListener: return fixtures.socketPath
            case .none, .inheritedDescriptor: return ""
            }
        case .pidsAbove(let n): return String(min(profile.limits.pids + n, 4096))
        case .memoryMiBAbove(let n): return String(min(profile.limits.memoryBytes / mib + Int64(n), 65536))
        case .tmpMiBAbove(let n): return String(min(profile.limits.tmpBytes / mib + Int64(n), 65536))
        case .descriptorsAbove(let n): return String(min(profile.limits.rlimits.nofile + UInt64(n), 1 << 20))
        }
    }

    /// The verdict from the two runs (pure: no syscalls).
    public static func judge(_ control: Control, profile: Profile, positive: ProbeObservation, sandboxed: ProbeObservation) -> ControlResult {
        func result(_ verdict: Verdict, _ evidence: String, fails: Bool) -> ControlResult {
            ControlResult(control: control, verdict: verdict, evidence: evidence, fails: fails, positiveControl: positive, sandboxed: sandboxed)
        }
        let succeeded = sandboxed.outcome == "exited" && sandboxed.exitCode == 77
        if let grant = control.grant(in: profile) {
            // Loopback is the worker's own: the grant only explains a probe that got through.
            let explains = control.grants.contains(.networkLoopback) && profile.network.mode == .loopback ? succeeded : true
            if explains { return result(.notApplicable, "\(grant); sandboxed: \(sandboxed.summary)", fails: false) }
        }
        if succeeded { return result(.notEnforced, "the probe was able to: \(sandboxed.summary)", fails: true) }

        let positiveHeld: Bool
        switch control.expectation {
        case .signaled(let signal): positiveHeld = positive.outcome == "signaled" && positive.signal == signal
        case .exited(let code): positiveHeld = positive.outcome == "exited" && positive.exitCode == code
        case .refused, .seccompKill, .contained: positiveHeld = positive.outcome == "exited" && positive.exitCode == 77
        }

        // The probe was stopped, by whatever means.
        let stopped: Bool
        switch control.expectation {
        case .refused: stopped = sandboxed.refused || sandboxed.outcome == "seccomp"
        case .seccompKill: stopped = sandboxed.outcome == "seccomp"
        case .contained:
            // An OOM kill in the run's cgroup (the kernel's counter moved) that ended the probe with
            // SIGKILL, where the kernel's log did not name the probe as the victim (a fork bomb's
            // reports overwrite each other): the memory limit stopped it all the same.
            let killedAfterOOM = sandboxed.outcome == "signaled" && sandboxed.signal == SIGKILL && sandboxed.violations.contains("memory")
            stopped = sandboxed.refused || sandboxed.outcome == "oom" || killedAfterOOM
        case .signaled(let signal): stopped = sandboxed.outcome == "signaled" && sandboxed.signal == signal
        case .exited(let code): stopped = sandboxed.outcome == "exited" && sandboxed.exitCode == code
        }
        // ... and by this control's own mechanism: what it did, in words.
        let acted = stopped ? Self.action(of: control.mechanism, in: sandboxed) : nil

        if let acted {
            if positiveHeld { return result(.enforced, "\(acted): \(sandboxed.summary)", fails: false) }
            // The supervisor's record of the mechanism acting is itself the
            // positive evidence (the filter saw the call; the counter moved),
            // even where this host cannot do the forbidden thing unsandboxed.
            if control.mechanism.recordedBySupervisor {
                return result(.enforced, "\(acted) (this host cannot do it unsandboxed either: \(positive.summary)): \(sandboxed.summary)",
                              fails: false)
            }
        }
        // The host cannot do it either: nothing to prove (unless the sandboxed run itself broke).
        if !positiveHeld && sandboxed.outcome != "setup-failed" {
            return result(.inconclusive, "the positive control failed on this host: \(positive.summary); sandboxed: \(sandboxed.summary)", fails: false)
        }
        if stopped {
            // Stopped, but not by this control's mechanism: no evidence for it.
            let other = Self.otherStopper(sandboxed)
            // A refused call the filter never saw got past it: that is the filter failing.
            if case .filter(let calls) = control.mechanism, sandboxed.refused {
                return result(.notEnforced, "the filter recorded no \(calls.joined(separator: "/")): the call got past it and \(other): \(sandboxed.summary)",
                              fails: true)
            }
            return result(.inconclusive, "\(other), not \(control.mechanism.name): no evidence that this control holds: \(sandboxed.summary)",
                          fails: true)
        }
        switch control.expectation {
        case .signaled, .exited:
            return result(.notEnforced, "misclassified: \(sandboxed.summary)", fails: true)
        case .seccompKill where sandboxed.outcome == "exited":
            return result(.notEnforced, "the worker survived the call (the filter must kill): \(sandboxed.summary)", fails: true)
        case .refused, .seccompKill, .contained:
            return result(.inconclusive, "the sandboxed probe could not tell: \(sandboxed.summary)", fails: true)
        }
    }

    /// What `mechanism` did to the stopped probe, as a phrase; nil when it did not act.
    static func action(of mechanism: Control.Mechanism, in o: ProbeObservation) -> String? {
        func killed(at calls: [String]) -> String? {
            guard let kill = o.seccompKill, let call = kill.split(separator: "/").last, calls.contains(String(call)) else { return nil }
            return "the filter killed the worker at \(kill)"
        }
        switch mechanism {
        case .probe(let calls):
            if o.refused { return "refused, as the probe observed" }
            return killed(at: calls)
        case .filter(let calls):
            if let kill = killed(at: calls) { return kill }
            guard o.refused, let call = o.violatedCalls.first(where: calls.contains) else { return nil }
            return "the filter refused \(call) (violation recorded)"
        case .filterAnswer(let call, let errno):
            if let kill = killed(at: [call]) { return kill }
            guard o.refused else { return nil }
            if o.violatedCalls.contains(call) { return "the filter refused \(call) (violation recorded)" }
            return o.output.contains("(\(errno))") ? "the filter answered \(call) with \(errno) (by design unrecorded)" : nil
        case .foreignArchitecture(let arch):
            guard let kill = o.seccompKill, kill.hasPrefix(arch + "/") else { return nil }
            return "the filter killed the worker at \(kill)"
        case .pidsLimit:
            return o.violations.contains("pids") ? "the pids limit refused a fork (pids violation recorded)" : nil
        case .memoryLimit:
            if o.outcome == "oom" { return "the memory limit OOM-killed the probe (memory violation recorded)" }
            // The kernel's counter moved, but its log did not name the probe as the victim.
            return o.violations.contains("memory") ? "the memory limit OOM-killed a process in the run's cgroup (memory violation recorded)" : nil
        case .refusalErrno(let errno):
            return o.refused && o.output.contains("(\(errno))") ? "refused with \(errno)" : nil
        case .classification:
            return "classified from the kernel's report"
        case .egress(let reason):
            return o.refused && o.violations.contains("egress/\(reason)") ? "the egress proxy refused it (\(reason), violation recorded)" : nil
        }
    }

    /// What did stop a probe its control's mechanism did not, as a phrase.
    static func otherStopper(_ o: ProbeObservation) -> String {
        if o.outcome == "oom" { return "the memory limit stopped it (OOM kill)" }
        if let kill = o.seccompKill { return "the filter killed it at \(kill)" }
        if o.violations.contains("memory") { return "the memory limit acted (OOM kill)" }
        if o.violations.contains("pids") { return "the pids limit acted" }
        return "something else refused it"
    }

    static func firstLines(_ text: String) -> String {
        text.split(separator: "\n", omittingEmptySubsequences: true).prefix(2).joined(separator: " | ")
    }

    static func kernelRelease() -> String {
        var u = utsname()
        guard uname(&u) == 0 else { return "unknown" }
        return withUnsafeBytes(of: u.release) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    /// `v2` (unified), `hybrid` (v1 with a unified mount), `v1`, or `none`.
    static func cgroupMode() -> String {
        if access("/sys/fs/cgroup/cgroup.controllers", F_OK) == 0 { return "v2" }
        if access("/sys/fs/cgroup/unified/cgroup.controllers", F_OK) == 0 { return "hybrid" }
        if access("/sys/fs/cgroup/pids", F_OK) == 0 || access("/sys/fs/cgroup/memory", F_OK) == 0 { return "v1" }
        return "none"
    }
}

/// Host-side things probes try to reach: a loopback TCP listener, an
/// abstract and a path Unix listener (connections complete into the backlog:
/// nothing needs to accept), and a directory descriptor left inheritable so
/// that a leak into the worker would show.
final class Fixtures: Sendable {
    let port: UInt16
    let abstractName: String
    let socketPath: String
    let directory: String
    private let descriptors: [Int32]

    init() throws(SupervisorError) {
        var fds: [Int32] = []
        func fail(_ what: String) -> SupervisorError {
            let message = "verify: cannot \(what): \(String(cString: strerror(errno)))"
            for fd in fds { Glibc.close(fd) }
            return SupervisorError(.io, message)
        }
        // TCP on 127.0.0.1, kernel-chosen port.
        let tcp = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard tcp >= 0 else { throw fail("create a TCP socket") }
        fds.append(tcp)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(tcp, $0, len) } }
        guard bound == 0, listen(tcp, 64) == 0 else { throw fail("listen on 127.0.0.1") }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(tcp, $0, &len) } }
        port = UInt16(bigEndian: addr.sin_port)

        var rng = SystemRandomNumberGenerator()
        let tag = "\(getpid())-\(UInt32.random(in: 0...UInt32.max, using: &rng))"
        abstractName = "stockade-verify-\(tag)"
        guard let abstract = Self.unixListener(name: abstractName, abstract: true) else { throw fail("listen on @\(abstractName)") }
        fds.append(abstract)

        var template = Array("/tmp/stockade-verify-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw fail("create a temporary directory") }
        directory = String(cString: made)
        socketPath = directory + "/host.sock"
        guard let path = Self.unixListener(name: socketPath, abstract: false) else {
            rmdir(directory)
            throw fail("listen on \(socketPath)")
        }
        fds.append(path)

        // Deliberately inheritable (no O_CLOEXEC): the worker must not see it.
        let root = open("/", O_RDONLY | O_DIRECTORY)
        guard root >= 0 else { throw fail("open /") }
        fds.append(root)
        descriptors = fds
    }

    static func unixListener(name: String, abstract: Bool) -> Int32? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(name.utf8)
        let capacity = MemoryLayout.size(ofValue: addr.sun_path)
        guard bytes.count + 1 < capacity else { Glibc.close(fd); return nil }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i + (abstract ? 1 : 0)] = b }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count + (abstract ? 1 : 0))
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        guard bound == 0, listen(fd, 64) == 0 else { Glibc.close(fd); return nil }
        return fd
    }

    func close() {
        for fd in descriptors { Glibc.close(fd) }
        unlink(socketPath)
        rmdir(directory)
    }
}

/// The probe run unsandboxed, as this process's user: what it can do without Stockade.
enum PositiveControl {
    static let outputLimit = 8192
    static let deadlineMs: Int32 = 20_000

    static func run(_ path: String, _ arguments: [String]) -> ProbeObservation {
        let pipeFDs: [Int32]
        do {
            let pipe = try LinuxPipe.make()
            pipeFDs = [pipe.read, pipe.write]
        } catch {
            return ProbeObservation(outcome: "setup-failed", exitCode: nil, signal: nil, output: "", setupError: "pipe: \(error.message)")
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 2)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        var defaults = sigset_t()
        sigfillset(&defaults)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = [strdup("PATH=/usr/bin:/bin"), nil]
        defer { for p in argv + envp { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, path, &actions, &attributes, argv, envp)
        Glibc.close(pipeFDs[1])
        guard rc == 0 else {
            Glibc.close(pipeFDs[0])
            return ProbeObservation(outcome: "setup-failed", exitCode: nil, signal: nil, output: "", setupError: "posix_spawn \(path): \(String(cString: strerror(rc)))")
        }
        let output = readBounded(pipeFDs[0], pid: pid)
        Glibc.close(pipeFDs[0])
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let signal = status & 0x7F
        let text = Verifier.firstLines(String(decoding: output, as: UTF8.self))
        if signal == 0 {
            return ProbeObservation(outcome: "exited", exitCode: (status >> 8) & 0xFF, signal: nil, output: text)
        }
        return ProbeObservation(outcome: "signaled", exitCode: nil, signal: signal, output: text)
    }

    /// Reads until EOF, at most `outputLimit` bytes kept; kills the probe at the deadline.
    static func readBounded(_ fd: Int32, pid: pid_t) -> [UInt8] {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        let deadline = WorkerClock.now() + UInt64(deadlineMs) * 1_000_000
        while true {
            let now = WorkerClock.now()
            if now >= deadline { kill(pid, SIGKILL); break }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&p, 1, Int32((deadline - now) / 1_000_000) + 1)
            if ready < 0 && errno == EINTR { continue }
            if ready <= 0 { continue }
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            if out.count < outputLimit { out += buffer[0..<min(n, outputLimit - out.count)] }
        }
        return out
    }
}
