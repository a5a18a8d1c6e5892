import CStockade
import Dispatch
import Glibc
import Synchronization
import StockadePolicy

/// A spawned worker: its pid in the host namespace, its pidfd, and the
/// seccomp listener when the filter notifies.
public struct SpawnedWorker: Sendable {
    public let pid: Int32
    public let pidfd: Int32
    public let notifyFD: Int32?
    /// Read end of the report the worker's init writes when the main process exits.
    public let statusFD: Int32
    /// The listener `SandboxSpec.listenPort` asked for (the caller closes it), else nil.
    public var listenFD: Int32? = nil
}

/// Runs every spawn on a few dedicated threads that live as long as the
/// process: a worker's parent-death signal fires when the *thread* that
/// forked its spawn helper exits, and pool threads may exit at any time.
/// Several threads, because each waits for its child to reach execve.
///
/// The clones themselves are done by spawn helper processes (stk_helper.h), so
/// the supervisor's memory is never copied per run. Helpers are started only by
/// `prepare`, once: the `stockade-spawn` binary beside this executable when it is
/// there (SpawnHelperBinary; every init is then a copy of that small program and
/// holds nothing of the supervisor's), else forked before the supervisor has
/// loaded any profile, secret or request: every init is a copy of a helper, so a
/// helper forked later would carry earlier runs' secrets into later runs' inits. A spawn takes an idle
/// helper, waiting for one when all are busy; a helper that dies is not
/// replaced, and with none left spawns fail closed.
public final class Spawner: Sendable {
    public static let shared = Spawner()

    private struct Job: @unchecked Sendable {
        // The plan's C memory is touched only by the spawner thread while the caller waits.
        // Without a plan, the job forks `helpers` spawn helpers (see `prepare`).
        let plan: SpawnPlan?
        let helpers: Int
        var netnsAhead = 0
        /// Without a plan: the `stockade-spawn` beside this executable, as `prepare` found it.
        var binary: SiblingBinary = .absent(path: SpawnHelperBinary.name)
        let done: @Sendable (stk_spawn_result) -> Void
    }

    private struct Helper {
        let socket: Int32
        let pid: pid_t
    }

    private struct Pool {
        var idle: [Helper] = []
        var live = 0
        var prepared = false
        /// Why no helper could be started from the `stockade-spawn` binary, when one was found but refused.
        var refusal: String?
        /// How the helpers were started, for the log (`helperMode`).
        var mode: String?
    }

    private let jobs = Mutex<[Job]>([])
    private let ready = Semaphore()
    private let pool = Mutex(Pool())
    /// Posted once per helper made idle, and once per waiting thread when the last helper dies.
    private let idleSignal = Semaphore()
    /// Entered by `prepare`, left once its helpers are started (or refused): `helperMode` waits for it.
    private let starting = DispatchGroup()

    static let threadCount = 4

    private init() {
        for _ in 0..<Self.threadCount {
            let started = DetachedThread.start { [self] in run() }
            precondition(started, "pthread_create failed: errno \(errno)")
        }
    }

    /// Starts `helpers` spawn helpers (1 to 4: how many spawns can be under way at once): executed from
    /// the `stockade-spawn` beside this executable, on a thread of the spawner while the caller goes on,
    /// or, without one, forked from this process before it returns. Only the first call starts any;
    /// call it before loading anything a worker must not see.
    /// `netnsAhead`: how many workers' network namespaces each helper keeps made ahead (0 to 4: a
    /// process that runs many workers); 0 makes each at its spawn. `netnsOnce` (a process that runs
    /// one worker): each helper makes one as it starts, while the supervisor opens its store and
    /// plans the run, and does not replace it once used.
    public func prepare(helpers: Int = 1, netnsAhead: Int = 0, netnsOnce: Bool = false) {
        let netnsAhead = netnsOnce ? Int(STK_NETNS_AHEAD_ONCE) : netnsAhead
        guard pool.withLock({ p in
            defer { p.prepared = true }
            return !p.prepared
        }) else { return }
        let count = min(max(helpers, 1), Self.threadCount)
        let binary = SpawnHelperBinary.open()
        // Entered and queued first in one step: a spawn queued meanwhile from another thread waits for
        // the helpers behind this job, never in front of it on every spawner thread.
        jobs.withLock { queue in
            starting.enter()
            queue.insert(Job(plan: nil, helpers: count, netnsAhead: netnsAhead, binary: binary, done: { [starting] _ in starting.leave() }), at: 0)
        }
        ready.signal()
        // A forked helper is a copy of this process: it must exist before anything a worker must not
        // see is loaded. An executed one (or none, refused) holds nothing of this process, so the
        // command goes on while it starts; a spawn is served after it, in order.
        if case .absent = binary { starting.wait() }
    }

