import CSeccomp
import CStockade
import Glibc
import StockadePolicy
import Synchronization

/// How the worker's main process ended, from its wait status.
public enum WorkerExit: Sendable, Equatable {
    case exited(Int32)
    case signaled(Int32)
}

/// One denied system call the filter reported (by notification), counted.
public struct SeccompViolation: Sendable, Equatable {
    public var syscall: String
    public var architecture: String
    public var count: Int
    /// The errno the call got, or nil when the worker was killed for it.
    public var answeredErrno: Int32?
}

/// Captured output of one stream, bounded.
public struct CapturedOutput: Sendable, Equatable {
    public var bytes: [UInt8] = []
    public var totalBytes: Int = 0
    public var truncated: Bool { totalBytes > bytes.count }
}

/// What the kernel told the supervisor about one worker.
public struct WorkerObservation: Sendable {
    /// How the main process ended (from init's wait4, or init's own wait status when init was killed).
    public var exit: WorkerExit
    /// Processes still alive in the namespace when the main process exited (killed with it).
    public var orphans: Int
    public var userCPUNanos: UInt64
    public var systemCPUNanos: UInt64
    public var stdout: CapturedOutput
    public var stderr: CapturedOutput
    public var violations: [SeccompViolation]
    /// The wall-clock deadline fired and the supervisor killed the worker.
    public var timedOut: Bool
    /// The supervisor killed the worker because of a seccomp notification.
    public var seccompKill: SeccompViolation?
    /// The run was cancelled (a signal to the CLI, or a caller) and the supervisor killed the worker.
    public var cancelled: Bool
    public var startedAtNanos: UInt64
    public var endedAtNanos: UInt64
}

/// Watches one worker on the shared event loop: exit (pidfd), output pipes,
/// seccomp notifications and the deadline. Classification comes only from
/// what the kernel reports, never from what the worker writes.
public final class WorkerMonitor: Sendable {
    public struct Configuration: Sendable {
        public var stdoutCap: Int
        public var stderrCap: Int
        public var timeoutNanos: UInt64?
        public var policy: SeccompPolicy?
        /// Called on the loop thread with each chunk of output as it arrives (1 = stdout, 2 = stderr).
        public var onOutput: (@Sendable (Int32, [UInt8]) -> Void)?
        /// Kills every process of the worker; defaults to SIGKILL on its init (which takes its pid namespace).
        public var killAll: (@Sendable () -> Void)?
        /// Called on the loop thread just before the supervisor kills the worker
        /// (reason `timeout` or `seccomp`, with the call for the latter), so the
        /// kill is recorded before it happens: a crash in between leaves the intent.
        public var beforeKill: (@Sendable (String, SeccompViolation?) -> Void)?

        public init(stdoutCap: Int, stderrCap: Int, timeoutNanos: UInt64?, policy: SeccompPolicy?) {
            self.stdoutCap = stdoutCap
            self.stderrCap = stderrCap
            self.timeoutNanos = timeoutNanos
            self.policy = policy
        }
    }

    private struct State {
        var exit: WorkerExit?
        var orphans = 0
        var usage = rusage()
        var stdout = CapturedOutput()
        var stderr = CapturedOutput()
        var stdoutOpen = true
        var stderrOpen = true
        var violations: [String: SeccompViolation] = [:]
        var violationOrder: [String] = []
        var timedOut = false
        var cancelled = false
        var seccompKill: SeccompViolation?
        var notifications = 0
        var killRecorded = false
        var endedAt: UInt64 = 0
        var finished = false
        var drainTimer: Int32 = -1
        /// Init's report of the main process's end, once it arrived (init then holds the namespace).
        var mainReport: (exit: WorkerExit, orphans: Int)?
        var mainEndedAt: UInt64 = 0
        /// While init holds the namespace: the settle timer, and the notification count at its last tick.
        var holdTimer: Int32 = -1
        var notificationsAtTick = 0
        var released = false
        var waiter: CheckedContinuation<WorkerObservation, Never>?
        var result: WorkerObservation?
    }

    private let worker: SpawnedWorker
    private let stdoutFD: Int32
    private let stderrFD: Int32
    private let timerFD: Int32
    private let config: Configuration
    private let startedAt: UInt64
    private let state = Mutex(State())
    private let loop = EventLoop.shared

