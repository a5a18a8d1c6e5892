import CStockade
import FoundationEssentials
import Glibc
import Logging
import StockadeAudit
import StockadeBundles
import StockadeCgroups
import StockadeImages
import StockadeLinux
import StockadePolicy
import Synchronization

/// Runs workers: one run's whole lifecycle (prepare, spawn, wait, collect,
/// classify, record). One supervisor serves many concurrent runs and holds
/// the state directory's audit store.
public final class Supervisor: Sendable {
    public let stateDirectory: String
    public let catalog: ProfileCatalog
    public let audit: any AuditStore
    /// The host's cgroup driver, or why there is none (runs then fail closed).
    let cgroups: Result<any CgroupDriver, CgroupError>
    let logger: Logger
    let hostEnvironment: [String: String]
    /// Runs under way, for `recordForcedExit`.
    let activeRuns = Mutex(Set<String>())

    /// Forks the spawn helper, for a command that is about to run workers: call it first, before the
    /// supervisor opens its audit store or loads any profile or secret, so the helper (and every
    /// worker's init, a copy of it) holds none of that.
    /// `concurrency`: how many spawns may be under way at once (1 to 4 helpers).
    public static func prepareToSpawn(concurrency: Int = 1) {
        Spawner.shared.prepare(helpers: concurrency)
    }

    /// `readOnly`: for commands that only query the state (audit events/runs/verify, review list/show):
    /// nothing is created, migrated, marked abandoned or swept, no credential changes; running workers
    /// through such a supervisor fails closed.
    public init(stateDirectory: String, catalog: ProfileCatalog, environment: [String: String], logger: Logger,
                readOnly: Bool = false) throws(SupervisorError) {
        self.stateDirectory = stateDirectory
        self.catalog = catalog
        self.logger = logger
        self.hostEnvironment = environment
        if readOnly {
            do {
                audit = try SQLiteAuditStore(readingAt: stateDirectory + "/audit.sqlite")
            } catch {
                throw SupervisorError(.audit, "cannot open the audit database: \(error)")
            }
            cgroups = .failure(CgroupError(.noCgroupFilesystem, "this supervisor was opened read-only, for queries: it runs no workers"))
            return
        }
        try Self.makeDirectory(stateDirectory)
        try Self.makeDirectory(stateDirectory + "/runs")
        // Workers inherit the supervisor's supplementary groups, and setgroups
        // is denied in their namespace: hold none, so they hold none.
        _ = setgroups(0, nil)
        do {
            let store = try SQLiteAuditStore(path: stateDirectory + "/audit.sqlite", supervisorPid: getpid(),
                                             supervisorStart: ProcessIdentity.currentStartTime)
            let abandoned = try store.markAbandoned(isAlive: ProcessIdentity.isAlive)
            if !abandoned.isEmpty { logger.info("runs.abandoned", metadata: ["runs": "\(abandoned)"]) }
            audit = store
        } catch {
            throw SupervisorError(.audit, "cannot open the audit database: \(error)")
        }
        cgroups = Result { () throws(CgroupError) in try Cgroups.detect() }
        if case .success(let driver) = cgroups {
            let runs = stateDirectory + "/runs/"
            // A run of this state directory is stale once its lock is free; a cgroup with no run here
            // (a supervisor that died with its state directory removed) once it is empty and old.
            let removed = driver.removeStale { name in
                switch Self.runLock(runs + name) {
                case .held: true
                case .free: false
                case .missing: !driver.isAbandoned(name: name, olderThan: Self.abandonedCgroupAge)
                }
            }
            if !removed.isEmpty { logger.info("cgroups.stale-removed", metadata: ["cgroups": "\(removed)"]) }
        }
    }

    /// Seconds after which an empty run cgroup that no run of this state directory owns is removed.
    static let abandonedCgroupAge = 60

    enum RunLock { case held, free, missing }

    /// The lock of a run directory: held by a live supervisor, free (the run is over, or its
    /// supervisor crashed), or missing (not a run of this state directory).
    static func runLock(_ path: String) -> RunLock {
        let fd = open(path + "/.lock", O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return .missing }
        defer { close(fd) }
        return flock(fd, LOCK_EX | LOCK_NB) == 0 ? .free : .held
    }