    /// How this process's spawn helpers were started, for operators' logs: "executed PATH" (every
    /// worker's init a copy of that small program), "forked" (no `stockade-spawn` beside this
    /// executable: each init a copy of this process), or why the file found there was refused (every
    /// spawn then fails closed); nil before `prepare`.
    public var helperMode: String? {
        starting.wait()
        return pool.withLock { $0.mode }
    }

    /// Spawns the worker. The stdio fds are the child's ends; the caller closes them afterwards.
    public func spawn(_ spec: SandboxSpec, stdin: Int32, stdout: Int32, stderr: Int32) async throws(LinuxError) -> SpawnedWorker {
        let plan = try SpawnPlan(spec, stdin: stdin, stdout: stdout, stderr: stderr)
        let result: stk_spawn_result = await withCheckedContinuation { continuation in
            jobs.withLock { $0.append(Job(plan: plan, helpers: 0, done: { continuation.resume(returning: $0) })) }
            ready.signal()
        }
        withExtendedLifetime(plan) {}
        if result.stage == Int32(STK_STAGE_HELPER.rawValue), result.error == ESRCH, let refusal = pool.withLock({ $0.refusal }) {
            throw LinuxError(.setup, stage: .spawnHelper, errno: EACCES, refusal)
        }
        if result.stage != Int32(STK_STAGE_NONE.rawValue) {
            throw SpawnStage.error(stage: result.stage, errno: result.error, detail: result.detail, spec: spec)
        }
        return SpawnedWorker(pid: result.pid, pidfd: result.pidfd, notifyFD: result.notify_fd >= 0 ? result.notify_fd : nil,
                             statusFD: result.status_fd, listenFD: result.listen_fd >= 0 ? result.listen_fd : nil)
    }

    private func run() {
        while true {
            ready.wait()
            guard let job = jobs.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { continue }
            var result = stk_spawn_result()
            result.pid = -1
            result.pidfd = -1
            result.notify_fd = -1
            result.status_fd = -1
            result.detail = -1
            result.listen_fd = -1
            guard let plan = job.plan else {
                startHelpers(job.helpers, netnsAhead: job.netnsAhead, binary: job.binary)
                job.done(result)
                continue
            }
            // A helper lost before it was handed the plan (it died idle) costs nothing: try the next one.
            for attempt in 0..<2 {
                guard let helper = acquire() else {
                    result.stage = Int32(STK_STAGE_HELPER.rawValue)
                    result.error = ESRCH
                    break
                }
                if stk_spawn_remote(helper.socket, plan.plan, &result) == 0 {
                    release(helper)
                    break
                }
                retire(helper)
                // detail 1: a child had been started (then killed and reaped): do not run the plan twice.
                if result.detail == 1 || attempt == 1 { break }
                result.stage = Int32(STK_STAGE_NONE.rawValue)
            }
            job.done(result)
        }
    }

