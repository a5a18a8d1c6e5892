import CStockade
import FoundationEssentials
import Glibc
import Logging
import StockadeLinux
import StockadePolicy

/// Runs workers: one run's whole lifecycle (prepare, spawn, wait, collect,
/// classify, record). One supervisor serves many concurrent runs.
public final class Supervisor: Sendable {
    public let stateDirectory: String
    public let catalog: ProfileCatalog
    let logger: Logger
    let hostEnvironment: [String: String]

    public init(stateDirectory: String, catalog: ProfileCatalog, environment: [String: String], logger: Logger) throws(SupervisorError) {
        self.stateDirectory = stateDirectory
        self.catalog = catalog
        self.logger = logger
        self.hostEnvironment = environment
        try Self.makeDirectory(stateDirectory)
        try Self.makeDirectory(stateDirectory + "/runs")
        // Workers inherit the supervisor's supplementary groups, and setgroups
        // is denied in their namespace: hold none, so they hold none.
        _ = setgroups(0, nil)
    }

    static func makeDirectory(_ path: String) throws(SupervisorError) {
        var prefix = ""
        for part in path.split(separator: "/") {
            prefix += "/" + part
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST {
                throw SupervisorError(.io, "cannot create \(prefix): \(String(cString: strerror(errno)))")
            }
        }
    }

    /// Runs one worker and returns its report; never throws: every failure is a classified report.
    public func run(_ options: RunOptions, onOutput: (@Sendable (Int32, [UInt8]) -> Void)? = nil) async -> RunReport {
        let runId = RunIdentifier.make()
        let started = WorkerClock.now()
        var report = RunReport(runId: runId, profile: options.profile, outcome: .setupFailed)
        do {
            report = try await execute(runId: runId, options: options, onOutput: onOutput)
        } catch let error as SetupFailure {
            report.setupError = RunReport.SetupError(stage: error.stage, errno: error.errno, message: error.message)
            report.durationMs = Int64((WorkerClock.now() - started) / 1_000_000)
            logger.error("run.setup-failed", metadata: ["run.id": "\(runId)", "stage": "\(error.stage)", "message": "\(error.message)"])
        } catch {
            report.setupError = RunReport.SetupError(stage: "supervisor", errno: 0, message: "\(error)")
        }
        return report
    }

    /// The report for a request that could not be read: nothing ran.
    public func rejectedRequest(reason: String) -> RunReport {
        var report = RunReport(runId: RunIdentifier.make(), profile: "", outcome: .setupFailed)
        report.setupError = RunReport.SetupError(stage: "request-line", errno: 0, message: reason)
        return report
    }

    struct SetupFailure: Error {
        let stage: String
        let errno: Int32
        let message: String
    }

