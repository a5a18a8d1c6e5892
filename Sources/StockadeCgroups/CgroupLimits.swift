/// The resource limits of one run, as the drivers write them.
public struct CgroupLimits: Sendable, Hashable {
    /// Memory limit; memory plus swap is limited to the same value where the kernel accounts swap.
    public var memoryBytes: Int64
    /// CPU bandwidth in CPUs: a CFS quota of `cpus` × the 100 ms period.
    public var cpus: Double
    /// Maximum number of processes and threads.
    public var pids: Int

    public init(memoryBytes: Int64, cpus: Double, pids: Int) {
        self.memoryBytes = memoryBytes
        self.cpus = cpus
        self.pids = pids
    }

    /// The CFS period, in microseconds, both drivers use.
    public static let cpuPeriodMicros = 100_000
    /// The kernel refuses quotas below 1 ms.
    static let minimumQuotaMicros = 1_000
    /// Far above any host: keeps the quota arithmetic in range.
    static let maximumCPUs = 4096.0

    /// The CFS quota per period, in microseconds.
    /// cgroup v1 keeps a worker's TCP socket buffers in a counter of their own, outside
    /// `memory.limit_in_bytes` (and otherwise unbounded: they count only against the host-wide
    /// `tcp_mem`). They are bounded at a quarter of the memory limit, at least 1 MiB. (v2 charges
    /// socket memory to `memory.max` itself.)
    var tcpBufferBytes: Int64 {
        max(1 << 20, (memoryBytes / 4) & ~4095)
    }

    var cpuQuotaMicros: Int {
        max(Self.minimumQuotaMicros, Int((cpus * Double(Self.cpuPeriodMicros)).rounded()))
    }

    func validate() throws(CgroupError) {
        guard memoryBytes > 0 else {
            throw CgroupError(.invalidLimits, "the memory limit must be positive, not \(memoryBytes) bytes: set the profile's memory limit")
        }
        guard cpus.isFinite, cpus > 0, cpus <= Self.maximumCPUs else {
            throw CgroupError(.invalidLimits, "the CPU limit must be a finite number of CPUs above 0 and at most \(Int(Self.maximumCPUs)), not \(cpus): set the profile's cpu limit")
        }
        guard pids > 0 else {
            throw CgroupError(.invalidLimits, "the pids limit must be positive, not \(pids): set the profile's pids limit")
        }
    }
}
