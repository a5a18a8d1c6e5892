import Crypto
import Glibc
import Logging
import StockadeAudit
import StockadeBundles
import StockadeCgroups
import StockadeImages
import StockadeLinux
import StockadePolicy
import Synchronization

/// One run, as a short list of stages. Each stage hands the next what it made; everything a run
/// acquires is registered with its `RunScope` as it is acquired and released there, newest first,
/// on every path (the report, a setup failure, a cancellation, a thrown error).
extension Supervisor {
    func execute(_ scope: RunScope, options: RunOptions,
                 onOutput: (@Sendable (Int32, [UInt8]) -> Void)?) async throws -> RunReport {
        let plan = try plan(scope, options: options)                  // what the run is, on record
        // Cancelled while it waited (a queued run withdrawn): on record, and nothing built for it.
        if scope.cancellation?.isCancelled == true { throw CancelledBeforeStart() }
        let sandbox = try prepare(scope, plan)                         // cgroup, ids, filesystems, ports, pipes
        let live = try await launch(scope, plan, sandbox, onOutput: onOutput) // the worker, its proxy, its monitor
        let observation = await live.monitor.wait()
        live.stopServices()                                            // before the report: their events first
        var report = collect(scope, plan, sandbox, live, observation)  // classify, result bundle, workspace diff
        record(scope, plan, live, report: &report)                     // outcome events, logs, run.finished
        return report
    }

    /// What a run is, resolved and recorded: the profile with the run's overrides, the worker's
    /// root, the run directory, the request bundle, the command, the secrets. `run.created` is
    /// written here, before anything is built for the worker.
    struct Plan {
        var loaded: LoadedProfile
        var run: RunPlanner.ResolvedRun
        var root: WorkerRoot
        var runDirectory: RunDirectory
        var request: VerifiedBundle?
        var secrets: RunSecrets
        var redactor: Redactor
        var workspace: Result<String, PathError>?
        var profile: Profile { run.profile }
        var command: [String] { run.command }
    }

    func plan(_ scope: RunScope, options: RunOptions) throws -> Plan {
        let runId = scope.runId
        let loaded: LoadedProfile
        do throws(ProfileError) {
            // A one-run process read it already, while its supervisor started (`RunAhead`).
            if let early = ahead?.loadedProfile(options.profile) {
                loaded = early
            } else {
                loaded = try catalog.load(options.profile)
            }
        } catch {
            throw SetupFailure(stage: .profile, message: error.description)
        }
        scope.profileName = loaded.profile.name
        var profile = loaded.profile
        RunPlanner.apply(options, to: &profile)
        let root = try workerRoot(for: profile, options: options)
        if let hold = root.hold { scope.own(hold) }
        let runDirectory: RunDirectory
        do {
            runDirectory = try RunDirectory.create(stateDirectory: stateDirectory, runId: runId)
        } catch {
            throw SetupFailure(stage: .runDirectory, errno: error.errno ?? 0, message: error.description)
        }
        scope.runDirectory = runDirectory
        scope.onClose { runDirectory.close() }

        // The request bundle is validated and copied before anything else: its
        // manifest may name the command, and the worker sees only the copy.
        var request: Result<VerifiedBundle, SetupFailure>?
        if let path = options.request { request = admitRequest(path, into: runDirectory, bounds: loaded.profile.bundles) }
        let manifest: BundleManifest? = if case .success(let bundle)? = request { bundle.manifest } else { nil }
        let run = planner.resolve(profile: loaded.profile, options: options, image: root.image.map(RunPlanner.Image.init), manifest: manifest)

        // Secret values are known to the store before the run's first row (a
        // caller may have put one into the command line too).
        let (secrets, secretValues, secretFailure) = loadSecrets(for: run.profile, options: run.options)
        // Resolved once: what is recorded is what is mounted (and, later, what review applies to).
        let workspace = run.options.workspace.map(Self.resolve)
        audit.addSecrets(secretValues)
        let redactor = Redactor(secrets: secretValues)
        scope.redactor = redactor

        try recordOrFail { () throws(AuditError) in
            try audit.beginRun(runId: runId, profile: run.profile.name, profileDigest: loaded.digest, command: run.command,
                               detail: runCreatedDetail(profile: run.profile, source: loaded.source, options: run.options,
                                                        workspace: try? workspace?.get(), root: root))
        }
        scope.auditOpen = true
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
        guard !run.command.isEmpty else {
            throw SetupFailure(stage: .usage, message: "no command: give one after -- or in the request manifest")
        }
        if let secretFailure { throw secretFailure }
        let admitted: VerifiedBundle? = if case .success(let bundle)? = request { bundle } else { nil }
        return Plan(loaded: loaded, run: run, root: root, runDirectory: runDirectory, request: admitted,
                    secrets: secrets, redactor: redactor, workspace: workspace)
    }

