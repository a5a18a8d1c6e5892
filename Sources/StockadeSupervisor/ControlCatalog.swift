import StockadePolicy

/// One enforcement control `stockade verify` proves on this host: a probe of
/// `stockade-probe` that tries the forbidden thing, run inside a real sandbox
/// (where it must be refused) and unsandboxed (where it must succeed, so that
/// a refusal means something).
public struct Control: Sendable, Equatable {
    /// What the sandboxed run must show for the control to hold.
    public enum Expectation: Sendable, Equatable {
        /// The probe exits 0 (refused); a profile that kills on violation may
        /// instead end it with outcome `seccomp`.
        case refused
        /// The filter kills the worker: outcome `seccomp` (foreign architectures).
        case seccompKill
        /// A limit stops it: the probe exits 0 (the allocation failed), or the
        /// kernel ends it (outcome `oom`).
        case contained
        /// The supervisor classifies the end from the kernel, not from the
        /// worker: outcome `signaled` with this signal, or `exited` with this code.
        case signaled(Int32)
        case exited(Int32)
    }

    /// How a profile grants what the control forbids, on purpose.
    public enum Grant: Sendable, Equatable {
        /// The profile's `seccomp.allow` names one of these calls.
        case seccompAllows([String])
        /// The profile gives the worker a loopback network (only counts when
        /// the probe actually got through: the worker's own loopback is not the host's).
        case networkLoopback
        /// The profile runs the worker as uid 0 inside its namespace.
        case rootInside
        /// The profile allows core dumps (`rlimits.core` > 0).
        case coreDumps
    }

    /// What the verifier prepares before running the probe.
    public enum Fixture: Sendable, Equatable {
        case none
        /// A TCP listener on the host's 127.0.0.1; `{port}` in the arguments.
        case loopbackListener
        /// A listening abstract Unix socket in the host's network namespace; `{name}`.
        case abstractListener
        /// A listening Unix socket at a host path; `{path}`.
        case pathListener
        /// The positive control inherits an open directory descriptor (fd 3).
        case inheritedDescriptor
    }

    /// The mechanism whose own action is the evidence that this control holds.
    /// A probe stopped by something else (the memory limit ending a fork bomb,
    /// a missing capability refusing a call the filter let through) proves
    /// nothing about this control.
    public enum Mechanism: Sendable, Equatable {
        /// The probe reads the state the mechanism sets (capability sets, the
        /// uid map, rlimits, the pid namespace's view, a read-only mount): its
        /// refusal is the evidence. A seccomp kill counts only at one of `calls`
        /// (the forbidden attempt itself).
        case probe(calls: [String])
        /// The seccomp filter: a violation (or kill) recorded for one of these calls.
        case filter([String])
        /// The seccomp filter answers the call itself with this errno, unrecorded
        /// (clone3: ENOSYS so that glibc falls back to clone): the probe's report names it.
        case filterAnswer(call: String, errno: String)
        /// The filter's foreign-architecture rule: a kill recorded for a call of this architecture.
        case foreignArchitecture(String)
        /// The pids controller refused a fork: a `pids` violation (its `max` event counter moved).
        case pidsLimit
        /// The memory controller: an OOM kill in the run's cgroup (a `memory` violation).
        case memoryLimit
        /// A size or descriptor limit: the probe's refusal ends in this errno (ENOSPC, EMFILE).
        case refusalErrno(String)
        /// The supervisor's own classification of how the worker ended.
        case classification

        /// The supervisor records this mechanism acting (a filter
        /// notification, a cgroup counter), independently of the probe's word.
        public var recordedBySupervisor: Bool {
            switch self {
            case .filter, .foreignArchitecture, .pidsLimit, .memoryLimit: true
            case .probe, .filterAnswer, .refusalErrno, .classification: false
            }
        }

        /// The mechanism, in words.
        public var name: String {
            switch self {
            case .probe: "the mechanism the probe observes"
            case .filter(let calls): "the filter (\(calls.joined(separator: "/")))"
            case .filterAnswer(let call, let errno): "the filter's \(errno) for \(call)"
            case .foreignArchitecture(let arch): "the filter's \(arch) rule"
            case .pidsLimit: "the pids limit"
            case .memoryLimit: "the memory limit"
            case .refusalErrno(let errno): "the limit that answers \(errno)"
            case .classification: "the supervisor's classification"
            }
        }
    }

