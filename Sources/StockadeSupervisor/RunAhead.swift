import Dispatch
import Logging
import StockadeCgroups
import StockadeLinux
import StockadePolicy
import Synchronization

/// What a process that runs one worker (`stockade run`) starts making for that run before its
/// supervisor exists, so that it is ready when the run asks: on another thread at once, the profile
/// with the run's options, then the root skeleton and the seccomp program; the run's cgroup, by the
/// supervisor's cgroup side as soon as the driver is known. Meanwhile the supervisor opens its store
/// and plans and records the run; its `prepare` waits for all of it and finds each ready.
///
/// The run's own resolution decides: anything made here that the run does not ask for (other limits,
/// another root) is not used, and an unused cgroup is removed when the pool closes. What fails here
/// is made again by the run, which reports the error.
public final class RunAhead: Sendable {
    /// Left once the profile is known (nil: it could not be loaded).
    private let loaded = DispatchGroup()
    /// Left once everything this makes on its own thread is made.
    private let finished = DispatchGroup()
    /// The profile as the catalog loaded it (the run's plan takes it rather than read it again), and
    /// with the run's options applied; nil when it could not be loaded.
    private let profile = Mutex<(loaded: LoadedProfile, resolved: Profile)?>(nil)
    private let profileName: String

    public init(_ options: RunOptions, catalog: ProfileCatalog, stateDirectory: String) {
        profileName = options.profile
        loaded.enter()
        finished.enter()
        // A thread of its own, as for `Background`: it must not wait for a busy dispatch thread.
        let body: @Sendable () -> Void = { [self] in
            defer { finished.leave() }
            let read = try? catalog.load(options.profile)
            var resolved = read?.profile
            if resolved != nil { RunPlanner.apply(options, to: &resolved!) }
            if let read, let resolved { profile.withLock { $0 = (read, resolved) } }
            loaded.leave()
            // An image's or a directory's root has no skeleton.
            guard var profile = resolved, case .host = profile.root, options.image == nil, options.rootfs == nil,
                  let policy = try? Supervisor.runPolicy(for: profile, options: options, secrets: .none, stateDirectory: stateDirectory)
            else { return }
            _ = try? SeccompCompiler.compile(policy.seccomp, disk: Supervisor.seccompDiskCache(stateDirectory: stateDirectory))
            profile.volumes = policy.volumes
            // The skeleton holds mount points, not what is mounted on them: any request directory and
            // result filesystem give the same entries as the run's own.
            let workspace: RootLayout.Workspace = options.workspace == nil ? .empty(sizeBytes: profile.limits.workspaceBytes) : .mount(fd: -1)
            let layout = Supervisor.rootLayout(profile, workspace: workspace, requestDirectory: options.request == nil ? nil : "/",
                                               resultMount: -1, hostIds: nil)
            // Kept by RootPlanCache too: the run's prepare finds the split made (the same key: no
            // descriptor is part of it).
            try? RootSkeleton.prepare(RootPlanCache.split(layout).split.entries)
        }
        // Without a thread, it is made here, before the supervisor starts.
        if !DetachedThread.start(body) { body() }
    }

    /// Makes the run's cgroup in `pool`, once the profile is known.
    func makeCgroup(in pool: CgroupPool, logger: Logger) {
        loaded.wait()
        guard let profile = profile.withLock({ $0?.resolved }) else { return }
        let name = pool.makeAhead(limits: Supervisor.cgroupLimits(profile))
        logger.debug("run.prepared-ahead", metadata: ["cgroup": "\(name ?? "none")"])
    }

    /// The profile `name` as loaded for this run, once it is; nil when it could not be loaded or the
    /// run asks for another (the plan then loads it, and reports why it cannot).
    func loadedProfile(_ name: String) -> LoadedProfile? {
        guard name == profileName else { return nil }
        loaded.wait()
        return profile.withLock { $0?.loaded }
    }

    /// Waits until everything this makes on its own thread is made.
    func wait() {
        finished.wait()
    }
}