    /// Everything the worker needs before it exists, each piece owned by the scope: the seccomp
    /// program, the run's host id range and cgroup, its workspace layer, result filesystem and root,
    /// the host ports it publishes, and its stdio.
    struct Sandbox {
        var spec: SandboxSpec
        var policy: SeccompPolicy
        var program: SeccompProgram
        var cgroup: RunCgroup
        var hostUid: UInt32
        var profile: Profile
        var forwarder: PortForwarder?
        var stdio: Pipes
    }

    func prepare(_ scope: RunScope, _ plan: Plan) throws -> Sandbox {
        // What a one-run process started making for this run (`RunAhead`) is found ready below once it is done.
        ahead?.wait()
        var profile = plan.profile
        let options = plan.run.options
        let runPolicy = try runPolicy(for: profile, options: options, secrets: plan.secrets)
        let workerEnvironment = planner.environment(for: profile, options: options, secrets: plan.secrets, image: plan.run.imageEnvironment)
        profile.volumes = runPolicy.volumes
        let policy = runPolicy.seccomp
        let program: SeccompProgram
        do {
            program = try SeccompCompiler.compile(policy, disk: Self.seccompDiskCache(stateDirectory: stateDirectory))
        } catch {
            throw SetupFailure(error)
        }

        // The run's own host id range: no per-user kernel quota is shared with another run. Taken
        // before the cgroup, so it is given back only once the cgroup is gone.
        let ids: IdRangeLease
        do {
            ids = try IdRangeLease.acquire()
        } catch {
            throw SetupFailure(error)
        }
        scope.onClose { withExtendedLifetime(ids) {} }
        let cgroup: RunCgroup
        let pool: CgroupPool
        do {
            pool = try cgroupPool.get()
            cgroup = try pool.take(limits: Self.cgroupLimits(profile))
        } catch {
            throw SetupFailure(stage: .cgroup, errno: error.errno ?? 0, message: "cannot limit the worker: \(error.description)")
        }
        // Removed after the report is made, off the run's path; the id range is given back only once it
        // is gone (never, if it cannot be removed). A run that ends before `collect` emptied its cgroup
        // (a setup failure after the spawn) has it emptied here, before its report exists.
        scope.onClose { [logger, runId = scope.runId] in
            if !scope.cgroupEmptied { _ = try? cgroup.killAll() }
            pool.retire(cgroup, failed: { error in
                logger.error("cgroup.remove-failed", metadata: ["run.id": "\(runId)", "cgroup": "\(cgroup.name)", "error": "\(error)"])
            }, removed: { withExtendedLifetime(ids) {} })
        }
        // Without its descriptors the worker would run outside it, unlimited: fail closed.
        guard cgroup.canPlaceWorker else {
            throw SetupFailure(stage: .cgroup, message: "cannot limit the worker: \(cgroup) has no open descriptor to place it with")
        }
        let hostUid = ids.base + profile.user.uid
        let hostGid = ids.base + profile.user.gid

        var workspace: RootLayout.Workspace = .empty(sizeBytes: profile.limits.workspaceBytes)
        if let path = options.workspace, let resolvedWorkspace = plan.workspace {
            let resolved: String
            switch resolvedWorkspace {
            case .success(let real):
                resolved = real
            case .failure(let error):
                throw SetupFailure(stage: .workspace, errno: error.errno, message: "--workspace \(path): \(String(cString: strerror(error.errno)))")
            }
            scope.workspace = resolved
            // The overlay's upper and work directories live on a tmpfs bounded in
            // bytes and inodes (its pages are charged to the worker's memory
            // cgroup): the worker cannot fill the host's disk through /workspace.
            // It is never mounted on the host: only the run's descriptors hold it.
            let anchor: String
            do {
                anchor = try plan.runDirectory.makeSubdirectory(RunDirectory.upperName)
            } catch {
                throw SetupFailure(stage: .workspace, errno: error.errno ?? 0, message: error.description)
            }
            do {
                let (fd, layer) = try WorkspaceOverlay.mount(workspace: resolved, anchor: anchor,
                                                             sizeBytes: profile.limits.workspaceBytes,
                                                             inodes: max(4096, profile.bundles.maxFiles + 1024),
                                                             workerHostUid: hostUid, workerHostGid: hostGid)
                scope.own(fd)
                scope.own(layer)
                scope.layer = layer
                workspace = .mount(fd: fd)
            } catch {
                throw SetupFailure(error)
            }
        }
        let resultMount: Int32
        do {
            resultMount = try ResultFilesystem.make(bytes: profile.limits.resultBytes, inodes: profile.limits.resultInodes, uid: hostUid, gid: hostGid)
        } catch {
            throw SetupFailure(error)
        }
        scope.own(resultMount)
        scope.resultMount = resultMount

        var layout = Self.rootLayout(profile, workspace: workspace, requestDirectory: plan.request == nil ? nil : plan.runDirectory.requestPath,
                                     resultMount: resultMount, hostIds: (hostUid, hostGid))
        var rootMount: Int32?
        if !plan.root.layers.isEmpty {
            layout.fromImage = true
            let anchor: String
            do {
                anchor = try plan.runDirectory.makeSubdirectory(RunDirectory.imageRootName)
            } catch {
                throw SetupFailure(stage: .image, errno: error.errno ?? 0, message: error.description)
            }
            do {
                let fd = try ImageRoot.mount(layers: plan.root.layers, anchor: anchor, layout: layout, hostIdBase: ids.base, idCount: 65536,
                                             resolved: plan.root.rootfs != nil)
                scope.own(fd)
                rootMount = fd
            } catch {
                throw SetupFailure(error)
            }
        }
        let steps: (steps: [MountOp], fresh: Int)
        if rootMount == nil {
            // The host's directories: the root is a clone of the profile's shared, sealed skeleton
            // (made once), and the init only mounts on it. The split is made once per profile too.
            let split = RootPlanCache.split(layout).split
            do {
                let fd = try RootSkeleton.clone(split.entries)
                scope.own(fd)
                rootMount = fd
            } catch {
                throw SetupFailure(error)
            }
            steps = (split.steps, split.fresh)
        } else {
            steps = layout.mountSteps()
        }
        var spec = SandboxSpec(argv: plan.command, environment: workerEnvironment, mounts: steps.steps)
        spec.freshMountCount = steps.fresh
        spec.rootMount = rootMount
        if let dir = plan.run.workdir { spec.workdir = dir }
        spec.hostname = profile.hostname
        spec.hostIdBase = ids.base
        spec.uid = profile.user.uid
        spec.gid = profile.user.gid
        spec.loopback = profile.network.mode != .none || !profile.network.publish.isEmpty
        if profile.network.mode == .proxy { spec.listenPort = EgressProxy.port }
        spec.seccomp = program
        spec.seccompNotify = policy.usesNotifications
        spec.rlimits = RunPlanner.rlimits(for: profile)
        spec.cgroupJoinDescriptors = cgroup.joinDescriptors
        spec.cgroupDirectoryDescriptor = cgroup.directoryDescriptor

        // Host ports are taken before anything runs: a taken port fails the run closed.
        let forwarder = try listenForPublishedPorts(profile)
        if let forwarder { scope.onClose { forwarder.stop() } }
        let stdio = try Pipes(input: options.input)
        scope.onClose { stdio.closeAll() }
        return Sandbox(spec: spec, policy: policy, program: program, cgroup: cgroup, hostUid: hostUid, profile: profile,
                       forwarder: forwarder, stdio: stdio)
    }

