import FoundationEssentials
import Glibc
import Logging
import StockadeAudit
import StockadeAuditSQLite
import StockadeBundles
import StockadeCgroups
import StockadeImages
import StockadeLinux
import StockadePolicy
import StockadeStore
import StockadeTokens
import Synchronization

/// Runs workers: one run's whole lifecycle (prepare, spawn, wait, collect,
/// classify, record). One supervisor serves many concurrent runs and holds
/// the state directory's audit store.
public final class Supervisor: Sendable {
    public let stateDirectory: String
    public let catalog: ProfileCatalog
    public let audit: any AuditStore
    /// Where `audit` lives: `<state>/audit.sqlite` unless `--store` / `$STOCKADE_STORE` names another.
    public let store: StoreURL
    /// Run cgroups over the host's cgroup driver (made ahead and removed after their runs, off the
    /// runs' path), or why there is no driver (runs then fail closed).
    let cgroupPool: Result<CgroupPool, CgroupError>
    let logger: Logger
    let hostEnvironment: [String: String]
    /// Resolves each run from its profile, options, manifest and image (pure).
    let planner: RunPlanner
    /// Runs under way, for `recordForcedExit`.
    let activeRuns = Mutex(Set<String>())
    /// What a process that runs one worker started making for its run before this supervisor
    /// existed; `prepare` waits for it.
    let ahead: RunAhead?

    /// Forks the spawn helper, for a command that is about to run workers: call it first, before the
    /// supervisor opens its audit store or loads any profile or secret, so the helper (and every
    /// worker's init, a copy of it) holds none of that.
    /// `concurrency`: how many spawns may be under way at once (1 to 4 helpers). `ahead`: for a
    /// process that runs many workers, each helper keeps a fresh network namespace made ahead
    /// (one per run, never reused), so making it is off the run's path. `oneRun`: for a process that
    /// runs one worker (`stockade run`): the helper makes that run's network namespace as it starts,
    /// while the supervisor opens its store and plans the run, and no other.
    public static func prepareToSpawn(concurrency: Int = 1, ahead: Bool = false, oneRun: Bool = false) {
        Spawner.shared.prepare(helpers: concurrency, netnsAhead: ahead ? 1 : 0, netnsOnce: oneRun)
    }

    /// How the spawn helpers were started (`Spawner.helperMode`, once they have), for the log; nil
    /// before `prepareToSpawn`.
    public static var spawnHelperMode: String? { Spawner.shared.helperMode }

