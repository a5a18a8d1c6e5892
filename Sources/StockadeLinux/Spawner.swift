import CStockade
import Glibc
import Synchronization

/// A spawned worker: its pid in the host namespace, its pidfd, and the
/// seccomp listener when the filter notifies.
public struct SpawnedWorker: Sendable {
    public let pid: Int32
    public let pidfd: Int32
    public let notifyFD: Int32?
    /// Read end of the report the worker's init writes when the main process exits.
    public let statusFD: Int32
}

/// Runs every clone on a few dedicated threads that live as long as the
/// process: a worker's parent-death signal fires when the *thread* that
/// cloned it exits, and pool threads may exit at any time. Several threads,
/// because each waits for its child to reach execve.
public final class Spawner: Sendable {
    public static let shared = Spawner()

    private struct Job: @unchecked Sendable {
        // The plan's C memory is touched only by the spawner thread while the caller waits.
        let plan: SpawnPlan
        let done: @Sendable (stk_spawn_result) -> Void
    }

    private let jobs = Mutex<[Job]>([])
    private let ready = Semaphore()

    static let threadCount = 4

    private init() {
        for _ in 0..<Self.threadCount {
            let box = Unmanaged.passRetained(self)
            var thread = pthread_t()
            let rc = pthread_create(&thread, nil, { arg in
                guard let arg else { return nil }
                Unmanaged<Spawner>.fromOpaque(arg).takeRetainedValue().run()
                return nil
            }, box.toOpaque())
            precondition(rc == 0, "pthread_create failed: \(rc)")
            pthread_detach(thread)
        }
    }

    /// Spawns the worker. The stdio fds are the child's ends; the caller closes them afterwards.
    public func spawn(_ spec: SandboxSpec, stdin: Int32, stdout: Int32, stderr: Int32) async throws(LinuxError) -> SpawnedWorker {
        let plan = try SpawnPlan(spec, stdin: stdin, stdout: stdout, stderr: stderr)
        let result: stk_spawn_result = await withCheckedContinuation { continuation in
            jobs.withLock { $0.append(Job(plan: plan, done: { continuation.resume(returning: $0) })) }
            ready.signal()
        }
        withExtendedLifetime(plan) {}
        if result.stage != Int32(STK_STAGE_NONE.rawValue) {
            throw SetupStage.error(stage: result.stage, errno: result.error, detail: result.detail, spec: spec)
        }
        return SpawnedWorker(pid: result.pid, pidfd: result.pidfd, notifyFD: result.notify_fd >= 0 ? result.notify_fd : nil,
                             statusFD: result.status_fd)
    }

    private func run() {
        while true {
            ready.wait()
            guard let job = jobs.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { continue }
            var result = stk_spawn_result()
            _ = stk_spawn(job.plan.plan, &result)
            job.done(result)
        }
    }
}

/// A counting semaphore on a futex-free primitive glibc provides.
final class Semaphore: @unchecked Sendable {
    // sem_t is only touched through sem_* calls, which are thread-safe.
    private let sem: UnsafeMutablePointer<sem_t>

    init() {
        sem = .allocate(capacity: 1)
        sem_init(sem, 0, 0)
    }

    func signal() { sem_post(sem) }

    func wait() {
        while sem_wait(sem) != 0 && errno == EINTR {}
    }
}