    /// A run directory of this state directory whose lock nobody holds: its
    /// cgroup is a crashed supervisor's leftover. Anything else may be live.
    static func isFinishedRun(_ path: String) -> Bool {
        runLock(path) == .free
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
    /// `cancellation`: lets the caller cancel the run (outcome `cancelled`).
    /// `runId`: the id to use (a `RunService` hands it out at submission), else a new one.
    public func run(_ options: RunOptions, onOutput: (@Sendable (Int32, [UInt8]) -> Void)? = nil,
                    cancellation: RunCancellation? = nil, runId: String? = nil) async -> RunReport {
        let runId = runId ?? RunIdentifier.make()
        let started = WorkerClock.now()
        let context = RunContext(runId: runId)
        context.cancellation = cancellation
        activeRuns.withLock { _ = $0.insert(runId) }
        defer {
            activeRuns.withLock { _ = $0.remove(runId) }
            cancellation?.markFinished()
        }
        var report: RunReport
        do {
            report = try await execute(context, options: options, onOutput: onOutput)
        } catch is CancelledBeforeStart {
            report = RunReport(runId: runId, profile: context.profileName ?? options.profile, outcome: .cancelled)
            report.durationMs = Int64((WorkerClock.now() - started) / 1_000_000)
            recordRefusal(context, profile: report.profile, stage: "cancelled")
            finish(context, report: &report)
        } catch let error as SetupFailure {
            report = RunReport(runId: runId, profile: context.profileName ?? options.profile, outcome: .setupFailed)
            report.setupError = RunReport.SetupError(stage: error.stage, errno: error.errno, message: error.message)
            report.durationMs = Int64((WorkerClock.now() - started) / 1_000_000)
            logger.info("run.setup-failed", metadata: ["run.id": "\(runId)", "stage": "\(error.stage)", "message": "\(error.message)"])
            recordRefusal(context, profile: report.profile, stage: error.stage)
            finish(context, report: &report)
        } catch {
            report = RunReport(runId: runId, profile: options.profile, outcome: .setupFailed)
            report.setupError = RunReport.SetupError(stage: "supervisor", errno: 0, message: "\(error)")
            recordRefusal(context, profile: report.profile, stage: "supervisor")
            finish(context, report: &report)
        }
        context.close()
        return report
    }

    /// A run refused before its first audit row (its profile could not be loaded, its run directory
    /// not made) still gets one, so that the trail shows every attempt; `finish` then closes it as
    /// setup-failed. The command is withheld: without the profile, the secrets to redact from it are
    /// unknown.
    private func recordRefusal(_ context: RunContext, profile: String, stage: String) {
        guard !context.auditOpen else { return }
        do {
            try audit.beginRun(runId: context.runId, profile: profile, profileDigest: "", command: [],
                               detail: .object(["refusedAt": .string(stage), "commandWithheld": .bool(true)]))
            context.auditOpen = true
        } catch {
            logger.error("audit.refusal-not-recorded", metadata: ["run.id": "\(context.runId)", "error": "\(error)"])
        }
    }

    /// A second interrupt ends the process at once: each run still under way gets a `kill` event
    /// (reason `cancelled`, forced); its worker dies with the supervisor (parent-death signal), and
    /// the next supervisor on this state directory marks the run abandoned.
    public func recordForcedExit() {
        for runId in activeRuns.withLock({ $0 }) {
            _ = try? audit.record(runId: runId, kind: "kill", detail: .object(["reason": .string("cancelled"), "when": .string("forced-exit")]))
        }
    }

    struct CancelledBeforeStart: Error {}

    /// A new run id (sorts by time).
    public static func makeRunId() -> String { RunIdentifier.make() }

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

        init(stage: String, errno: Int32 = 0, message: String) {
            self.stage = stage
            self.errno = errno
            self.message = message
        }

        init(_ error: LinuxError) {
            self.init(stage: error.stage, errno: error.errno, message: error.message)
        }
    }