    /// `readOnly`: for commands that only query the state (audit events/runs/verify, review list/show):
    /// nothing is created, migrated, marked abandoned or swept, no credential changes; running workers
    /// through such a supervisor fails closed.
    /// `store`: the audit store (nil: `<stateDirectory>/audit.sqlite`); `storeConnections`: how many
    /// connections to a PostgreSQL store this process may hold at once.
    /// `cgroupsAhead`: how many run cgroups to keep made ahead for each set of limits (a supervisor
    /// that runs many workers: `batch`, `serve`); 0 makes each when its run asks for it.
    /// `shortLived`: this process runs one worker and exits (`stockade run`): see `StoreOpener.openAudit`.
    /// `ahead`: what such a process started making for its run (`RunAhead`); its run's cgroup is
    /// made as soon as the driver is known.
    public init(stateDirectory: String, catalog: ProfileCatalog, environment: [String: String], logger: Logger,
                readOnly: Bool = false, store: StoreURL? = nil, storeConnections: Int = StoreOpener.defaultConnections,
                cgroupsAhead: Int = 0, shortLived: Bool = false, ahead: RunAhead? = nil) throws(SupervisorError) {
        self.stateDirectory = stateDirectory
        self.ahead = ahead
        self.catalog = catalog
        self.logger = logger
        self.hostEnvironment = environment
        self.planner = RunPlanner(hostEnvironment: environment)
        // Read only when logged: it waits for the helpers to have started.
        logger.debug("spawn.helpers", metadata: ["mode": "\(Spawner.shared.helperMode ?? "not started")"])
        let store = store ?? .sqlite(path: StoreOpener.defaultPath(stateDirectory: stateDirectory))
        self.store = store
        if readOnly {
            do {
                audit = try StoreOpener.openAudit(store, readOnly: true, environment: environment, supervisorPid: getpid(),
                                                  supervisorStart: ProcessIdentity.currentStartTime, maxConnections: storeConnections)
            } catch {
                throw SupervisorError(.audit, "cannot open the audit store: \(error)")
            }
            cgroupPool = .failure(CgroupError(.noCgroupFilesystem, "this supervisor was opened read-only, for queries: it runs no workers"))
            return
        }
        try Self.makeDirectory(stateDirectory)
        try Self.makeDirectory(stateDirectory + "/runs")
        // Workers hold no supplementary groups: each spawn helper drops its own as it starts
        // (stk_helper.c), and every init is a copy of a helper. The supervisor keeps its own: dropping
        // them here cost a one-shot run a millisecond (glibc signals every thread of the process to
        // change each thread's credentials) and bought nothing.

        // The cgroup side (the driver's detection, the stale scan) needs nothing of the store: it runs
        // on another thread while the store opens, and the supervisor is ready when both are.
        let cgroupSide = Background { [logger, stateDirectory] in
            Self.openCgroups(stateDirectory: stateDirectory, depth: cgroupsAhead, ahead: ahead, logger: logger)
        }
        do {
            let opened = try StoreOpener.openAudit(store, readOnly: false, environment: environment, supervisorPid: getpid(),
                                                   supervisorStart: ProcessIdentity.currentStartTime, maxConnections: storeConnections,
                                                   shortLived: shortLived)
            let abandoned = try opened.markAbandoned(isAlive: ProcessIdentity.isAlive)
            if !abandoned.isEmpty { logger.info("runs.abandoned", metadata: ["runs": "\(abandoned)"]) }
            audit = opened
        } catch {
            // Nothing of the cgroup side is left running: a pool that keeps none made has nothing to remove.
            if case .success(let pool) = cgroupSide.wait() { pool.close() }
            throw SupervisorError(.audit, "cannot open the audit store: \(error)")
        }
        cgroupPool = cgroupSide.wait()
    }

    /// The host's cgroup driver and this supervisor's pool on it (or why there is none), after
    /// removing what crashed supervisors left behind; with `ahead`, its run's cgroup is made first.
    static func openCgroups(stateDirectory: String, depth: Int, ahead: RunAhead?, logger: Logger) -> Result<CgroupPool, CgroupError> {
        let cgroups = Result { () throws(CgroupError) in try Cgroups.detect() }
        let pidNamespace = Self.pidNamespace()
        let pool = cgroups.map { CgroupPool(driver: $0, prefix: Self.poolPrefix(pidNamespace: pidNamespace, pid: getpid(),
                                                                                startTime: ProcessIdentity.currentStartTime),
                                            depth: depth) }
        guard case .success(let driver) = cgroups, case .success(let made) = pool else { return pool }
        if let ahead { ahead.makeCgroup(in: made, logger: logger) }
        let runs = stateDirectory + "/runs/"
        // A pool's cgroup is stale once the supervisor that made it is gone. A run of this state
        // directory is stale once its lock is free; a cgroup with no run here (a supervisor that
        // died with its state directory removed) once it is empty and old.
        let removed = driver.removeStale { name in
            if let owner = Self.poolOwner(name) {
                // Only a maker in our own pid namespace can be looked up here; another's pool cgroup
                // is judged as any cgroup no state directory owns (empty and old).
                guard owner.pidNamespace == pidNamespace, pidNamespace != 0 else {
                    return !driver.isAbandoned(name: name, olderThan: Self.abandonedCgroupAge)
                }
                return !ProcessIdentity.isGone(pid: owner.pid, startTime: owner.startTime)
            }
            return switch Self.runLock(runs + name) {
            case .held: true
            case .free: false
            case .missing: !driver.isAbandoned(name: name, olderThan: Self.abandonedCgroupAge)
            }
        }
        if !removed.isEmpty { logger.info("cgroups.stale-removed", metadata: ["cgroups": "\(removed)"]) }
        return pool
    }