    private func execute(runId: String, options: RunOptions, onOutput: (@Sendable (Int32, [UInt8]) -> Void)?) async throws -> RunReport {
        let loaded: LoadedProfile
        do {
            loaded = try catalog.load(options.profile)
        } catch {
            throw SetupFailure(stage: "profile", errno: 0, message: error.description)
        }
        var profile = loaded.profile
        apply(options, to: &profile)
        guard let command = options.command, !command.isEmpty else {
            throw SetupFailure(stage: "usage", errno: 0, message: "no command: give one after -- or in the request manifest")
        }
        let runPolicy = try runPolicy(for: profile, options: options)
        profile.volumes = runPolicy.volumes

        let runDirectory = stateDirectory + "/runs/" + runId
        do {
            try Self.makeDirectory(runDirectory)
            try Self.makeDirectory(runDirectory + "/logs")
        } catch {
            throw SetupFailure(stage: "run-directory", errno: 0, message: error.description)
        }

        let policy = runPolicy.seccomp
        let program: SeccompProgram
        do {
            program = try SeccompCompiler.compile(policy)
        } catch {
            throw SetupFailure(stage: error.stage, errno: error.errno, message: error.message)
        }

        var layout = RootLayout(uid: profile.user.uid, gid: profile.user.gid, hostname: profile.hostname,
                                tmpBytes: profile.limits.tmpBytes, workspace: .empty(sizeBytes: profile.limits.workspaceBytes),
                                resultBytes: profile.limits.resultBytes)
        layout.volumes = profile.volumes.map { RootLayout.Volume(source: $0.source, target: $0.target, readOnly: $0.readOnly) }
        layout.tmpfs = profile.tmpfs.map { ($0.target, $0.sizeBytes) }
        var spec = SandboxSpec(argv: command, environment: environment(for: profile, options: options, secrets: runPolicy.secrets),
                               mounts: layout.mounts())
        spec.hostname = profile.hostname
        spec.uid = profile.user.uid
        spec.gid = profile.user.gid
        spec.loopback = profile.network.mode == .loopback || !profile.network.publish.isEmpty
        spec.seccomp = program
        spec.seccompNotify = policy.usesNotifications
        spec.rlimits = rlimits(for: profile)

        // Host ports are taken before anything runs: a taken port fails the run closed.
        let forwarder = try listenForPublishedPorts(profile)
        let stdio: Pipes
        do {
            stdio = try Pipes()
        } catch {
            forwarder?.stop()
            throw error
        }
        let spawnStarted = WorkerClock.now()
        let worker: SpawnedWorker
        do {
            worker = try await Spawner.shared.spawn(spec, stdin: stdio.stdin, stdout: stdio.stdoutWrite, stderr: stdio.stderrWrite)
        } catch {
            stdio.closeAll()
            forwarder?.stop()
            throw SetupFailure(stage: error.stage, errno: error.errno, message: error.message)
        }
        stdio.closeChildEnds()
        do {
            try forwarder?.attach(workerPid: worker.pid)
        } catch {
            _ = stk_pidfd_send_signal(worker.pidfd, SIGKILL)
            forwarder?.stop()
            throw SetupFailure(stage: error.stage, errno: error.errno, message: error.message)
        }
        logger.debug("worker.started", metadata: ["run.id": "\(runId)", "worker.pid": "\(worker.pid)"])

        var config = WorkerMonitor.Configuration(stdoutCap: profile.limits.stdoutBytes, stderrCap: profile.limits.stderrBytes,
                                                 timeoutNanos: UInt64(profile.limits.timeoutSeconds * 1e9), policy: policy)
        let output = RedactingOutput(runPolicy.redactor, onOutput)
        config.onOutput = output?.write ?? onOutput
        let monitor: WorkerMonitor
        do {
            monitor = try WorkerMonitor(worker: worker, stdout: stdio.stdoutRead, stderr: stdio.stderrRead, configuration: config)
        } catch {
            _ = stk_pidfd_send_signal(worker.pidfd, SIGKILL)
            forwarder?.stop()
            throw SetupFailure(stage: error.stage, errno: error.errno, message: error.message)
        }
        let observation = await monitor.wait()
        forwarder?.stop()
        output?.finish()
        // Secrets never reach the report or the logs, even split across writes or cut by the cap.
        let stdoutBytes = runPolicy.redactor.redact(captured: observation.stdout)
        let stderrBytes = runPolicy.redactor.redact(captured: observation.stderr)

        var report = RunReport(runId: runId, profile: profile.name, outcome: .exited)
        classify(observation, into: &report)
        report.durationMs = Int64((observation.endedAtNanos - spawnStarted) / 1_000_000)
        report.cpuTimeMs = Int64((observation.userCPUNanos + observation.systemCPUNanos) / 1_000_000)
        report.memoryPeakBytes = Int64(observation.maxRSSBytes)
        report.stdout = runPolicy.redactor.redact(String(decoding: stdoutBytes, as: UTF8.self))
        report.stderr = runPolicy.redactor.redact(String(decoding: stderrBytes, as: UTF8.self))
        report.orphansKilled = observation.orphans
        report.stdoutTruncated = observation.stdout.truncated
        report.stderrTruncated = observation.stderr.truncated

        try? FileReading.writeAtomically(runDirectory + "/logs/stdout.log", stdoutBytes)
        try? FileReading.writeAtomically(runDirectory + "/logs/stderr.log", stderrBytes)
        try? FileReading.writeAtomically(runDirectory + "/report.json", Array(report.json().utf8))
        return report
    }

    func classify(_ o: WorkerObservation, into report: inout RunReport) {
        report.violations = o.violations.map {
            RunReport.Violation(kind: "seccomp", syscall: $0.syscall, architecture: $0.architecture, count: $0.count,
                                action: $0.answeredErrno == nil ? "kill" : "errno")
        }
        switch o.exit {
        case .exited(let code): report.exitCode = code
        case .signaled(let signal): report.signal = signal
        }
        if o.seccompKill != nil {
            report.outcome = .seccomp
        } else if o.timedOut {
            report.outcome = .timeout
        } else if case .signaled = o.exit {
            report.outcome = .signaled
        } else {
            report.outcome = .exited
        }
    }