    /// Starts watching. `stdout`/`stderr` are the supervisor's read ends (the monitor closes them).
    public init(worker: SpawnedWorker, stdout: Int32, stderr: Int32, configuration: Configuration) throws(LinuxError) {
        self.worker = worker
        self.stdoutFD = stdout
        self.stderrFD = stderr
        self.config = configuration
        self.startedAt = Self.now()
        self.timerFD = configuration.timeoutNanos.map { stk_timerfd_after($0) } ?? -1
        try loop.register(stdout) { [self] _ in self.drain(fd: stdout, stream: 1) }
        try loop.register(stderr) { [self] _ in self.drain(fd: stderr, stream: 2) }
        if let notify = worker.notifyFD {
            try loop.register(notify) { [self] events in self.handleNotification(events) }
        }
        if timerFD >= 0 {
            try loop.register(timerFD) { [self] _ in self.deadline() }
        }
        try loop.register(worker.statusFD) { [self] _ in self.mainExited() }
        try loop.register(worker.pidfd) { [self] _ in self.reap() }
    }

    /// Waits until the worker exited and its output is drained.
    public func wait() async -> WorkerObservation {
        await withCheckedContinuation { continuation in
            let ready: WorkerObservation? = state.withLock { s in
                if let r = s.result { return r }
                s.waiter = continuation
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }

    /// Cancels the run: unless the main process has already ended, records the intent (`beforeKill`
    /// with reason `cancelled`) and kills the worker as the deadline does. Safe from any thread.
    public func cancel() {
        let act = state.withLock { s -> Bool in
            guard s.exit == nil, s.mainReport == nil, !s.timedOut, !s.cancelled else { return false }
            s.cancelled = true
            return true
        }
        guard act else { return }
        config.beforeKill?("cancelled", nil)
        kill()
    }

    /// Kills the worker now (used on supervisor-side failures and by the deadline).
    public func kill() {
        if let killAll = config.killAll { killAll() } else { _ = stk_pidfd_send_signal(worker.pidfd, SIGKILL) }
    }

    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    // MARK: loop-thread handlers

    private func drain(fd: Int32, stream: Int32) -> Bool {
        var buffer = [UInt8](repeating: 0, count: 65536)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && (errno == EINTR || errno == EAGAIN) { return true }
        if n <= 0 {
            state.withLock { s in
                if stream == 1 { s.stdoutOpen = false } else { s.stderrOpen = false }
            }
            loop.unregister(fd)
            close(fd)
            finishIfDone()
            return true
        }
        let chunk = Array(buffer[0..<n])
        config.onOutput?(stream, chunk)
        state.withLock { s in
            let cap = stream == 1 ? config.stdoutCap : config.stderrCap
            if stream == 1 { Self.append(chunk, to: &s.stdout, cap: cap) } else { Self.append(chunk, to: &s.stderr, cap: cap) }
        }
        return true
    }

    private static func append(_ chunk: [UInt8], to out: inout CapturedOutput, cap: Int) {
        out.totalBytes += chunk.count
        let room = cap - out.bytes.count
        if room > 0 { out.bytes += chunk.prefix(room) }
    }

    private func reap() -> Bool {
        var code: Int32 = 0, status: Int32 = 0, pid: pid_t = 0
        var usage = rusage()
        guard stk_waitid_pidfd(worker.pidfd, WNOHANG, &code, &status, &pid, &usage) == 0, pid != 0 else { return true }
        // Init reports the main process's wait status; when init itself was
        // killed (deadline, seccomp kill, OOM) its own status stands.
        var exit: WorkerExit = code == CLD_EXITED ? .exited(status) : .signaled(status)
        var orphans = 0
        if let report = state.withLock({ $0.mainReport }) ?? readInitReport() {
            exit = report.exit
            orphans = report.orphans
        }
        state.withLock { s in
            s.exit = exit
            s.orphans = orphans
            s.usage = usage
            s.endedAt = s.mainReport == nil ? Self.now() : s.mainEndedAt
            // Grandchildren died with the pid namespace; whatever still holds the
            // pipes gets a short grace before the supervisor stops reading.
            s.drainTimer = stk_timerfd_after(2_000_000_000)
        }
        let drainTimer = state.withLock { $0.drainTimer }
        if drainTimer >= 0 {
            try? loop.register(drainTimer) { [self] _ in self.stopDraining() }
        }
        finishIfDone()
        return false
    }

    /// Init's report, if it wrote one: the main process's wait status and the survivors.
    private func readInitReport() -> (exit: WorkerExit, orphans: Int)? {
        var wire = stk_init_report_wire()
        let got = withUnsafeMutableBytes(of: &wire) { read(worker.statusFD, $0.baseAddress, $0.count) }
        guard got == MemoryLayout<stk_init_report_wire>.size else { return nil }
        let st = wire.status
        return (st & 0x7F == 0 ? .exited((st >> 8) & 0xFF) : .signaled(st & 0x7F), Int(max(wire.orphans, 0)))
    }

    /// The main process ended and init holds the namespace. Survivors may have denied calls
    /// pending in the listener, which the kernel would withdraw when the namespace dies: with
    /// survivors and a listener, init is released only once no notification came for a settle
    /// interval (bounded), after a last drain. Without either, at once.
    private func mainExited() -> Bool {
        guard let report = readInitReport() else {
            // Nothing yet (spurious wake-up), or init died without reporting: the pidfd tells.
            return errno == EAGAIN || errno == EINTR
        }
        let hold = state.withLock { s -> Bool in
            s.mainReport = report
            s.mainEndedAt = Self.now()
            s.notificationsAtTick = s.notifications
            return worker.notifyFD != nil && report.orphans > 0 && !s.finished
        }
        if hold { armHoldTimer() } else { release() }
        return false
    }

    private func armHoldTimer() {
        let timer = stk_timerfd_after(Self.holdSettleNanos)
        guard timer >= 0 else { return release() }
        state.withLock { $0.holdTimer = timer }
        do {
            try loop.register(timer) { [self] _ in self.holdTick() }
        } catch {
            release()
        }
    }

    private func holdTick() -> Bool {
        let again = state.withLock { s -> Bool in
            if s.holdTimer >= 0 {
                loop.unregister(s.holdTimer)
                close(s.holdTimer)
                s.holdTimer = -1
            }
            let busy = s.notifications != s.notificationsAtTick
            s.notificationsAtTick = s.notifications
            return busy && Self.now() - s.mainEndedAt < Self.holdLimitNanos && !s.released
        }
        if again { armHoldTimer() } else { release() }
        return false
    }

    /// Records every notification still queued, then lets init exit (which ends the namespace).
    private func release() {
        let first = state.withLock { s -> Bool in
            defer { s.released = true }
            return !s.released
        }
        guard first else { return }
        if let listener = worker.notifyFD {
            var pending = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            var drained = 0
            while drained < Self.notificationBudget, poll(&pending, 1, 0) > 0, pending.revents & Int16(POLLIN) != 0 {
                _ = handleNotification(UInt32(EPOLLIN_VALUE))
                drained += 1
            }
        }
        _ = shutdown(worker.statusFD, Int32(SHUT_RDWR))
    }

    /// Quiet time after which a held namespace is released, and the longest hold.
    static let holdSettleNanos: UInt64 = 30_000_000
    static let holdLimitNanos: UInt64 = 1_000_000_000

    private func stopDraining() -> Bool {
        let fds: [Int32] = state.withLock { s in
            var open: [Int32] = []
            if s.stdoutOpen { open.append(stdoutFD); s.stdoutOpen = false }
            if s.stderrOpen { open.append(stderrFD); s.stderrOpen = false }
            return open
        }
        for fd in fds {
            loop.unregister(fd)
            close(fd)
        }
        finishIfDone()
        return false
    }

    private func deadline() -> Bool {
        let (fire, held) = state.withLock { s -> (Bool, Bool) in
            if s.exit == nil && s.mainReport == nil && !s.cancelled { s.timedOut = true }
            return (s.timedOut, s.mainReport != nil)
        }
        // The main process ended before the deadline: not a timeout; end the hold.
        if held { release(); return false }
        if fire {
            config.beforeKill?("timeout", nil)
            kill()
        }
        return false
    }

    private func handleNotification(_ events: UInt32) -> Bool {
        guard let listener = worker.notifyFD else { return false }
        // Receive only when a notification is pending. Before Linux 6.6 the receive
        // ioctl sleeps until one arrives, whatever the descriptor's flags, and a
        // listener whose tasks are all gone reports hang-up alone: receiving then
        // blocked this loop thread for good (every run of the process hung). With
        // EPOLLIN set a notification is queued, so the receive returns at once
        // (ENOENT if its caller died in between).
        guard events & UInt32(EPOLLIN_VALUE) != 0 else {
            // Hang-up: no task uses the filter any more, nothing will come.
            return events & UInt32(EPOLLHUP_VALUE) == 0
        }
        var n = stk_notification()
        if stk_notify_receive(listener, &n) != 0 {
            // ENOENT: that caller died meanwhile; others may follow.
            return errno == ENOENT || errno == EINTR || errno == EAGAIN
        }
        let native = n.arch == BPFInterpreter.auditArchX86_64 && n.nr & BPFInterpreter.x32SyscallBit == 0
        // Numbers no syscall table names share one bucket: keyed by number, a worker
        // walking through 2^30 of them would grow this table, the report and the audit without bound.
        let name = Self.syscallName(arch: n.arch, nr: n.nr) ?? "unknown"
        let archName = native ? "x86_64" : (n.arch == BPFInterpreter.auditArchI386 ? "i386" : (n.arch == BPFInterpreter.auditArchX86_64 ? "x32" : String(n.arch, radix: 16)))
        let policy = config.policy
        var kill = !native && (policy?.killOnForeignArchitecture ?? true) || (policy?.killOnViolation ?? false)
        let errnoValue = policy?.notifyErrno[name] ?? EPERM
        let key = "\(archName)/\(name)"
        state.withLock { s in
            // Every notification costs the supervisor CPU the worker's cgroup
            // does not pay for: past a budget, a flood is itself a violation.
            s.notifications += 1
            if s.notifications > Self.notificationBudget { kill = true }
            if var v = s.violations[key] {
                v.count += 1
                s.violations[key] = v
            } else {
                s.violations[key] = SeccompViolation(syscall: name, architecture: archName, count: 1, answeredErrno: kill ? nil : errnoValue)
                s.violationOrder.append(key)
            }
            if kill && s.seccompKill == nil { s.seccompKill = s.violations[key] }
        }
        if kill {
            let first = state.withLock { s -> SeccompViolation? in
                guard !s.killRecorded else { return nil }
                s.killRecorded = true
                return s.seccompKill
            }
            if let first { config.beforeKill?("seccomp", first) }
            self.kill()
        } else {
            _ = stk_notify_respond(listener, n.id, errnoValue)
        }
        return true
    }

    /// Denied calls one run may make before the supervisor kills it (outcome `seccomp`).
    public static let notificationBudget = 100_000

    /// The syscall's name in `arch`'s table, or nil when no table names the number.
    static func syscallName(arch: UInt32, nr: Int32) -> String? {
        if let c = seccomp_syscall_resolve_num_arch(arch, nr) {
            defer { free(c) }
            return String(cString: c)
        }
        if arch == BPFInterpreter.auditArchX86_64, nr & BPFInterpreter.x32SyscallBit != 0,
           let c = seccomp_syscall_resolve_num_arch(UInt32(SCMP_ARCH_X32), nr) {
            defer { free(c) }
            return String(cString: c)
        }
        return nil
    }

    private func finishIfDone() {
        let (observation, waiter, cleanup): (WorkerObservation?, CheckedContinuation<WorkerObservation, Never>?, [Int32]) = state.withLock { s in
            guard !s.finished, let exit = s.exit, !s.stdoutOpen, !s.stderrOpen else { return (nil, nil, []) }
            s.finished = true
            let usage = s.usage
            let result = WorkerObservation(
                exit: exit,
                orphans: s.orphans,
                userCPUNanos: UInt64(usage.ru_utime.tv_sec) * 1_000_000_000 + UInt64(usage.ru_utime.tv_usec) * 1000,
                systemCPUNanos: UInt64(usage.ru_stime.tv_sec) * 1_000_000_000 + UInt64(usage.ru_stime.tv_usec) * 1000,
                stdout: s.stdout, stderr: s.stderr,
                violations: s.violationOrder.compactMap { s.violations[$0] },
                timedOut: s.timedOut, seccompKill: s.seccompKill, cancelled: s.cancelled,
                startedAtNanos: startedAt, endedAtNanos: s.endedAt)
            s.result = result
            let waiter = s.waiter
            s.waiter = nil
            var fds = [worker.pidfd, worker.statusFD]
            if let notify = worker.notifyFD { fds.append(notify) }
            if timerFD >= 0 { fds.append(timerFD) }
            if s.drainTimer >= 0 { fds.append(s.drainTimer) }
            if s.holdTimer >= 0 { fds.append(s.holdTimer); s.holdTimer = -1 }
            return (result, waiter, fds)
        }
        for fd in cleanup {
            loop.unregister(fd)
            close(fd)
        }
        if let observation, let waiter { waiter.resume(returning: observation) }
    }
}

let EPOLLHUP_VALUE: UInt32 = 0x010
let EPOLLIN_VALUE: UInt32 = 0x001