    /// The API's tokens and idempotency keys, in the same store as `audit`.
    public func openTokens() throws(TokenError) -> TokenStore {
        try StoreOpener.openTokens(store, audit: audit)
    }

    /// Seconds after which an empty run cgroup that no run of this state directory owns is removed.
    static let abandonedCgroupAge = 60

    /// Run cgroups of a supervisor's pool are named `p-<pid namespace>-<pid>-<start time>-<n>` (run ids
    /// never start with `p-`): a supervisor in the same pid namespace can tell whether the pool's maker
    /// still lives.
    static func poolPrefix(pidNamespace: UInt64, pid: Int32, startTime: UInt64) -> String {
        "p-\(pidNamespace)-\(pid)-\(startTime)-"
    }

    /// The maker a pool cgroup's name gives, or nil for a name that is not a pool's.
    static func poolOwner(_ name: String) -> (pidNamespace: UInt64, pid: Int32, startTime: UInt64)? {
        let parts = name.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 5, parts[0] == "p", let ns = UInt64(parts[1]), let pid = Int32(parts[2]), let start = UInt64(parts[3]),
              UInt64(parts[4]) != nil else { return nil }
        return (ns, pid, start)
    }

    /// This process's pid namespace (the inode of /proc/self/ns/pid), 0 if it cannot be read.
    static func pidNamespace() -> UInt64 {
        var st = stat()
        return stat("/proc/self/ns/pid", &st) == 0 ? UInt64(st.st_ino) : 0
    }