    private func execute(_ context: RunContext, options: RunOptions,
                         onOutput: (@Sendable (Int32, [UInt8]) -> Void)?) async throws -> RunReport {
        let runId = context.runId
        let loaded: LoadedProfile
        do {
            loaded = try catalog.load(options.profile)
        } catch {
            throw SetupFailure(stage: "profile", message: error.description)
        }
        var profile = loaded.profile
        apply(options, to: &profile)
        context.profileName = profile.name
        let root = try workerRoot(for: profile, options: options)
        if let hold = root.hold { context.descriptors.append(hold) }
        if let image = root.image, let uid = image.uid {
            profile.user.uid = uid
            profile.user.gid = image.gid ?? uid
        }
        let runDirectory: RunDirectory
        do {
            runDirectory = try RunDirectory.create(stateDirectory: stateDirectory, runId: runId)
        } catch {
            throw SetupFailure(stage: "run-directory", errno: error.errno ?? 0, message: error.description)
        }
        context.runDirectory = runDirectory

        // The request bundle is validated and copied before anything else: its
        // manifest may name the command, and the worker sees only the copy.
        var request: Result<VerifiedBundle, SetupFailure>?
        if let path = options.request { request = admitRequest(path, into: runDirectory, bounds: profile.bundles) }
        var options = options
        if case .success(let bundle)? = request {
            if options.command == nil { options.command = bundle.manifest.command }
            let fromFlags = Set(options.environment.map(\.0))
            for (k, v) in (bundle.manifest.env ?? [:]).sorted(by: { $0.key < $1.key }) where !fromFlags.contains(k) {
                options.environment.append((k, v))
            }
        }
        if options.command?.isEmpty ?? true, let config = root.image?.config {
            let fromImage = (config.entrypoint ?? []) + (config.cmd ?? [])
            if !fromImage.isEmpty { options.command = fromImage }
        }
        let command = options.command ?? []

        // Secret values are known to the store before the run's first row (a
        // caller may have put one into the command line too).
        let (secrets, secretValues, secretFailure) = loadSecrets(for: profile, options: options)
        // Resolved once: what is recorded is what is mounted (and, later, what review applies to).
        let resolvedWorkspace = options.workspace.map(Self.resolve)
        audit.addSecrets(secretValues)
        let redactor = Redactor(secrets: secretValues)
        context.redactor = redactor

        try recordOrFail { () throws(AuditError) in
            try audit.beginRun(runId: runId, profile: profile.name, profileDigest: loaded.digest, command: command,
                               detail: runCreatedDetail(profile: profile, source: loaded.source, options: options,
                                                        workspace: try? resolvedWorkspace?.get(), root: root))
        }
        context.auditOpen = true
        switch request {
        case .success(let bundle)?:
            try recordOrFail { () throws(AuditError) in
                try audit.recordBundle(runId: runId, role: "request", status: "accepted", reason: nil, files: bundle.fileCount,
                                       bytes: bundle.totalBytes, manifestSha256: bundle.manifestSHA256)
            }
        case .failure(let failure)?:
            try recordOrFail { () throws(AuditError) in
                try audit.recordBundle(runId: runId, role: "request", status: "rejected", reason: failure.message, files: 0, bytes: 0,
                                       manifestSha256: nil)
            }
            throw failure
        case nil:
            break
        }
        guard !command.isEmpty else {
            throw SetupFailure(stage: "usage", message: "no command: give one after -- or in the request manifest")
        }
        if let secretFailure { throw secretFailure }
        let runPolicy = try runPolicy(for: profile, options: options, secrets: secrets)
        let workerEnvironment = environment(for: profile, options: options, secrets: secrets, image: root.image?.config.env ?? [])
        profile.volumes = runPolicy.volumes

        let policy = runPolicy.seccomp
        let program: SeccompProgram
        do {
            program = try SeccompCompiler.compile(policy)
        } catch {
            throw SetupFailure(error)
        }

        let cgroup: RunCgroup
        do {
            cgroup = try cgroups.get().create(name: runId, limits: CgroupLimits(memoryBytes: profile.limits.memoryBytes,
                                                                                cpus: profile.limits.cpus, pids: profile.limits.pids))
        } catch {
            throw SetupFailure(stage: "cgroup", errno: error.errno ?? 0, message: "cannot limit the worker: \(error.description)")
        }
        context.cgroup = cgroup

        // The run's own host id range: no per-user kernel quota is shared with another run.
        let ids: IdRangeLease
        do {
            ids = try IdRangeLease.acquire()
        } catch {
            throw SetupFailure(error)
        }
        context.ids = ids
        let hostUid = ids.base + profile.user.uid
        let hostGid = ids.base + profile.user.gid
        var workspace: RootLayout.Workspace = .empty(sizeBytes: profile.limits.workspaceBytes)
        if let path = options.workspace, let resolvedWorkspace {
            let resolved: String
            switch resolvedWorkspace {
            case .success(let real):
                resolved = real
            case .failure(let error):
                throw SetupFailure(stage: "workspace", errno: error.errno, message: "--workspace \(path): \(String(cString: strerror(error.errno)))")
            }
            context.workspace = resolved
            // The overlay's upper and work directories live on a tmpfs bounded in
            // bytes and inodes (its pages are charged to the worker's memory
            // cgroup): the worker cannot fill the host's disk through /workspace.
            // It is never mounted on the host: only the run's descriptors hold it.
            do {
                let (fd, layer) = try WorkspaceOverlay.mount(workspace: resolved, anchor: runDirectory.upperPath,
                                                             sizeBytes: profile.limits.workspaceBytes,
                                                             inodes: max(4096, profile.bundles.maxFiles + 1024),
                                                             workerHostUid: hostUid, workerHostGid: hostGid)
                context.descriptors.append(fd)
                context.descriptors.append(layer)
                context.layer = layer
                workspace = .mount(fd: fd)
            } catch {
                throw SetupFailure(error)
            }
        }
        let resultMount = stk_tmpfs_detached(UInt64(profile.limits.resultBytes), UInt64(profile.limits.resultInodes), hostUid, hostGid, 0o755)
        guard resultMount >= 0 else {
            throw SetupFailure(stage: "result", errno: errno,
                               message: "cannot create the bounded result filesystem: \(String(cString: strerror(errno))) (needs Linux 5.2+ fsopen)")
        }
        context.descriptors.append(resultMount)
        context.resultMount = resultMount

        var layout = RootLayout(uid: profile.user.uid, gid: profile.user.gid, hostname: profile.hostname,
                                tmpBytes: profile.limits.tmpBytes, workspace: workspace,
                                requestDirectory: request == nil ? nil : runDirectory.requestPath,
                                resultMount: resultMount, resultBytes: profile.limits.resultBytes)
        layout.volumes = profile.volumes.map { RootLayout.Volume(source: $0.source, target: $0.target, readOnly: $0.readOnly) }
        layout.workerHostIds = (hostUid, hostGid)
        layout.tmpfs = profile.tmpfs.map { ($0.target, $0.sizeBytes) }
        var rootMount: Int32?
        if !root.layers.isEmpty {
            layout.fromImage = true
            let anchor = runDirectory.path + "/image-root"
            guard mkdir(anchor, 0o700) == 0 else {
                throw SetupFailure(stage: "image", errno: errno, message: "cannot create \(anchor): \(String(cString: strerror(errno)))")
            }
            do {
                let fd = try ImageRoot.mount(layers: root.layers, anchor: anchor, layout: layout, hostIdBase: ids.base, idCount: 65536)
                context.descriptors.append(fd)
                rootMount = fd
            } catch {
                throw SetupFailure(error)
            }
        }
        var spec = SandboxSpec(argv: command, environment: workerEnvironment,
                               mounts: layout.mounts())
        spec.rootMount = rootMount
        if let dir = root.image?.config.workingDir { spec.workdir = dir }
        spec.hostname = profile.hostname
        spec.hostIdBase = ids.base
        spec.uid = profile.user.uid
        spec.gid = profile.user.gid
        spec.loopback = profile.network.mode != .none || !profile.network.publish.isEmpty
        if profile.network.mode == .proxy { spec.listenPort = EgressProxy.port }
        spec.seccomp = program
        spec.seccompNotify = policy.usesNotifications
        spec.rlimits = rlimits(for: profile)
        spec.cgroupJoinDescriptors = cgroup.joinDescriptors
        spec.cgroupDirectoryDescriptor = cgroup.directoryDescriptor

        // Host ports are taken before anything runs: a taken port fails the run closed.
        let forwarder = try listenForPublishedPorts(profile)
        let stdio: Pipes
        do {
            stdio = try Pipes(input: options.input)
        } catch {
            forwarder?.stop()
            throw error
        }
        if context.cancellation?.isCancelled == true {
            stdio.closeAll()
            forwarder?.stop()
            throw CancelledBeforeStart()
        }
        let spawnStarted = WorkerClock.now()
        let worker: SpawnedWorker
        do {
            worker = try await Spawner.shared.spawn(spec, stdin: stdio.stdin, stdout: stdio.stdoutWrite, stderr: stdio.stderrWrite)
        } catch {
            stdio.closeAll()
            forwarder?.stop()
            if error.killedWorker { _ = recordQuietly(context, "kill", ["reason": .string(error.stage), "when": .string("setup")]) }
            throw SetupFailure(error)
        }
        stdio.closeChildEnds()
        // The proxy's listener was made in the worker's namespace before the worker ran.
        var egress: (proxy: EgressProxy, recorder: EgressRecorder)?
        if profile.network.mode == .proxy {
            let recorder = EgressRecorder(audit: audit, runId: runId, logger: logger)
            do throws(LinuxError) {
                guard let listener = worker.listenFD else {
                    throw LinuxError(.egress, stage: "egress", "the spawn returned no listener for the egress proxy")
                }
                let policy = EgressPolicy(egress: profile.network.egress, hosts: profile.network.hosts)
                egress = (try EgressProxy.start(listener: listener, configuration: recorder.configuration(policy: policy)), recorder)
            } catch {
                _ = stk_pidfd_send_signal(worker.pidfd, SIGKILL)
                _ = recordQuietly(context, "kill", ["reason": .string("egress"), "when": .string("setup")])
                forwarder?.stop()
                throw SetupFailure(stage: error.stage, errno: error.errno, message: error.message)
            }
        }
        // Named now, while init lives: the kernel's log names an OOM victim by its host pid.
        let mainPid = OOMEvidence.mainProcess(ofInit: worker.pid)
        OOMEvidence.exempt(initPid: worker.pid)
        do {
            try forwarder?.attach(workerPid: worker.pid)
        } catch {
            _ = stk_pidfd_send_signal(worker.pidfd, SIGKILL)
            _ = recordQuietly(context, "kill", ["reason": .string("publish"), "when": .string("setup")])
            forwarder?.stop()
            egress?.proxy.stop()
            throw SetupFailure(stage: error.stage, errno: error.errno, message: error.message)
        }
        logger.debug("worker.started", metadata: ["run.id": "\(runId)", "worker.pid": "\(worker.pid)"])

        var config = WorkerMonitor.Configuration(stdoutCap: profile.limits.stdoutBytes, stderrCap: profile.limits.stderrBytes,
                                                 timeoutNanos: UInt64(profile.limits.timeoutSeconds * 1e9), policy: policy)
        let output = RedactingOutput(redactor, onOutput)
        config.onOutput = output?.write ?? onOutput
        config.beforeKill = { [audit, logger] reason, call in
            var detail: [String: JSONValue] = ["reason": .string(reason), "when": .string("before")]
            if let call { detail["syscall"] = .string(call.syscall); detail["architecture"] = .string(call.architecture) }
            do {
                try audit.record(runId: runId, kind: "kill", detail: .object(detail))
                context.killRecorded.withLock { $0 = true }
            } catch {
                logger.error("audit.write-failed", metadata: ["run.id": "\(runId)", "kind": "kill", "error": "\(error)"])
            }
        }
        let monitor: WorkerMonitor
        do {
            monitor = try WorkerMonitor(worker: worker, stdout: stdio.stdoutRead, stderr: stdio.stderrRead, configuration: config)
        } catch {
            _ = stk_pidfd_send_signal(worker.pidfd, SIGKILL)
            forwarder?.stop()
            egress?.proxy.stop()
            throw SetupFailure(error)
        }
        let startedRecorded = recordQuietly(context, "worker.started", [
            "pid": .number(worker.pid),
            "namespaces": .array(["user", "pid", "mount", "network", "uts", "ipc", "cgroup"].map { .string($0) }),
            "profileDigest": .string(loaded.digest),
            "uid": .number(profile.user.uid), "hostUid": .number(hostUid),
            "seccompInstructions": .number(program.instructionCount),
            "cgroup": .object(["version": .string(cgroup.version.rawValue), "paths": .array(cgroup.paths.map { .string($0) })]),
            "volumes": .array(profile.volumes.map { .string("\($0.source):\($0.target):\($0.readOnly ? "ro" : "rw")") }),
        ])
        if !startedRecorded { monitor.kill() }
        context.cancellation?.attach(monitor)
        let observation = await monitor.wait()
        forwarder?.stop()
        stdio.input?.stop()
        // Every connection's event is recorded before stop returns, so before run.finished.
        egress?.proxy.stop()
        output?.finish()
        // Secrets never reach the report or the logs, even split across writes or cut by the cap.
        let stdoutBytes = redactor.redact(captured: observation.stdout)
        let stderrBytes = redactor.redact(captured: observation.stderr)

        // Init's exit took the namespace with it; anything still in the cgroup
        // (nothing should be) is killed before the usage is read and the result collected.
        let stragglers = (try? cgroup.killAll()) ?? 0
        let usage = cgroup.usage()
        var report = RunReport(runId: runId, profile: profile.name, outcome: .exited)
        report.image = root.image?.digest.description
        var oomHitMain = false
        if usage.oomKills > 0, case .signaled(SIGKILL) = observation.exit {
            // The counter says some process was OOM-killed; the kernel's log says which. Where the log
            // cannot be read (a container without /dev/kmsg), the counter and the signal stand.
            // The main process's end is the OOM killer's when it chose the main process, or init (whose
            // death ends the namespace).
            let evidence = mainPid.flatMap { OOMEvidence.killedByOOM(pids: [$0, worker.pid], cgroupName: cgroup.name,
                                                                    sinceMicros: spawnStarted / 1000 - min(spawnStarted / 1000, 2_000_000)) }
            if evidence == nil { logger.info("oom.victim-unknown", metadata: ["run.id": "\(runId)"]) }
            oomHitMain = evidence ?? true
        }
        classify(observation, usage: usage, oomHitMain: oomHitMain, into: &report)
        if let egress {
            let t = egress.proxy.totals
            report.egress = RunReport.Egress(connections: t.connections, allowed: t.allowed, denied: t.denied, bytesOut: t.bytesOut, bytesIn: t.bytesIn)
            report.violations += egress.recorder.violations
            if egress.recorder.failed { context.auditFailed = true }
        }
        report.durationMs = Int64((observation.endedAtNanos - spawnStarted) / 1_000_000)
        report.cpuTimeMs = Int64(max(usage.cpuNanos, observation.userCPUNanos + observation.systemCPUNanos) / 1_000_000)
        // The cgroup's: init's rusage would count the pages it shares with the spawn helper.
        report.memoryPeakBytes = Int64(usage.memoryPeakBytes)
        report.orphansKilled = observation.orphans + stragglers
        report.stdout = String(decoding: stdoutBytes, as: UTF8.self)
        report.stderr = String(decoding: stderrBytes, as: UTF8.self)
        report.stdoutBase64 = RunReport.base64IfNotUTF8(stdoutBytes)
        report.stderrBase64 = RunReport.base64IfNotUTF8(stderrBytes)
        report.stdoutTruncated = observation.stdout.truncated
        report.stderrTruncated = observation.stderr.truncated
        recordOutcomeEvents(context, observation: observation, usage: usage, report: report)

        // The namespace is gone (init exited, taking every process with it):
        // nothing can change upper or the result any more.
        let patches = collectResult(context, profile: profile, report: &report)
        collectWorkspace(context, profile: profile, patches: patches, report: &report)

        try? FileReading.writeAtomically(runDirectory.logsPath + "/stdout.log", stdoutBytes)
        try? FileReading.writeAtomically(runDirectory.logsPath + "/stderr.log", stderrBytes)
        if !startedRecorded && report.setupError == nil {
            report.setupError = RunReport.SetupError(stage: "audit", errno: 0, message: "the worker.started event could not be recorded; the worker was killed")
        }
        finish(context, report: &report)
        return report
    }

