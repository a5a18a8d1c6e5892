/// Where a run's setup failed: the contract's `setupError.stage` (docs/CONTRACT.md), a
/// `run.created` event's `refusedAt`, and a setup `kill`'s `reason`. The raw values are the
/// contract's strings.
public enum SetupStage: String, Sendable, CaseIterable, Codable {
    // The supervisor's own steps, in the order a run meets them.
    case requestLine = "request-line"
    case usage, profile, image
    case runDirectory = "run-directory"
    case request, secrets, mounts, seccomp, cgroup
    case idRange = "id-range"
    case workspace, result, publish, pipe, egress, epoll, audit, supervisor
    /// Not a failure: the run was cancelled before its worker started (`refusedAt` only).
    case cancelled
    // The spawn path's steps (stk_spawn), from clone3 to execve.
    case clone
    case usernsMap = "userns-map"
    case cgroupJoin = "cgroup-join"
    case sync, identity
    case cgroupNamespace = "cgroup-namespace"
    case hostname
    case mountPrivate = "mount-private"
    case root
    case pivotRoot = "pivot-root"
    case network, workdir, rlimits, setsid, capabilities, credentials
    case noNewPrivs = "no-new-privs"
    case parentDeathSignal = "parent-death-signal"
    case stdio
    case closeFds = "close-fds"
    case exec
    case spawnHelper = "spawn-helper"
    /// A stage number the spawn path reported that this build does not know.
    case unknown
}