    func apply(_ options: RunOptions, to profile: inout Profile) {
        if let v = options.memoryBytes { profile.limits.memoryBytes = v }
        if let v = options.cpus { profile.limits.cpus = v }
        if let v = options.pids { profile.limits.pids = v }
        if let v = options.timeoutSeconds { profile.limits.timeoutSeconds = v }
        if let v = options.network { profile.network.mode = v }
        profile.network.publish += options.publish
        // Publishing needs the worker's loopback up (it is still the worker's only interface).
        if !profile.network.publish.isEmpty { profile.network.mode = .loopback }
        // Volumes from options are checked (as `--volume[i]`) and added by `runPolicy(for:options:)`.
    }

    func seccompPolicy(for profile: Profile) throws(ProfileError) -> SeccompPolicy {
        try SeccompLoader.policy(for: profile)
    }

    /// Only what the profile passes or sets, then per-run values, then the
    /// profile's secrets (which nothing overrides); nothing else of the supervisor's.
    func environment(for profile: Profile, options: RunOptions, secrets: RunSecrets = .none) -> [(String, String)] {
        var env: [String: String] = [:]
        for name in profile.environment.pass {
            if let value = hostEnvironment[name] { env[name] = value }
        }
        for (k, v) in profile.environment.set { env[k] = v }
        for (k, v) in options.environment { env[k] = v }
        for (k, v) in secrets.environment { env[k] = v }
        return env.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    func rlimits(for profile: Profile) -> [(Int32, UInt64, UInt64)] {
        let r = profile.limits.rlimits
        return [
            (Int32(RLIMIT_CORE.rawValue), r.core, r.core),
            (Int32(RLIMIT_NOFILE.rawValue), r.nofile, r.nofile),
            (Int32(RLIMIT_FSIZE.rawValue), r.fsize, r.fsize),
            (Int32(RLIMIT_STACK.rawValue), r.stack, r.stack),
            (Int32(__RLIMIT_RTPRIO.rawValue), 0, 0),
            (Int32(__RLIMIT_MEMLOCK.rawValue), 64 << 10, 64 << 10),
        ]
    }
}

/// The supervisor's ends and the child's ends of the worker's stdio.
final class Pipes: Sendable {
    let stdin: Int32
    let stdoutRead: Int32, stdoutWrite: Int32
    let stderrRead: Int32, stderrWrite: Int32

    init() throws {
        var out: [Int32] = [-1, -1], err: [Int32] = [-1, -1]
        let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        guard devNull >= 0, stk_pipe_cloexec(&out, O_NONBLOCK) == 0, stk_pipe_cloexec(&err, O_NONBLOCK) == 0 else {
            throw Supervisor.SetupFailure(stage: "pipe", errno: errno, message: "cannot create the worker's stdio pipes")
        }
        stdin = devNull
        stdoutRead = out[0]
        stdoutWrite = out[1]
        stderrRead = err[0]
        stderrWrite = err[1]
        // The worker's ends must block: a worker writing into a full pipe waits.
        _ = fcntl(stdoutWrite, F_SETFL, 0)
        _ = fcntl(stderrWrite, F_SETFL, 0)
    }

    func closeChildEnds() {
        close(stdin)
        close(stdoutWrite)
        close(stderrWrite)
    }

    func closeAll() {
        closeChildEnds()
        close(stdoutRead)
        close(stderrRead)
    }
}

enum WorkerClock {
    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

/// Run ids sort by time: 48-bit milliseconds and 80 random bits, Crockford base32 (ULID).
enum RunIdentifier {
    static let alphabet = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ".utf8)

    static func make() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let ms = UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
        var rng = SystemRandomNumberGenerator()
        let high = UInt16.random(in: 0...UInt16.max, using: &rng), low = UInt64.random(in: 0...UInt64.max, using: &rng)
        // 10 digits of time (48 bits), then 16 digits of randomness (80 bits).
        var out = (0..<10).map { alphabet[Int((ms >> UInt64(5 * (9 - $0))) & 31)] }
        out += (0..<16).map { i -> UInt8 in
            let shift = 5 * (15 - i) // bit offset within the 80-bit value high:low
            let bits = shift >= 64 ? UInt64(high) >> UInt64(shift - 64) : (low >> UInt64(shift)) | (shift > 48 ? UInt64(high) << UInt64(64 - shift) : 0)
            return alphabet[Int(bits & 31)]
        }
        return String(decoding: out, as: UTF8.self)
    }
}