    /// A probe argument: literal, or derived from the profile's limits.
    public enum Argument: Sendable, Equatable {
        case literal(String)
        /// `{port}`, `{name}` or `{path}` of the fixture.
        case fixture
        /// The limit in MiB plus a margin, so that a holding limit is hit.
        case pidsAbove(Int)
        case memoryMiBAbove(Int)
        case tmpMiBAbove(Int)
        case descriptorsAbove(Int)
    }

    public var id: String
    public var threatClass: Int
    public var title: String
    public var probe: String
    public var arguments: [Argument]
    public var expectation: Expectation
    public var grants: [Grant]
    public var fixture: Fixture
    /// Held only once the worker runs in its own cgroup with limits.
    public var needsCgroups: Bool
    public var mechanism: Mechanism

    /// Without `mechanism`, a control the profile's seccomp allow list can
    /// grant is the filter's (on the calls it names); any other is the probe's own observation.
    public init(_ id: String, class threatClass: Int, _ title: String, probe: String, _ arguments: [Argument] = [],
                expect expectation: Expectation = .refused, grants: [Grant] = [], fixture: Fixture = .none,
                needsCgroups: Bool = false, mechanism: Mechanism? = nil) {
        self.id = id
        self.threatClass = threatClass
        self.title = title
        self.probe = probe
        self.arguments = arguments
        self.expectation = expectation
        self.grants = grants
        self.fixture = fixture
        self.needsCgroups = needsCgroups
        let filtered = grants.flatMap { grant -> [String] in
            if case .seccompAllows(let calls) = grant { return calls }
            return []
        }
        self.mechanism = mechanism ?? (filtered.isEmpty ? .probe(calls: []) : .filter(filtered))
    }

    /// The first way `profile` grants what this control forbids, as a sentence; nil when it grants none.
    public func grant(in profile: Profile) -> String? {
        for grant in grants {
            switch grant {
            case .seccompAllows(let calls):
                if let call = calls.first(where: profile.seccomp.allow.contains) {
                    return "the profile's seccomp allow list grants \(call)"
                }
            case .networkLoopback:
                if profile.network.mode == .loopback { return "the profile grants network loopback" }
            case .rootInside:
                if profile.user.uid == 0 { return "the profile runs the worker as uid 0 in its namespace" }
            case .coreDumps:
                if profile.limits.rlimits.core > 0 { return "the profile allows core dumps" }
            }
        }
        return nil
    }
}

/// The controls `stockade verify` checks, by threat class (THREAT-MODEL.md).
public enum ControlCatalog {
    static func syscalls(_ names: String...) -> Control.Grant { .seccompAllows(names) }

    public static let all: [Control] = namespaces + seccomp + capabilities + resources + filesystem + network
        + descriptors + supervisor