    /// The cgroup limits a run of `profile` gets.
    static func cgroupLimits(_ profile: Profile) -> CgroupLimits {
        CgroupLimits(memoryBytes: profile.limits.memoryBytes, cpus: profile.limits.cpus, pids: profile.limits.pids)
    }

    /// The worker's root as `profile` lays it out, with the run's own workspace, request, result
    /// filesystem and ids.
    static func rootLayout(_ profile: Profile, workspace: RootLayout.Workspace, requestDirectory: String?, resultMount: Int32,
                           hostIds: (uid: UInt32, gid: UInt32)?) -> RootLayout {
        var layout = RootLayout(uid: profile.user.uid, gid: profile.user.gid, hostname: profile.hostname,
                                tmpBytes: profile.limits.tmpBytes, workspace: workspace, requestDirectory: requestDirectory,
                                resultMount: resultMount, resultBytes: profile.limits.resultBytes)
        layout.volumes = profile.volumes.map { RootLayout.Volume(source: $0.source, target: $0.target, readOnly: $0.readOnly) }
        layout.workerHostIds = hostIds
        layout.tmpfs = profile.tmpfs.map { ($0.target, $0.sizeBytes) }
        return layout
    }

    /// The compiled seccomp programs a state directory keeps on disk (read by one-shot runs).
    static func seccompDiskCache(stateDirectory: String) -> SeccompDiskCache { SeccompDiskCache(directory: stateDirectory + "/seccomp") }