    /// The audit's closing event and the report file. An audit write that
    /// fails turns the run into a failure: it is never reported as successful.
    func finish(_ context: RunContext, report: inout RunReport) {
        // An event that could not be recorded (a violation, a kill, the exit) fails the
        // run even when the closing row below can still be written.
        if context.auditFailed && report.setupError == nil {
            report.setupError = RunReport.SetupError(stage: "audit", errno: 0,
                                                     message: "an audit event of the run could not be recorded; see the supervisor's log")
        }
        if context.auditOpen {
            var detail: [String: JSONValue] = ["durationMs": .number(report.durationMs), "cpuTimeMs": .number(report.cpuTimeMs),
                                               "memoryPeakBytes": .number(report.memoryPeakBytes), "orphansKilled": .number(report.orphansKilled)]
            if let e = report.setupError { detail["setupError"] = .object(["stage": .string(e.stage), "message": .string(e.message)]) }
            do {
                try audit.finishRun(runId: context.runId, outcome: report.outcome.rawValue, exitStatus: report.exitStatus, detail: .object(detail))
            } catch {
                if report.setupError == nil {
                    report.setupError = RunReport.SetupError(stage: "audit", errno: 0, message: "the run's outcome could not be recorded: \(error)")
                }
            }
        }
        if let dir = context.runDirectory {
            try? FileReading.writeAtomically(dir.reportPath, Array(report.json().utf8))
        }
    }

