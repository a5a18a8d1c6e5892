import Dispatch
import Glibc
import Synchronization

/// Run cgroups made ahead of the runs that use them, and removed after them, off the run's path.
///
/// Making a run cgroup (a directory in every hierarchy, its limits, its descriptors) and removing it
/// (a last kill check and a `rmdir` per hierarchy) are about a tenth of a run's CPU on cgroup v1. A
/// pool makes a cgroup for the next run with the same limits while this one runs, and removes a
/// finished run's cgroup on its own thread, so the run's report does not wait for either. A cgroup
/// is used by one run only: it is made empty, handed out once, and removed after that run; nothing
/// of one run (charged pages, counters, frozen state) can reach another.
///
/// Names are `<prefix><n>`: the prefix names the owning process (see `Supervisor`), whose death
/// makes every cgroup of its pool stale for the next supervisor's clean-up.
///
/// Thread-safe.
public final class CgroupPool: Sendable {
    private struct State {
        /// Ready cgroups by the limits they were made with, and the order the limits were last asked for.
        var ready: [CgroupLimits: [RunCgroup]] = [:]
        var recent: [CgroupLimits] = []
        var closed = false
        /// Removals handed to the pool's thread and not yet done.
        var retiring = 0
    }

    /// One counter for the whole process: two pools (two supervisors in one process) share the prefix.
    private static let counter = Mutex(0)
    private static func nextNumber() -> Int { counter.withLock { $0 += 1; return $0 } }
    /// Above this many removals waiting, a run's cgroup is removed on the run's own path (back-pressure:
    /// a removal that hangs must not let waiting cgroups and their id ranges pile up without bound).
    static let maxRetiring = 64

    private let driver: any CgroupDriver
    private let prefix: String
    /// How many cgroups to keep ready for each set of limits (0: none, everything is made on demand).
    let depth: Int
    /// At most this many distinct sets of limits are kept ready; the least recently asked for goes first.
    static let maxLimitSets = 4
    private let state = Mutex(State())
    /// The pool's own thread: makes and removes cgroups in order, never on a run's path.
    private let queue: DispatchQueue
    private let pending = DispatchGroup()

    public init(driver: any CgroupDriver, prefix: String, depth: Int) {
        self.driver = driver
        self.prefix = prefix
        self.depth = max(0, depth)
        queue = DispatchQueue(label: "stockade.cgroup-pool")
    }

    /// A fresh run cgroup with `limits`: a ready one if the pool has it, else one made now. Starts
    /// making the next one for the same limits in the background.
    public func take(limits: CgroupLimits) throws(CgroupError) -> RunCgroup {
        try limits.validate()
        let ready: RunCgroup? = state.withLock { s in
            if let i = s.recent.firstIndex(of: limits) { s.recent.remove(at: i) }
            s.recent.append(limits)
            return s.ready[limits]?.popLast()
        }
        defer { refill(limits) }
        // One that someone removed meanwhile (by hand: another supervisor's clean-up spares a live
        // pool's) is not handed out. Its first directory is removed first, so one look suffices; a
        // worker whose cgroup vanished later fails at its join (the kernel refuses a removed cgroup).
        if let ready, ready.canPlaceWorker, let first = ready.paths.first, CgroupFiles.exists(first) { return ready }
        if let ready { retire(ready) }
        return try driver.create(name: prefix + String(Self.nextNumber()), limits: limits)
    }

    /// Makes one cgroup with `limits` now, on the calling thread, for the next `take` with the same
    /// limits: a supervisor that runs one worker (`stockade run`, whose pool keeps none ahead) makes
    /// its run's cgroup while its store opens and its run is planned. Handed out once, like any
    /// other; removed by `close` if no run takes it. Returns its name; nil (nothing kept) if the pool
    /// is closed or the cgroup cannot be made: `take` then makes one and reports why.
    @discardableResult
    public func makeAhead(limits: CgroupLimits) -> String? {
        guard (try? limits.validate()) != nil,
              let made = try? driver.create(name: prefix + String(Self.nextNumber()), limits: limits) else { return nil }
        let kept = state.withLock { s in
            guard !s.closed else { return false }
            s.ready[limits, default: []].append(made)
            return true
        }
        if !kept { try? made.remove() }
        return kept ? made.name : nil
    }

    /// Removes `cgroup` (killing anything left in it) on the pool's thread, then calls `removed`; if it
    /// cannot be removed (a process that does not die), `failed` instead, and `removed` never: what the
    /// run holds until its cgroup is gone (its host id range) stays held.
    public func retire(_ cgroup: RunCgroup, failed: @escaping @Sendable (CgroupError) -> Void = { _ in },
                       removed: @escaping @Sendable () -> Void = {}) {
        let inline = state.withLock { s in
            if s.retiring >= Self.maxRetiring { return true }
            s.retiring += 1
            return false
        }
        let work: @Sendable () -> Void = {
            do throws(CgroupError) {
                try cgroup.remove()
                removed()
            } catch {
                failed(error)
            }
        }
        if inline { return work() }
        queue.async(group: pending) { [self] in
            work()
            state.withLock { $0.retiring -= 1 }
        }
    }

    /// Waits until every cgroup handed to `retire` so far is removed.
    private func settle() {
        pending.wait()
    }

    /// Removes every ready cgroup and makes no more; waits for the removals under way.
    public func close() {
        let ready = state.withLock { s in
            s.closed = true
            let all = s.ready.values.flatMap { $0 }
            s.ready = [:]
            return all
        }
        for cgroup in ready { retire(cgroup) }
        settle()
    }

    private func refill(_ limits: CgroupLimits) {
        guard depth > 0 else { return }
        queue.async(group: pending) { [self] in
            // Sets of limits nobody asked for lately are dropped, so a caller cycling through many
            // limits does not pile up cgroups.
            let (stale, name): ([RunCgroup], String?) = state.withLock { s in
                guard !s.closed else { return ([], nil) }
                var stale: [RunCgroup] = []
                while s.recent.count > Self.maxLimitSets {
                    stale += s.ready.removeValue(forKey: s.recent.removeFirst()) ?? []
                }
                guard s.recent.contains(limits), (s.ready[limits]?.count ?? 0) < depth else { return (stale, nil) }
                return (stale, prefix + String(Self.nextNumber()))
            }
            for cgroup in stale { try? cgroup.remove() }
            guard let name, let made = try? driver.create(name: name, limits: limits) else { return }
            let unwanted: RunCgroup? = state.withLock { s in
                guard !s.closed, s.recent.contains(limits) else { return made }
                s.ready[limits, default: []].append(made)
                return nil
            }
            if let unwanted { try? unwanted.remove() }
        }
    }
}