    /// The worker running: spawned into its sandbox, its egress proxy serving, its published
    /// ports attached, its monitor watching, `worker.started` on record.
    struct Live {
        var worker: SpawnedWorker
        var monitor: WorkerMonitor
        var egress: (proxy: EgressProxy, recorder: EgressRecorder)?
        var forwarder: PortForwarder?
        var stdio: Pipes
        var output: RedactingOutput?
        var log: LiveLog
        var spawnStarted: UInt64
        var mainPid: Int32?
        var startedRecorded: Bool

        /// The relays end before the report is made: every connection's event is recorded before
        /// `stop` returns, so before `run.finished`.
        func stopServices() {
            forwarder?.stop()
            stdio.input?.stop()
            egress?.proxy.stop()
            output?.finish()
            log.stopFlushing()
        }
    }

    func launch(_ scope: RunScope, _ plan: Plan, _ sandbox: Sandbox,
                onOutput: (@Sendable (Int32, [UInt8]) -> Void)?) async throws -> Live {
        let runId = scope.runId
        let profile = sandbox.profile
        let stdio = sandbox.stdio
        if scope.cancellation?.isCancelled == true { throw CancelledBeforeStart() }
        let spawnStarted = WorkerClock.now()
        let worker: SpawnedWorker
        do {
            worker = try await Spawner.shared.spawn(sandbox.spec, stdin: stdio.stdin, stdout: stdio.stdoutWrite, stderr: stdio.stderrWrite)
        } catch {
            if error.killedWorker { _ = recordQuietly(scope, "kill", ["reason": .string(error.stage.rawValue), "when": .string("setup")]) }
            throw SetupFailure(error)
        }
        stdio.closeChildEnds()
        // Until the monitor watches it, a setup failure kills the worker (its init's death takes
        // the whole namespace); once the monitor has it, the monitor ends it and closes its pidfd.
        let guardian = WorkerGuard(worker)
        scope.onClose { guardian.killIfArmed() }
        // On record before anything that watches or serves the worker starts: a kill, a violation or an
        // egress event it causes can only follow it in the trail. (Unrecorded, it is killed once its
        // monitor has it, and the report says why.)
        let startedRecorded = recordQuietly(scope, "worker.started", [
            "pid": .number(worker.pid),
            "namespaces": .array(["user", "pid", "mount", "network", "uts", "ipc", "cgroup"].map { .string($0) }),
            "profileDigest": .string(plan.loaded.digest),
            "uid": .number(profile.user.uid), "hostUid": .number(sandbox.hostUid),
            "seccompInstructions": .number(sandbox.program.instructionCount),
            // SHA-256 of the compiled BPF program as loaded (8 bytes an instruction): run receipts carry it.
            "seccompSha256": .string(Hex.lowercase(SHA256.hash(data: sandbox.program.bytes))),
            "cgroup": .object(["version": .string(sandbox.cgroup.version.rawValue), "paths": .array(sandbox.cgroup.paths.map { .string($0) })]),
            "volumes": .array(profile.volumes.map { .string("\($0.source):\($0.target):\($0.readOnly ? "ro" : "rw")") }),
        ])

        // The proxy's listener was made in the worker's namespace before the worker ran.
        var egress: (proxy: EgressProxy, recorder: EgressRecorder)?
        if profile.network.mode == .proxy {
            let recorder = EgressRecorder(audit: audit, runId: runId, logger: logger)
            do throws(LinuxError) {
                guard let listener = worker.listenFD else {
                    throw LinuxError(.egress, stage: .egress, "the spawn returned no listener for the egress proxy")
                }
                let policy = EgressPolicy(egress: profile.network.egress, hosts: profile.network.hosts)
                let proxy = try EgressProxy.start(listener: listener, configuration: recorder.configuration(policy: policy))
                scope.onClose { proxy.stop() }
                egress = (proxy, recorder)
            } catch {
                _ = recordQuietly(scope, "kill", ["reason": .string("egress"), "when": .string("setup")])
                throw SetupFailure(error)
            }
        }
        // Named now, while init lives: the kernel's log names an OOM victim by its host pid.
        let mainPid = OOMEvidence.mainProcess(ofInit: worker.pid)
        OOMEvidence.exempt(initPid: worker.pid)
        do {
            try sandbox.forwarder?.attach(workerPid: worker.pid)
        } catch {
            _ = recordQuietly(scope, "kill", ["reason": .string("publish"), "when": .string("setup")])
            throw SetupFailure(error)
        }
        logger.debug("worker.started", metadata: ["run.id": "\(runId)", "worker.pid": "\(worker.pid)"])

        var config = WorkerMonitor.Configuration(stdoutCap: profile.limits.stdoutBytes, stderrCap: profile.limits.stderrBytes,
                                                 timeoutNanos: UInt64(profile.limits.timeoutSeconds * 1e9), policy: sandbox.policy)
        let output = RedactingOutput(plan.redactor, onOutput)
        let terminal = output?.write ?? onOutput
        // The logs are written as the output arrives (capped and redacted as the report is), so
        // readers can follow the run; its flush timer writes what small chunks left waiting.
        let log = LiveLog(directory: plan.runDirectory.logsPath, stdoutCap: profile.limits.stdoutBytes,
                          stderrCap: profile.limits.stderrBytes, redactor: plan.redactor, logger: logger)
        config.onOutput = { stream, bytes in
            log.append(stream, bytes)
            terminal?(stream, bytes)
        }
        config.beforeKill = { [audit, logger] reason, call in
            var detail: [String: JSONValue] = ["reason": .string(reason), "when": .string("before")]
            if let call { detail["syscall"] = .string(call.syscall); detail["architecture"] = .string(call.architecture) }
            do {
                try audit.record(runId: runId, kind: "kill", detail: .object(detail))
                scope.killRecorded.withLock { $0 = true }
            } catch {
                logger.error("audit.write-failed", metadata: ["run.id": "\(runId)", "kind": "kill", "error": "\(error)"])
            }
        }
        let monitor: WorkerMonitor
        do {
            monitor = try WorkerMonitor(worker: worker, stdout: stdio.stdoutRead, stderr: stdio.stderrRead, configuration: config)
        } catch {
            // The scope's guard kills the worker: on record first, as every setup kill is.
            _ = recordQuietly(scope, "kill", ["reason": .string(error.stage.rawValue), "when": .string("setup")])
            log.discard()
            throw SetupFailure(error)
        }
        stdio.readEndsHandedOver()
        scope.onClose { log.stopFlushing() }
        guardian.disarm()
        if !startedRecorded { monitor.kill() }
        scope.cancellation?.attach(monitor)
        return Live(worker: worker, monitor: monitor, egress: egress, forwarder: sandbox.forwarder, stdio: stdio, output: output,
                    log: log, spawnStarted: spawnStarted, mainPid: mainPid, startedRecorded: startedRecorded)
    }