    /// Starts the helpers: executes the `stockade-spawn` binary next to this executable when there is one
    /// (SpawnHelperBinary), else forks them from this thread.
    private func startHelpers(_ count: Int, netnsAhead: Int, binary: SiblingBinary) {
        defer { if case .ready(let fd, _) = binary { close(fd) } }
        if case .refused(let why) = binary {
            pool.withLock { $0.refusal = why }
        }
        let (scrub, scrubLength) = Self.argumentArea()
        var made = 0
        for _ in 0..<(binary.isRefused ? 0 : count) {
            var pid: pid_t = 0
            let socket: Int32
            if case .ready(let fd, let path) = binary {
                socket = stk_helper_exec(fd, Int32(clamping: netnsAhead), &pid)
                // Kept only when no helper starts (a spawn then fails with it).
                if socket < 0 && made == 0 {
                    let err = errno
                    let why = err == ESTALE
                        ? "is from another build than this stockade (its spawn and child code differ): install stockade and stockade-spawn from one build"
                        : err == ECHILD ? "exited before it served (run it by hand to see why)"
                        : err == ETIMEDOUT ? "did not answer within 10 s: it is not stockade's spawn helper"
                        : "cannot be started: \(String(cString: strerror(err)))"
                    pool.withLock { $0.refusal = "the spawn helper \(path) \(why)" }
                }
            } else {
                socket = stk_helper_start(scrub, scrubLength, Int32(clamping: netnsAhead), &pid)
            }
            guard socket >= 0 else { break }
            pool.withLock { p in
                p.idle.append(Helper(socket: socket, pid: pid))
                p.live += 1
            }
            made += 1
        }
        let mode: String
        switch binary {
        case .ready(_, let path): mode = made > 0 ? "executed " + path : "refused: " + (pool.withLock { $0.refusal } ?? path)
        case .absent: mode = "forked (no \(SpawnHelperBinary.name) beside this executable)"
        case .refused(let why): mode = "refused: " + why  // no helper was started
        }
        pool.withLock { $0.mode = mode }
        for _ in 0..<made { idleSignal.signal() }
    }

    /// An idle helper, waiting while all are busy; nil when none is left.
    private func acquire() -> Helper? {
        // Helpers still starting on another spawner thread are waited for, not taken for none.
        starting.wait()
        while true {
            if pool.withLock({ $0.live }) == 0 { return nil }
            idleSignal.wait()
            if let helper = pool.withLock({ $0.idle.popLast() }) { return helper }
        }
    }

    private func release(_ helper: Helper) {
        pool.withLock { $0.idle.append(helper) }
        idleSignal.signal()
    }

    /// A helper that stopped answering: reap it; when it was the last, wake every waiting thread.
    private func retire(_ helper: Helper) {
        close(helper.socket)
        var status: Int32 = 0
        while waitpid(helper.pid, &status, 0) < 0 && errno == EINTR {}
        let left = pool.withLock { p -> Int in
            p.live -= 1
            return p.live
        }
        if left == 0 {
            for _ in 0..<Self.threadCount { idleSignal.signal() }
        }
    }
}

/// A program installed beside the running executable (found through `/proc/self/exe`): the spawn
/// helper `stockade-spawn`, and `stockade-server`, which `stockade` execs for `serve` and the commands
/// it routes. Opened once and executed through that descriptor, so the file checked is the file run.
/// Refused unless it is a regular file (not a link, not set-user-ID) owned by root or by this
/// process's user, writable by nobody else, in a directory as closed: whoever could replace it would
/// run as this process's user (root, for a supervisor), in every worker's init for the helper.
public enum SiblingBinary {
    case absent(path: String)
    case ready(fd: Int32, path: String)
    case refused(String)

    var isRefused: Bool {
        if case .refused = self { return true }
        return false
    }

