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

/// Runs every spawn on a few dedicated threads that live as long as the
/// process: a worker's parent-death signal fires when the *thread* that
/// started its spawn helper exits, and pool threads may exit at any time.
/// Several threads, because each waits for its child to reach execve. A
/// thread hands its plan to an idle spawn helper process (stk_helper.h),
/// starting one when none is idle; the helper does the clone, so the
/// supervisor's memory is never copied per run.
public final class Spawner: Sendable {
    public static let shared = Spawner()

    private struct Job: @unchecked Sendable {
        // The plan's C memory is touched only by the spawner thread while the caller waits.
        // Without a plan, the job only makes sure a helper is ready (see `prepare`).
        let plan: SpawnPlan?
        let done: @Sendable (stk_spawn_result) -> Void
    }

    private struct Helper {
        let socket: Int32
        let pid: pid_t
    }

    private let jobs = Mutex<[Job]>([])
    /// Helpers not serving a spawn right now. Any spawner thread may use any of them: each was started
    /// by a spawner thread, and those live as long as the process.
    private let idleHelpers = Mutex<[Helper]>([])
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

    /// Forks a spawn helper now unless one is idle, and waits for it. A command that will run workers
    /// calls this before it loads anything: the helper, and every init cloned from it, then holds a copy
    /// of the process as it was before any secret or run was loaded.
    public func prepare() {
        guard idleHelpers.withLock({ $0.isEmpty }) else { return }
        let forked = Semaphore()
        jobs.withLock { $0.append(Job(plan: nil, done: { _ in forked.signal() })) }
        ready.signal()
        forked.wait()
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
            result.pid = -1
            result.detail = -1
            var helper = idleHelpers.withLock { $0.popLast() }
            if helper == nil {
                var pid: pid_t = 0
                let (scrub, scrubLength) = Self.argumentArea()
                let socket = stk_helper_start(scrub, scrubLength, &pid)
                if socket >= 0 {
                    helper = Helper(socket: socket, pid: pid)
                } else {
                    result.stage = Int32(STK_STAGE_HELPER.rawValue)
                    result.error = errno
                }
            }
            if let current = helper {
                if let plan = job.plan, stk_spawn_remote(current.socket, plan.plan, &result) != 0 {
                    // Gone (killed, or crashed): reap it; the next spawn starts another.
                    close(current.socket)
                    var status: Int32 = 0
                    while waitpid(current.pid, &status, 0) < 0 && errno == EINTR {}
                } else {
                    idleHelpers.withLock { $0.append(current) }
                }
            }
            job.done(result)
        }
    }
}

extension Spawner {
    /// The process's argv strings, contiguous from argv[0] to the end of the last one: the helper zeroes
    /// its copy, so no worker's init shows the supervisor's command line in /proc/1/cmdline.
    static func argumentArea() -> (UnsafeMutableRawPointer?, Int) {
        let argc = Int(CommandLine.argc)
        guard argc > 0, let first = CommandLine.unsafeArgv[0], let last = CommandLine.unsafeArgv[argc - 1] else { return (nil, 0) }
        let start = UnsafeMutableRawPointer(first)
        let end = UnsafeMutableRawPointer(last) + strlen(last) + 1
        return end > start ? (start, end - start) : (nil, 0)
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

    deinit {
        sem_destroy(sem)
        sem.deallocate()
    }

    func signal() { sem_post(sem) }

    func wait() {
        while sem_wait(sem) != 0 && errno == EINTR {}
    }
}