    static let namespaces: [Control] = [
        Control("namespaces.host-pids", class: 1, "host processes are invisible", probe: "host-pids"),
        Control("namespaces.userns-unshare", class: 1, "no nested user namespace by unshare", probe: "userns",
                grants: [syscalls("unshare")]),
        Control("namespaces.userns-clone", class: 1, "no nested user namespace by clone", probe: "clone-newuser",
                grants: [syscalls("clone")]),
        Control("namespaces.userns-clone3", class: 1, "no nested user namespace by clone3", probe: "clone3-newuser",
                grants: [syscalls("clone3")], mechanism: .filterAnswer(call: "clone3", errno: "ENOSYS")),
        Control("namespaces.setns", class: 1, "no joining another namespace", probe: "setns", grants: [syscalls("setns")]),
        Control("namespaces.mount-tmpfs", class: 1, "no mounting tmpfs", probe: "mount-tmpfs", grants: [syscalls("mount")]),
        Control("namespaces.mount-proc", class: 1, "no mounting proc", probe: "mount-proc", grants: [syscalls("mount")]),
        Control("namespaces.mount-sysfs", class: 1, "no mounting sysfs", probe: "mount-sysfs", grants: [syscalls("mount")]),
        Control("namespaces.sethostname", class: 1, "no changing the hostname", probe: "sethostname",
                grants: [syscalls("sethostname")]),
        Control("namespaces.proc-sys-write", class: 1, "no writes under /proc/sys", probe: "proc-sys-write"),
        Control("namespaces.proc-masked", class: 1, "the host's kernel details in /proc are masked", probe: "proc-masked",
                ["/proc/cmdline", "/proc/keys", "/proc/timer_list", "/proc/kcore", "/proc/acpi"].map { .literal($0) }),
        Control("namespaces.proc-read-only", class: 1, "/proc/sys and /proc/sysrq-trigger are read-only mounts",
                probe: "proc-write", ["/proc/sys/kernel/hostname", "/proc/sysrq-trigger"].map { .literal($0) }),
        Control("namespaces.chroot", class: 1, "no chroot (escape with a working directory outside)", probe: "chroot",
                grants: [syscalls("chroot")]),
        Control("namespaces.pivot-root", class: 1, "no pivot_root", probe: "pivot-root", grants: [syscalls("pivot_root")]),
    ]

    static let seccomp: [Control] = [
        Control("seccomp.filter-installed", class: 2, "a seccomp filter is installed (mode 2)", probe: "seccomp-mode"),
        Control("seccomp.foreign-arch-i386", class: 2, "i386 calls (int $0x80) kill the worker", probe: "keyctl-int80",
                expect: .seccompKill, mechanism: .foreignArchitecture("i386")),
        Control("seccomp.foreign-arch-x32", class: 2, "x32 calls kill the worker", probe: "x32-getpid", expect: .seccompKill,
                mechanism: .foreignArchitecture("x32")),
        Control("seccomp.keyrings", class: 2, "no kernel keyrings (add_key, keyctl)", probe: "add-key",
                grants: [syscalls("add_key", "keyctl", "request_key")]),
        Control("seccomp.io-uring", class: 2, "no io_uring (answered ENOSYS)", probe: "io-uring-setup",
                grants: [syscalls("io_uring_setup")]),
        Control("seccomp.linux-aio", class: 2, "no Linux AIO (answered ENOSYS)", probe: "io-setup",
                grants: [syscalls("io_setup")]),
        Control("seccomp.userfaultfd", class: 2, "no userfaultfd", probe: "userfaultfd", grants: [syscalls("userfaultfd")]),
        Control("seccomp.perf-event-open", class: 2, "no perf_event_open", probe: "perf-event-open",
                grants: [syscalls("perf_event_open")]),
        Control("seccomp.bpf", class: 2, "no bpf", probe: "bpf", grants: [syscalls("bpf")]),
        Control("seccomp.ptrace", class: 2, "no ptrace", probe: "ptrace", grants: [syscalls("ptrace")]),
        Control("seccomp.process-vm", class: 2, "no process_vm_readv", probe: "process-vm-readv",
                grants: [syscalls("process_vm_readv")]),
        Control("seccomp.open-by-handle-at", class: 2, "no open_by_handle_at", probe: "open-by-handle-at",
                grants: [syscalls("open_by_handle_at")]),
        Control("seccomp.modules", class: 2, "no kernel module loading", probe: "init-module",
                grants: [syscalls("init_module", "finit_module")]),
        Control("seccomp.clock", class: 2, "no setting the clock", probe: "clock-settime", grants: [syscalls("clock_settime")]),
        Control("seccomp.personality", class: 2, "no personality flags beyond Docker's (ADDR_NO_RANDOMIZE)", probe: "personality",
                grants: [syscalls("personality")]),
        Control("seccomp.socket-vsock", class: 2, "no vsock sockets", probe: "socket-vsock", grants: [syscalls("socket")]),
        Control("seccomp.socket-packet", class: 2, "no packet sockets", probe: "socket-packet", grants: [syscalls("socket")]),
        Control("seccomp.socket-alg", class: 2, "no AF_ALG sockets", probe: "socket-alg", grants: [syscalls("socket")]),
        Control("seccomp.netlink-audit", class: 2, "no netlink families beyond routing (audit)", probe: "netlink-audit",
                grants: [syscalls("socket")]),
    ]