    /// `name` beside this executable. `role` names it in messages ("the spawn helper");
    /// `otherwise`, when not empty, says what happens without the file (", or remove it and ...").
    public static func open(_ name: String, role: String, otherwise: String = "") -> SiblingBinary {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        // Without its own path, this process cannot tell where the file would be: that is not the
        // file's absence (which lets the spawn helpers be forked instead), and it says why.
        guard n > 0 else {
            let reason = n < 0 ? String(cString: strerror(errno)) : "an empty path"
            return .refused("cannot find \(role) \(name): readlink /proc/self/exe: \(reason) (is /proc mounted?)")
        }
        // The directory's bytes as they are (a name need not be UTF-8); the Strings are for messages.
        guard let slash = buffer[0..<n].lastIndex(of: CChar(UInt8(ascii: "/"))) else {
            return .refused("cannot find \(role) \(name): /proc/self/exe names no directory")
        }
        let directoryBytes = slash == 0 ? [CChar(UInt8(ascii: "/"))] : Array(buffer[0..<slash])
        let pathBytes = Array(buffer[0..<slash]) + Array("/\(name)".utf8CString)
        let directory = String(decoding: directoryBytes.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let path = String(decoding: pathBytes.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
        // The directory first, as a descriptor: the file is opened in the very directory that is
        // checked, so a directory renamed or swapped between the two cannot stand in for it.
        let directoryFD = Glibc.open(directoryBytes + [0], STK_O_PATH | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)
        guard directoryFD >= 0 else {
            return .refused("cannot open the directory \(directory) holding \(role): \(String(cString: strerror(errno)))")
        }
        defer { close(directoryFD) }
        // Not through a link, and never waiting (a FIFO planted there must not hang the start).
        let fd = openat(directoryFD, name, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW | O_NONBLOCK)
        if fd < 0 {
            let err = errno
            if err == ENOENT { return .absent(path: path) }
            if err == ELOOP { return .refused("\(role) \(path) is a symbolic link; install the file itself beside stockade\(otherwise)") }
            return .refused("cannot open \(role) \(path): \(String(cString: strerror(err)))")
        }
        // Whoever may write the directory could swap the file (a hard link to another root-owned
        // program passes every check below): the directory must be as closed as the file.
        var dir = stat()
        if fstat(directoryFD, &dir) != 0 || (dir.st_uid != 0 && dir.st_uid != geteuid()) ||
            dir.st_mode & (S_IWGRP | S_IWOTH) != 0 {
            close(fd)
            return .refused("the directory \(directory) holding \(role) is writable by its group or by others, or owned by another user; install stockade and \(name) in a root-owned directory with mode 0755")
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            return .refused("cannot inspect \(role) \(path): \(reason)")
        }
        let fix = "; make it root-owned with mode 0755 (chown root: \(path); chmod 0755 \(path))\(otherwise)"
        var problem: String?
        if (st.st_mode & S_IFMT) != S_IFREG {
            problem = "is not a regular file"
        } else if st.st_uid != 0 && st.st_uid != geteuid() {
            problem = "is owned by uid \(st.st_uid), neither root nor the user running stockade"
        } else if st.st_mode & (S_IWGRP | S_IWOTH) != 0 {
            problem = "is writable by its group or by others (mode \(String(st.st_mode & 0o7777, radix: 8)))"
        } else if st.st_mode & S_IXUSR == 0 {
            problem = "is not executable"
        } else if st.st_mode & (S_ISUID | S_ISGID) != 0 {
            problem = "is set-user-ID or set-group-ID"
        }
        if let problem {
            close(fd)
            return .refused("\(role) \(path) \(problem)" + fix)
        }
        // Executed through its close-on-exec descriptor, a #! script cannot run (its interpreter
        // would open /dev/fd/N, closed by then): anything but an ELF program is refused here,
        // naming why, rather than failing later with a bare ENOENT.
        var magic = [UInt8](repeating: 0, count: 4)
        let read = pread(fd, &magic, 4, 0)
        if read < 0 {
            let reason = String(cString: strerror(errno))
            close(fd)
            return .refused("cannot read \(role) \(path): \(reason)")
        }
        if read != 4 || magic != [0x7F, 0x45, 0x4C, 0x46] {
            close(fd)
            return .refused("\(role) \(path) is not an ELF program (a script cannot be run through the checked descriptor); install the \(name) binary itself\(otherwise)")
        }
        return .ready(fd: fd, path: path)
    }
}

extension SiblingBinary {
    /// This build's token (stk_build_token): `stockade` and a sibling from the same build agree on it.
    public static var buildToken: String {
        var token = [CChar](repeating: 0, count: 17)
        stk_build_token(&token)
        return String(decoding: token.prefix(16).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// The spawn helper's own binary, `stockade-spawn` (SiblingBinary): every worker's init is a copy of
/// that small program. Its build is checked when it starts (stk_helper_exec). Absent, the helpers are
/// forked from the supervisor instead (slower per run, same isolation).
enum SpawnHelperBinary {
    static let name = "stockade-spawn"

    static func open() -> SiblingBinary {
        SiblingBinary.open(name, role: "the spawn helper", otherwise: ", or remove it and stockade forks its helpers")
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