    /// Removes the cgroups made ahead and waits for every removal under way: before the process exits.
    public func closeCgroups() {
        if case .success(let pool) = cgroupPool { pool.close() }
    }

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
        // Each step from the root, or from the current directory for a relative path (which
        // StateDirectory.resolve does not hand out, but a caller of Supervisor may).
        var prefix = path.hasPrefix("/") ? "" : "."
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
        let context = RunScope(runId: runId)
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
            recordRefusal(context, profile: report.profile, stage: .cancelled)
            finish(context, report: &report)
        } catch let error as SetupFailure {
            report = RunReport(runId: runId, profile: context.profileName ?? options.profile, outcome: .setupFailed)
            report.setupError = RunReport.SetupError(stage: error.stage, errno: error.errno, message: error.message)
            report.durationMs = Int64((WorkerClock.now() - started) / 1_000_000)
            logger.info("run.setup-failed", metadata: ["run.id": "\(runId)", "stage": "\(error.stage.rawValue)", "message": "\(error.message)"])
            recordRefusal(context, profile: report.profile, stage: error.stage)
            finish(context, report: &report)
        } catch {
            report = RunReport(runId: runId, profile: options.profile, outcome: .setupFailed)
            report.setupError = RunReport.SetupError(stage: .supervisor, errno: 0, message: "\(error)")
            recordRefusal(context, profile: report.profile, stage: .supervisor)
            finish(context, report: &report)
        }
        context.close()
        return report
    }

    /// A run refused before its first audit row (its profile could not be loaded, its run directory
    /// not made) still gets one, so that the trail shows every attempt; `finish` then closes it as
    /// setup-failed. The command is withheld: without the profile, the secrets to redact from it are
    /// unknown.
    private func recordRefusal(_ context: RunScope, profile: String, stage: SetupStage) {
        guard !context.auditOpen else { return }
        do {
            try audit.beginRun(runId: context.runId, profile: profile, profileDigest: "", command: [],
                               detail: .object(["refusedAt": .string(stage.rawValue), "commandWithheld": .bool(true)]))
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
        Self.rejectedRequest(reason: reason)
    }

    /// The same report without a supervisor: a client of the service (`batch --host`) refuses the lines it cannot read.
    public static func rejectedRequest(reason: String) -> RunReport {
        var report = RunReport(runId: RunIdentifier.make(), profile: "", outcome: .setupFailed)
        report.setupError = RunReport.SetupError(stage: .requestLine, errno: 0, message: reason)
        return report
    }

    struct SetupFailure: Error {
        let stage: SetupStage
        let errno: Int32
        let message: String

        init(stage: SetupStage, errno: Int32 = 0, message: String) {
            self.stage = stage
            self.errno = errno
            self.message = message
        }

        init(_ error: LinuxError) {
            self.init(stage: error.stage, errno: error.errno, message: error.message)
        }
    }

    /// The audit's closing event and the report file. An audit write that
    /// fails turns the run into a failure: it is never reported as successful.
    func finish(_ context: RunScope, report: inout RunReport) {
        // An event that could not be recorded (a violation, a kill, the exit) fails the
        // run even when the closing row below can still be written.
        if context.auditFailed && report.setupError == nil {
            report.setupError = .audit("an audit event of the run could not be recorded; see the supervisor's log")
        }
        if context.auditOpen {
            var detail: [String: JSONValue] = ["durationMs": .number(report.durationMs), "cpuTimeMs": .number(report.cpuTimeMs),
                                               "memoryPeakBytes": .number(report.memoryPeakBytes), "orphansKilled": .number(report.orphansKilled)]
            if let e = report.setupError { detail["setupError"] = .object(["stage": .string(e.stage.rawValue), "message": .string(e.message)]) }
            let pending = context.pendingEvents
            context.pendingEvents = []
            do {
                try audit.finishRun(runId: context.runId, outcome: report.outcome.rawValue, exitStatus: report.exitStatus,
                                    detail: .object(detail), after: pending)
            } catch {
                // The run's other events are kept where its end cannot be (a run no longer `running`).
                if !pending.isEmpty { _ = try? audit.recordMany(pending) }
                if report.setupError == nil {
                    report.setupError = .audit("the run's outcome could not be recorded", storeError: error)
                }
            }
        }
        recordPendingEvents(context)
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
                throw SetupFailure(stage: .image, errno: error.errno ?? 0, message: error.message)
            }
        case .rootfs(let dir):
            guard let real = realpath(dir, nil) else {
                throw SetupFailure(stage: .image, errno: errno, message: "--rootfs \(dir): \(String(cString: strerror(errno)))")
            }
            defer { free(real) }
            var st = stat()
            guard stat(real, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else {
                throw SetupFailure(stage: .image, errno: ENOTDIR, message: "--rootfs \(dir) is not a directory")
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
        if let principal = options.submittedBy { detail["submittedBy"] = .string(principal) }
        if let placement = options.queuePlacement {
            detail["node"] = .string(placement.node)
            detail["attempt"] = .number(placement.attempt)
            detail["retryOf"] = placement.retryOf.map { .string($0) } ?? .null
        }
        // What the run's profile said about self-approval when it ran: a later edit of the profile
        // cannot widen who may decide this run's diff.
        detail["allowSelfApproval"] = .bool(profile.review.allowSelfApproval)
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
    func recordQuietly(_ context: RunScope, _ kind: String, _ detail: [String: JSONValue]) -> Bool {
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
            throw SetupFailure(stage: .audit, message: RunReport.SetupError.auditMessage("cannot record the run in the audit store", storeError: error))
        }
    }

    /// Violations, kills and the main process's end, from what the kernel and the filter reported.
    func recordOutcomeEvents(_ context: RunScope, observation o: WorkerObservation, usage: CgroupUsage, report: RunReport) {
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
        // Written with `run.finished`, in its transaction, unless another event of the run comes
        // between them (a result bundle's verdict, a diff): then first (`recordPendingEvents`).
        context.pendingEvents += events
    }

    /// Writes the events `recordOutcomeEvents` left for `run.finished`'s transaction, now: another
    /// event of the run is about to follow them.
    func recordPendingEvents(_ context: RunScope) {
        guard !context.pendingEvents.isEmpty else { return }
        defer { context.pendingEvents = [] }
        do {
            try audit.recordMany(context.pendingEvents)
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

/// One run's scope: every resource the run acquires (the image cache's hold, the run directory,
/// the host id range, the cgroup, the workspace layer, the result filesystem, the root, the port
/// forwarder, the pipes, the worker until its monitor has it, the egress proxy) is registered here
/// as it is acquired, and `close()` releases them newest first on every path. Also what the later
/// stages and the record need to know of the run.
final class RunScope: @unchecked Sendable {
    // Used by one run's task only, never concurrently.
    let runId: String
    var profileName: String?
    var runDirectory: RunDirectory?
    var auditOpen = false
    var auditFailed = false
    /// The outcome's events, kept for `run.finished`'s transaction (`recordOutcomeEvents`).
    var pendingEvents: [(runId: String?, kind: String, detail: JSONValue)] = []
    var workspace: String?
    var resultMount: Int32 = -1
    /// Root of the tmpfs holding the overlay's upper (`data/`) and work directories.
    var layer: Int32 = -1
    /// Whether `collect` has emptied the run's cgroup (else the scope's close does, before the report).
    var cgroupEmptied = false
    /// Whether the supervisor's kill was recorded before it was sent.
    let killRecorded = Mutex(false)
    /// The caller's handle to cancel this run, if it gave one.
    var cancellation: RunCancellation?
    /// Secret values given to this run's worker: redacted from everything stored.
    var redactor = Redactor.none
    private var releases: [() -> Void] = []

    init(runId: String) {
        self.runId = runId
    }

    /// Registers the release of what was just acquired.
    func onClose(_ release: @escaping () -> Void) {
        releases.append(release)
    }

    /// A descriptor the run holds until it is over.
    func own(_ fd: Int32) {
        onClose { Glibc.close(fd) }
    }

    /// Releases everything, newest first; a second call does nothing.
    func close() {
        while let release = releases.popLast() { release() }
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
        let forwarder: InputForwarder?
        do throws(LinuxError) {
            forwarder = try source.map { (fd) throws(LinuxError) in try InputForwarder(source: fd) }
        } catch {
            throw Supervisor.SetupFailure(error)
        }
        let out: (read: Int32, write: Int32), err: (read: Int32, write: Int32)
        do throws(LinuxError) {
            out = try LinuxPipe.make(nonBlocking: true)
            do {
                err = try LinuxPipe.make(nonBlocking: true)
            } catch {
                close(out.read)
                close(out.write)
                throw error
            }
        } catch {
            forwarder?.stop()
            throw Supervisor.SetupFailure(stage: .pipe, errno: error.errno, message: "cannot create the worker's stdio pipes: \(error.message)")
        }
        input = forwarder
        let stdinEnd = input?.workerEnd ?? open("/dev/null", O_RDONLY | O_CLOEXEC)
        guard stdinEnd >= 0 else {
            for fd in [out.read, out.write, err.read, err.write] { close(fd) }
            forwarder?.stop()
            throw Supervisor.SetupFailure(stage: .pipe, errno: errno, message: "cannot open /dev/null for the worker's stdin")
        }
        stdin = stdinEnd
        stdoutRead = out.read
        stdoutWrite = out.write
        stderrRead = err.read
        stderrWrite = err.write
        // The worker's ends must block: a worker writing into a full pipe waits.
        _ = fcntl(stdoutWrite, F_SETFL, 0)
        _ = fcntl(stderrWrite, F_SETFL, 0)
    }

    // Used by one run's task only: each end is closed once, by whoever holds it then.
    private let ends = Mutex((childEndsClosed: false, readEndsClosed: false))

    /// After the spawn: the worker holds its own copies.
    func closeChildEnds() {
        let first = ends.withLock { e -> Bool in
            defer { e.childEndsClosed = true }
            return !e.childEndsClosed
        }
        guard first else { return }
        close(stdin)
        close(stdoutWrite)
        close(stderrWrite)
    }

    /// The worker's monitor has the read ends now, and closes them.
    func readEndsHandedOver() {
        ends.withLock { $0.readEndsClosed = true }
    }

    func closeAll() {
        input?.stop()
        closeChildEnds()
        let first = ends.withLock { e -> Bool in
            defer { e.readEndsClosed = true }
            return !e.readEndsClosed
        }
        guard first else { return }
        close(stdoutRead)
        close(stderrRead)
    }
}

/// CLOCK_MONOTONIC in nanoseconds: durations that no clock change can distort.
package enum WorkerClock {
    package static func now() -> UInt64 {
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