    /// The report from what the kernel and the monitor saw: outcome, usage, output (redacted),
    /// egress totals, then the result bundle and the workspace diff (the namespace is gone:
    /// nothing can change them any more).
    func collect(_ scope: RunScope, _ plan: Plan, _ sandbox: Sandbox, _ live: Live, _ observation: WorkerObservation) -> RunReport {
        let cgroup = sandbox.cgroup
        // Secrets never reach the report or the logs, even split across writes or cut by the cap.
        let stdoutBytes = plan.redactor.redact(captured: observation.stdout)
        let stderrBytes = plan.redactor.redact(captured: observation.stderr)
        // The live logs become exactly these bytes (what followers have read is a prefix of them).
        live.log.finish(stdout: stdoutBytes, stderr: stderrBytes)

        // Init's exit took the namespace with it; anything still in the cgroup
        // (nothing should be) is killed before the usage is read and the result collected.
        let stragglers = (try? cgroup.killAll()) ?? 0
        scope.cgroupEmptied = true
        let usage = cgroup.usage()
        var report = RunReport(runId: scope.runId, profile: sandbox.profile.name, outcome: .exited)
        report.image = plan.root.image?.digest.description
        var oomHitMain = false
        if usage.oomKills > 0, case .signaled(SIGKILL) = observation.exit {
            // The counter says some process was OOM-killed; the kernel's log says which. Where the log
            // cannot be read (a container without /dev/kmsg) or has lost records of the run's last seconds
            // (overwritten by a fork bomb's OOM report), the counter and the signal stand.
            // The main process's end is the OOM killer's when it chose the main process, or init (whose
            // death ends the namespace).
            let window = OOMEvidence.Window(spawnedAtNanos: live.spawnStarted, endedAtNanos: observation.endedAtNanos)
            let evidence = live.mainPid.flatMap {
                OOMEvidence.killedByOOM(pids: [$0, live.worker.pid], cgroupName: cgroup.name, window: window, settleMicros: 300_000)
            }
            if evidence == nil { logger.info("oom.victim-unknown", metadata: ["run.id": "\(scope.runId)"]) }
            oomHitMain = evidence ?? true
        }
        classify(observation, usage: usage, oomHitMain: oomHitMain, into: &report)
        if let egress = live.egress {
            let t = egress.proxy.totals
            report.egress = RunReport.Egress(connections: t.connections, allowed: t.allowed, denied: t.denied, bytesOut: t.bytesOut, bytesIn: t.bytesIn)
            report.violations += egress.recorder.violations
            if egress.recorder.failed { scope.auditFailed = true }
        }
        report.durationMs = Int64((observation.endedAtNanos - live.spawnStarted) / 1_000_000)
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
        recordOutcomeEvents(scope, observation: observation, usage: usage, report: report)
        // Kept for run.finished's transaction unless something is left to collect: collectResult and
        // collectWorkspace write them before reading a non-empty result bundle or scanning a
        // workspace (as long as the worker makes them), so a supervisor that dies meanwhile does not
        // take the violations, kills and exit with it.

        let patches = collectResult(scope, profile: sandbox.profile, report: &report)
        collectWorkspace(scope, profile: sandbox.profile, patches: patches, report: &report)
        return report
    }

    /// The run's closing record: `run.finished` and the report file.
    func record(_ scope: RunScope, _ plan: Plan, _ live: Live, report: inout RunReport) {
        if !live.startedRecorded && report.setupError == nil {
            report.setupError = .audit("the worker.started event could not be recorded; the worker was killed")
        }
        finish(scope, report: &report)
    }
}

/// Kills a spawned worker on a setup failure until its monitor takes it over.
final class WorkerGuard: @unchecked Sendable {
    // Used by the run's own task only.
    private let worker: SpawnedWorker
    private var armed = true

    init(_ worker: SpawnedWorker) {
        self.worker = worker
    }

    func disarm() { armed = false }

    func killIfArmed() {
        if armed { worker.kill() }
        armed = false
    }
}