    struct PathError: Error {
        let errno: Int32
    }

    /// realpath(3), or the errno it failed with.
    static func resolve(_ path: String) -> Result<String, PathError> {
        guard let real = realpath(path, nil) else { return .failure(PathError(errno: errno)) }
        defer { free(real) }
        return .success(String(cString: real))
    }

    /// The worker's root as the profile and the run name it: the image record (its layers verified
    /// present, the cache held for the run so `gc` leaves them) or the directory, as lower layers.
    func workerRoot(for profile: Profile, options: RunOptions) throws(SetupFailure) -> WorkerRoot {
        var root = profile.root
        if let image = options.image { root = .image(image) }
        if let dir = options.rootfs { root = .rootfs(dir) }
        switch root {
        case .host:
            return WorkerRoot()
        case .image(let reference):
            let store = ImageStore(stateDirectory: stateDirectory)
            do {
                let record = try store.find(reference)
                try store.verifyPresent(record)
                return WorkerRoot(image: record, layers: record.layers.map(store.layerPath), hold: try store.hold())
            } catch {
                throw SetupFailure(stage: "image", errno: error.errno ?? 0, message: error.message)
            }
        case .rootfs(let dir):
            guard let real = realpath(dir, nil) else {
                throw SetupFailure(stage: "image", errno: errno, message: "--rootfs \(dir): \(String(cString: strerror(errno)))")
            }
            defer { free(real) }
            var st = stat()
            guard stat(real, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else {
                throw SetupFailure(stage: "image", errno: ENOTDIR, message: "--rootfs \(dir) is not a directory")
            }
            return WorkerRoot(rootfs: String(cString: real), layers: [String(cString: real)])
        }
    }

    func runCreatedDetail(profile: Profile, source: String, options: RunOptions, workspace: String?, root: WorkerRoot = WorkerRoot()) -> JSONValue {
        var detail: [String: JSONValue] = [
            "profileSource": .string(source),
            "limits": .object(["memory": .number(profile.limits.memoryBytes), "cpus": .number(profile.limits.cpus),
                               "pids": .number(profile.limits.pids), "timeout": .number(profile.limits.timeoutSeconds)]),
            "network": .string(profile.network.mode.rawValue),
            // As asked for (profile, then --volume); the resolved sources are in worker.started.
            "volumes": .array((profile.volumes + options.volumes).map { .string("\($0.source):\($0.target):\($0.readOnly ? "ro" : "rw")") }),
        ]
        if let w = workspace ?? options.workspace { detail["workspace"] = .string(w) }
        if let r = options.request { detail["request"] = .string(r) }
        if !options.labels.isEmpty { detail["labels"] = .object(options.labels.mapValues { .string($0) }) }
        if let name = options.name { detail["name"] = .string(name) }
        if profile.network.mode == .proxy {
            // The rules the proxy enforces for this run, as resolved (profile, then --allow-host).
            let e = profile.network.egress
            var egress: [String: JSONValue] = [
                "allow": .array(e.allow.map { .string($0.description) }), "deny": .array(e.deny.map { .string($0.description) }),
                "allowPrivate": .bool(e.allowPrivate), "maxConnections": .number(e.maxConnections), "maxBytes": .number(e.maxBytes),
            ]
            if !profile.network.hosts.isEmpty { egress["hosts"] = .object(profile.network.hosts.mapValues { .string($0) }) }
            if let r = e.resolver { egress["resolver"] = .string(r) }
            detail["egress"] = .object(egress)
        }
        if let image = root.image { detail["image"] = .object(["name": .string(image.name), "digest": .string(image.digest.description)]) }
        if let dir = root.rootfs { detail["rootfs"] = .string(dir) }
        return .object(detail)
    }

    /// Records `kind` for the run; false when the audit store refused (the caller fails the run).
    func recordQuietly(_ context: RunContext, _ kind: String, _ detail: [String: JSONValue]) -> Bool {
        do {
            try audit.record(runId: context.runId, kind: kind, detail: .object(detail))
            return true
        } catch {
            logger.error("audit.write-failed", metadata: ["run.id": "\(context.runId)", "kind": "\(kind)", "error": "\(error)"])
            context.auditFailed = true
            return false
        }
    }

    func recordOrFail(_ body: () throws(AuditError) -> Void) throws(SetupFailure) {
        do {
            try body()
        } catch {
            throw SetupFailure(stage: "audit", message: "cannot record the run in the audit database: \(error)")
        }
    }

    /// Violations, kills and the main process's end, from what the kernel and the filter reported.
    func recordOutcomeEvents(_ context: RunContext, observation o: WorkerObservation, usage: CgroupUsage, report: RunReport) {
        var events: [(runId: String?, kind: String, detail: JSONValue)] = []
        if usage.oomKills > 0 {
            events.append((context.runId, "limit.hit", .object(["limit": .string("memory"), "oomKills": .number(usage.oomKills)])))
            events.append((context.runId, "kill", .object(["reason": .string("oom"), "count": .number(usage.oomKills)])))
        }
        if usage.pidsLimitHits > 0 {
            events.append((context.runId, "limit.hit", .object(["limit": .string("pids"), "count": .number(usage.pidsLimitHits)])))
        }
        for v in o.violations {
            events.append((context.runId, "violation", .object([
                "kind": .string("seccomp"), "syscall": .string(v.syscall), "architecture": .string(v.architecture),
                "count": .number(v.count), "action": .string(v.answeredErrno == nil ? "kill" : "errno"),
            ])))
        }
        // Kills the supervisor decided were recorded before they were sent; only
        // one whose early record failed is written here.
        let recordedAhead = context.killRecorded.withLock { $0 }
        if let kill = o.seccompKill, !recordedAhead {
            events.append((context.runId, "kill", .object(["reason": .string("seccomp"), "syscall": .string(kill.syscall),
                                                            "architecture": .string(kill.architecture)])))
        }
        if o.cancelled && !recordedAhead {
            events.append((context.runId, "kill", .object(["reason": .string("cancelled")])))
        }
        if o.timedOut {
            events.append((context.runId, "limit.hit", .object(["limit": .string("timeout")])))
            if !recordedAhead { events.append((context.runId, "kill", .object(["reason": .string("timeout")]))) }
        }
        if o.orphans > 0 {
            events.append((context.runId, "kill", .object(["reason": .string("orphans"), "count": .number(o.orphans)])))
        }
        events.append((context.runId, "worker.exited", .object([
            "outcome": .string(report.outcome.rawValue),
            "exitCode": report.exitCode.map { .number($0) } ?? .null,
            "signal": report.signal.map { .number($0) } ?? .null,
        ])))
        do {
            try audit.recordMany(events)
        } catch {
            context.auditFailed = true
            logger.error("audit.write-failed", metadata: ["run.id": "\(context.runId)", "error": "\(error)"])
        }
    }

    /// The outcome, from the kernel only: the wait status init reported, the
    /// cgroup's OOM counter, the filter's notifications, the supervisor's deadline.
    /// `oomHitMain`: the kernel's OOM killer killed the main process itself (see `OOMEvidence`).
    func classify(_ o: WorkerObservation, usage: CgroupUsage, oomHitMain: Bool, into report: inout RunReport) {
        report.violations = o.violations.map {
            RunReport.Violation(kind: "seccomp", syscall: $0.syscall, architecture: $0.architecture, count: $0.count,
                                action: $0.answeredErrno == nil ? "kill" : "errno")
        }
        if usage.pidsLimitHits > 0 {
            report.violations.append(RunReport.Violation(kind: "pids", count: Int(usage.pidsLimitHits), action: "refused"))
        }
        if usage.oomKills > 0 {
            report.violations.append(RunReport.Violation(kind: "memory", count: Int(usage.oomKills), action: "kill"))
        }
        switch o.exit {
        case .exited(let code): report.exitCode = code
        case .signaled(let signal): report.signal = signal
        }
        if o.seccompKill != nil {
            report.outcome = .seccomp
        } else if oomHitMain {
            report.outcome = .oom
        } else if o.cancelled {
            report.outcome = .cancelled
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
        profile.network.egress.allow += options.allowHosts
        if !options.allowHosts.isEmpty { profile.network.mode = .proxy }
        profile.network.hosts.merge(options.pinnedHosts) { $1 }
        if let v = options.allowPrivate { profile.network.egress.allowPrivate = v }
        // Publishing needs the worker's loopback up (it is still the worker's only interface).
        if !profile.network.publish.isEmpty && profile.network.mode == .none { profile.network.mode = .loopback }
        // Volumes from options are checked (as `--volume[i]`) and added by `runPolicy(for:options:)`.
    }

    func seccompPolicy(for profile: Profile) throws(ProfileError) -> SeccompPolicy {
        try SeccompLoader.policy(for: profile)
    }

    /// Only what the profile passes or sets, then per-run values, then the
    /// profile's secrets (which nothing overrides); nothing else of the supervisor's.
    func environment(for profile: Profile, options: RunOptions, secrets: RunSecrets = .none, image: [String] = []) -> [(String, String)] {
        var env: [String: String] = [:]
        // The image's Env first: the profile and the run override it.
        for entry in image {
            if let eq = entry.firstIndex(of: "=") { env[String(entry[..<eq])] = String(entry[entry.index(after: eq)...]) }
        }
        for name in profile.environment.pass {
            if let value = hostEnvironment[name] { env[name] = value }
        }
        for (k, v) in profile.environment.set { env[k] = v }
        if profile.network.mode == .proxy {
            // The proxy is the only way out: every common client finds it here (curl reads only lower-case http_proxy).
            let http = "http://127.0.0.1:\(EgressProxy.port)"
            for (k, v) in [("HTTP_PROXY", http), ("HTTPS_PROXY", http), ("ALL_PROXY", "socks5h://127.0.0.1:\(EgressProxy.port)"),
                           ("NO_PROXY", "localhost,127.0.0.1,::1")] {
                env[k] = v
                env[k.lowercased()] = v
            }
        }
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

/// What one run holds while it is prepared and collected: descriptors to
/// close, the run directory (and its lock), and whether the audit knows it.
/// What the worker's `/` is made of (no layers: the host view).
struct WorkerRoot {
    var image: ImageRecord?
    var rootfs: String?
    /// Lower layers, bottom first.
    var layers: [String] = []
    /// The image cache's shared lock, held for the run (closed with the run's descriptors).
    var hold: Int32?
}

final class RunContext: @unchecked Sendable {
    // Used by one run's task only, never concurrently.
    let runId: String
    var profileName: String?
    var runDirectory: RunDirectory?
    var auditOpen = false
    var auditFailed = false
    var workspace: String?
    var resultMount: Int32 = -1
    var descriptors: [Int32] = []
    var cgroup: RunCgroup?
    /// Root of the tmpfs holding the overlay's upper (`data/`) and work directories (closed with `descriptors`).
    var layer: Int32 = -1
    /// The run's host id range, released when the run is over.
    var ids: IdRangeLease?
    /// Whether the supervisor's kill was recorded before it was sent.
    let killRecorded = Mutex(false)
    /// The caller's handle to cancel this run, if it gave one.
    var cancellation: RunCancellation?
    /// Secret values given to this run's worker: redacted from everything stored.
    var redactor = Redactor.none

    init(runId: String) {
        self.runId = runId
    }

    func close() {
        for fd in descriptors { Glibc.close(fd) }
        descriptors = []
        try? cgroup?.remove()
        cgroup = nil
        runDirectory?.close()
        ids = nil
    }
}

/// The supervisor's ends and the child's ends of the worker's stdio.
final class Pipes: Sendable {
    let stdin: Int32
    let stdoutRead: Int32, stdoutWrite: Int32
    let stderrRead: Int32, stderrWrite: Int32

    /// With `-i`: copies the caller's input into the worker's stdin (else stdin is /dev/null).
    let input: InputForwarder?

    init(input source: Int32? = nil) throws {
        var out: [Int32] = [-1, -1], err: [Int32] = [-1, -1]
        do throws(LinuxError) {
            input = try source.map { (fd) throws(LinuxError) in try InputForwarder(source: fd) }
        } catch {
            throw Supervisor.SetupFailure(error)
        }
        let stdinEnd = input?.workerEnd ?? open("/dev/null", O_RDONLY | O_CLOEXEC)
        guard stdinEnd >= 0, stk_pipe_cloexec(&out, O_NONBLOCK) == 0, stk_pipe_cloexec(&err, O_NONBLOCK) == 0 else {
            throw Supervisor.SetupFailure(stage: "pipe", errno: errno, message: "cannot create the worker's stdio pipes")
        }
        stdin = stdinEnd
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
        input?.stop()
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