    static let capabilities: [Control] = [
        Control("capabilities.empty-sets", class: 3, "every capability set is empty", probe: "caps"),
        Control("capabilities.no-new-privs", class: 3, "no_new_privs is set", probe: "no-new-privs"),
        Control("capabilities.setuid0", class: 3, "no setuid(0)", probe: "setuid0", grants: [.rootInside],
                mechanism: .probe(calls: ["setuid"])),
        Control("capabilities.capset", class: 3, "no raising capabilities with capset", probe: "capset", mechanism: .probe(calls: ["capset"])),
        Control("capabilities.uid-map", class: 3, "host uid 0 is never mapped", probe: "uidmap"),
        Control("capabilities.mknod", class: 3, "no device nodes", probe: "mknod-dev", mechanism: .probe(calls: ["mknod", "mknodat"])),
    ]

    static let resources: [Control] = [
        Control("resources.pids", class: 4, "the pids limit holds (fork bomb)", probe: "fork-bomb", [.pidsAbove(16)],
                expect: .contained, needsCgroups: true, mechanism: .pidsLimit),
        Control("resources.memory", class: 4, "the memory limit holds (anonymous memory)", probe: "mem-bomb",
                [.memoryMiBAbove(64)], expect: .contained, needsCgroups: true, mechanism: .memoryLimit),
        Control("resources.tmp-size", class: 4, "the /tmp size limit holds", probe: "tmpfs-fill", [.tmpMiBAbove(16)],
                expect: .contained, mechanism: .refusalErrno("ENOSPC")),
        Control("resources.descriptors", class: 4, "the descriptor limit holds", probe: "fd-bomb", [.descriptorsAbove(16)],
                expect: .contained, mechanism: .refusalErrno("EMFILE")),
        Control("resources.rt-priority", class: 4, "no real-time scheduling", probe: "rt-priority",
                mechanism: .probe(calls: ["sched_setscheduler"])),
        Control("resources.core-dumps", class: 4, "no core dumps", probe: "core-dump", grants: [.coreDumps]),
    ]

    static let filesystem: [Control] = [
        Control("filesystem.host-view-read-only", class: 5, "the host view (/usr, /etc, /bin, /) is read-only",
                probe: "write-host-view"),
    ]

    static let network: [Control] = [
        Control("network.host-loopback", class: 6, "no connecting to the host's loopback listeners", probe: "host-loopback",
                [.fixture], grants: [.networkLoopback], fixture: .loopbackListener),
        Control("network.abstract-unix", class: 6, "no connecting to the host's abstract Unix sockets", probe: "abstract-unix",
                [.fixture], fixture: .abstractListener),
        Control("network.unix-path", class: 6, "no connecting to the host's path Unix sockets", probe: "unix-path",
                [.fixture], fixture: .pathListener),
        Control("network.raw-socket", class: 6, "no raw sockets", probe: "raw-socket", mechanism: .probe(calls: ["socket"])),
    ]

    static let descriptors: [Control] = [
        Control("descriptors.inherited", class: 7, "only descriptors 0, 1, 2 reach the worker", probe: "fds",
                fixture: .inheritedDescriptor),
        Control("descriptors.cwd-outside", class: 7, "no working directory or descriptor outside the root", probe: "cwd-outside",
                mechanism: .probe(calls: ["chroot"])),
        Control("terminals.tiocsti", class: 7, "no TIOCSTI injection (also with the high bits set)", probe: "tiocsti",
                grants: [syscalls("ioctl")]),
    ]

    static let supervisor: [Control] = [
        Control("supervisor.sigsys-spoof", class: 8, "a SIGSYS from the worker's own filter is signaled, not a seccomp kill", probe: "spoof-sigsys",
                expect: .signaled(31), mechanism: .classification),
        Control("supervisor.oom-spoof", class: 8, "exit 137 is an exit, not an OOM", probe: "spoof-oom", expect: .exited(137),
                mechanism: .classification),
    ]

    /// The control with this id.
    public static func control(_ id: String) -> Control? { all.first { $0.id == id } }
}
