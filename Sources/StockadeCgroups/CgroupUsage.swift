/// What the kernel counted for one run cgroup. Counters that cannot be read are 0.
public struct CgroupUsage: Sendable, Equatable {
    /// CPU time of every process that was in the cgroup (v1 `cpuacct.usage`; v2 `cpu.stat` usage_usec × 1000).
    public var cpuNanos: UInt64
    /// Highest memory charge (v1 `memory.max_usage_in_bytes`; v2 `memory.peak`, kernel 5.19 and later).
    public var memoryPeakBytes: UInt64
    /// Processes the OOM killer killed in the cgroup (v1 `oom_kill` of `memory.oom_control`, kernel 4.13
    /// and later; v2 `oom_kill` of `memory.events`).
    public var oomKills: UInt64
    /// Forks refused because the pids limit was reached (`max` of `pids.events`).
    public var pidsLimitHits: UInt64

    public init(cpuNanos: UInt64 = 0, memoryPeakBytes: UInt64 = 0, oomKills: UInt64 = 0, pidsLimitHits: UInt64 = 0) {
        self.cpuNanos = cpuNanos
        self.memoryPeakBytes = memoryPeakBytes
        self.oomKills = oomKills
        self.pidsLimitHits = pidsLimitHits
    }
}
