import StockadeSupervisor
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
        /// The egress proxy refused the connection for this reason (an `egress` violation recorded).
        case egress(reason: String)

        /// The supervisor records this mechanism acting (a filter
        /// notification, a cgroup counter), independently of the probe's word.
        public var recordedBySupervisor: Bool {
            switch self {
            case .filter, .foreignArchitecture, .pidsLimit, .memoryLimit, .egress: true
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
            case .egress(let reason): "the egress proxy's \(reason) refusal"
            }
        }
    }

    /// How the sandboxed run's network is set for an egress control: the profile's own, switched to
    /// `proxy` with verify's rules added (its test names admitted and pinned to the loopback fixture).
    public struct EgressSetup: Sendable, Equatable {
        /// `network.egress.allowPrivate` for the run: on to prove the name and literal checks
        /// alone (the fixture is on loopback), off to prove the address check.
        public var allowPrivate: Bool
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
    /// The public incident or CVE class this control guards against, where there is one.
    public var incident: String?
    /// Set for egress controls: the run goes through the proxy with verify's rules.
    public var egress: EgressSetup?

    /// Without `mechanism`, a control the profile's seccomp allow list can
    /// grant is the filter's (on the calls it names); any other is the probe's own observation.
    public init(_ id: String, class threatClass: Int, _ title: String, probe: String, _ arguments: [Argument] = [],
                expect expectation: Expectation = .refused, grants: [Grant] = [], fixture: Fixture = .none,
                needsCgroups: Bool = false, mechanism: Mechanism? = nil, egress: EgressSetup? = nil) {
        self.egress = egress
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

    /// This control, naming the public incident or CVE class it guards against.
    func citing(_ incident: String) -> Control {
        var copy = self
        copy.incident = incident
        return copy
    }

    /// The catalogue entry (`stockade verify --list --json`): what the control proves, how, and against what.
    public var catalogueJSON: JSONValue {
        var grantsBy: [String] = []
        for grant in grants {
            switch grant {
            case .seccompAllows(let calls): grantsBy.append("seccomp.allow: " + calls.joined(separator: ", "))
            case .networkLoopback: grantsBy.append("network.mode: loopback")
            case .rootInside: grantsBy.append("user.uid: 0")
            case .coreDumps: grantsBy.append("limits.rlimits.core > 0")
            }
        }
        return .object([
            "id": .string(id),
            "threatClass": .number(String(threatClass)),
            "title": .string(title),
            "probe": .string(probe),
            "mechanism": .string(mechanism.name),
            "grantedBy": .array(grantsBy.map { .string($0) }),
            "needsCgroups": .bool(needsCgroups),
            "incident": incident.map { .string($0) } ?? .null,
        ])
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

    public static let all: [Control] = namespaces + seccomp + capabilities + resources + filesystem + network + egress
        + descriptors + supervisor

    static let namespaces: [Control] = [
        Control("namespaces.host-pids", class: 1, "host processes are invisible", probe: "host-pids"),
        Control("namespaces.userns-unshare", class: 1, "no nested user namespace by unshare", probe: "userns",
                grants: [syscalls("unshare")])
            .citing("unprivileged user namespaces as kernel attack surface (CVE-2022-0185 fsconfig, CVE-2023-32233 nf_tables)"),
        Control("namespaces.userns-clone", class: 1, "no nested user namespace by clone", probe: "clone-newuser",
                grants: [syscalls("clone")])
            .citing("unprivileged user namespaces as kernel attack surface (CVE-2022-0185 fsconfig, CVE-2023-32233 nf_tables)"),
        Control("namespaces.userns-clone3", class: 1, "no nested user namespace by clone3", probe: "clone3-newuser",
                grants: [syscalls("clone3")], mechanism: .filterAnswer(call: "clone3", errno: "ENOSYS"))
            .citing("seccomp filters that cannot read clone3's flags (runc/Docker answer ENOSYS; CVE-2022-0185 class behind it)"),
        Control("namespaces.setns", class: 1, "no joining another namespace", probe: "setns", grants: [syscalls("setns")])
            .citing("joining a host or sibling namespace through a leaked handle (CVE-2019-5736 and CVE-2024-21626 relatives)"),
        Control("namespaces.mount-tmpfs", class: 1, "no mounting tmpfs", probe: "mount-tmpfs", grants: [syscalls("mount")])
            .citing("mounting over the sandbox's own view (CVE-2019-16884 procfs-over-mask class)"),
        Control("namespaces.mount-proc", class: 1, "no mounting proc", probe: "mount-proc", grants: [syscalls("mount")])
            .citing("mounting /proc again to unmask it (CVE-2019-16884, CVE-2019-19921)"),
        Control("namespaces.mount-sysfs", class: 1, "no mounting sysfs", probe: "mount-sysfs", grants: [syscalls("mount")])
            .citing("a writable sysfs (uevent_helper container escape)"),
        Control("namespaces.sethostname", class: 1, "no changing the hostname", probe: "sethostname",
                grants: [syscalls("sethostname")]),
        Control("namespaces.proc-sys-write", class: 1, "no writes under /proc/sys", probe: "proc-sys-write")
            .citing("writable /proc/sys (core_pattern and modprobe container escapes)"),
        Control("namespaces.proc-masked", class: 1, "the host's kernel details in /proc are masked", probe: "proc-masked",
                ["/proc/cmdline", "/proc/keys", "/proc/timer_list", "/proc/kcore", "/proc/acpi"].map { .literal($0) })
            .citing("host kernel details readable from a container (Docker maskedPaths; /proc/timer_list, /proc/kcore leaks)"),
        Control("namespaces.proc-read-only", class: 1, "/proc/sys and /proc/sysrq-trigger are read-only mounts",
                probe: "proc-write", ["/proc/sys/kernel/hostname", "/proc/sysrq-trigger"].map { .literal($0) })
            .citing("writable /proc/sys or /proc/sysrq-trigger (sysrq host reboot from a container)"),
        Control("namespaces.chroot", class: 1, "no chroot (escape with a working directory outside)", probe: "chroot",
                grants: [syscalls("chroot")])
            .citing("the classic chroot breakout (a working directory left outside the new root)"),
        Control("namespaces.pivot-root", class: 1, "no pivot_root", probe: "pivot-root", grants: [syscalls("pivot_root")]),
        // The classic escapes (issue 22): each the way it broke a real container runtime.
        Control("namespaces.cgroup-release-agent", class: 1, "no mounting cgroupfs to write a release_agent",
                probe: "cgroup-release-agent", grants: [syscalls("mount")])
            .citing("cgroup v1 release_agent escape (CVE-2022-0492)"),
        Control("namespaces.kernel-helpers", class: 1, "no writing core_pattern, modprobe, uevent_helper or binfmt_misc",
                probe: "helper-write", ["/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe", "/sys/kernel/uevent_helper",
                                        "/proc/sys/fs/binfmt_misc/register"].map { .literal($0) })
            .citing("host helpers run as root from a container's write (core_pattern, uevent_helper, binfmt_misc escapes)"),
    ]

    static let seccomp: [Control] = [
        Control("seccomp.filter-installed", class: 2, "a seccomp filter is installed (mode 2)", probe: "seccomp-mode"),
        Control("seccomp.foreign-arch-i386", class: 2, "i386 calls (int $0x80) kill the worker", probe: "keyctl-int80",
                expect: .seccompKill, mechanism: .foreignArchitecture("i386"))
            .citing("syscall-number confusion across architectures (CVE-2009-0835 seccomp ia32 bypass)"),
        Control("seccomp.foreign-arch-x32", class: 2, "x32 calls kill the worker", probe: "x32-getpid", expect: .seccompKill,
                mechanism: .foreignArchitecture("x32"))
            .citing("x32 call numbers slipping past a filter written for x86_64 (CVE-2009-0835 class)"),
        Control("seccomp.keyrings", class: 2, "no kernel keyrings (add_key, keyctl)", probe: "add-key",
                grants: [syscalls("add_key", "keyctl", "request_key")])
            .citing("kernel keyrings are not namespaced (CVE-2016-0728 keyring refcount overflow; Docker's default profile blocks them)"),
        Control("seccomp.keyctl-session", class: 2, "no reaching the session keyring the supervisor was started in (keyctl)",
                probe: "keyctl", grants: [syscalls("keyctl")])
            .citing("kernel keyrings are not namespaced: a container reading the host's keys (Docker's default profile blocks keyctl)"),
        Control("seccomp.io-uring", class: 2, "no io_uring (answered ENOSYS)", probe: "io-uring-setup",
                grants: [syscalls("io_uring_setup")])
            .citing("io_uring kernel exploits (CVE-2022-29582, CVE-2023-2598)"),
        Control("seccomp.linux-aio", class: 2, "no Linux AIO (answered ENOSYS)", probe: "io-setup",
                grants: [syscalls("io_setup")]),
        Control("seccomp.userfaultfd", class: 2, "no userfaultfd", probe: "userfaultfd", grants: [syscalls("userfaultfd")])
            .citing("userfaultfd as the race-winning primitive of kernel exploits (why vm.unprivileged_userfaultfd exists)"),
        Control("seccomp.perf-event-open", class: 2, "no perf_event_open", probe: "perf-event-open",
                grants: [syscalls("perf_event_open")])
            .citing("perf_event_open kernel exploits (CVE-2013-2094)"),
        Control("seccomp.bpf", class: 2, "no bpf", probe: "bpf", grants: [syscalls("bpf")])
            .citing("eBPF verifier exploits (CVE-2021-3490, CVE-2021-31440)"),
        Control("seccomp.ptrace", class: 2, "no ptrace", probe: "ptrace", grants: [syscalls("ptrace")])
            .citing("ptrace privilege escalation (CVE-2019-13272 PTRACE_TRACEME)"),
        Control("seccomp.process-vm", class: 2, "no process_vm_readv", probe: "process-vm-readv",
                grants: [syscalls("process_vm_readv")])
            .citing("reading another process's memory without ptrace (process_vm_readv)"),
        Control("seccomp.open-by-handle-at", class: 2, "no open_by_handle_at", probe: "open-by-handle-at",
                grants: [syscalls("open_by_handle_at")])
            .citing("shocker: open_by_handle_at to the host's root (Docker before 1.0, 2014)"),
        Control("seccomp.modules", class: 2, "no kernel module loading", probe: "init-module",
                grants: [syscalls("init_module", "finit_module")])
            .citing("loading a kernel module (rootkits from a container)"),
        Control("seccomp.clock", class: 2, "no setting the clock", probe: "clock-settime", grants: [syscalls("clock_settime")]),
        Control("seccomp.personality", class: 2, "no personality flags beyond Docker's (ADDR_NO_RANDOMIZE)", probe: "personality",
                grants: [syscalls("personality")])
            .citing("turning off ASLR with personality(ADDR_NO_RANDOMIZE)"),
        Control("seccomp.socket-vsock", class: 2, "no vsock sockets", probe: "socket-vsock", grants: [syscalls("socket")])
            .citing("AF_VSOCK kernel exploits (CVE-2021-26708)"),
        Control("seccomp.socket-packet", class: 2, "no packet sockets", probe: "socket-packet", grants: [syscalls("socket")])
            .citing("AF_PACKET kernel exploits (CVE-2016-8655, CVE-2020-14386)"),
        Control("seccomp.socket-alg", class: 2, "no AF_ALG sockets", probe: "socket-alg", grants: [syscalls("socket")])
            .citing("AF_ALG kernel exploits (CVE-2019-8912)"),
        Control("seccomp.netlink-audit", class: 2, "no netlink families beyond routing (audit)", probe: "netlink-audit",
                grants: [syscalls("socket")])
            .citing("netlink families outside routing as kernel attack surface (nf_tables CVE-2022-1015 class)"),
    ]

    static let capabilities: [Control] = [
        Control("capabilities.empty-sets", class: 3, "every capability set is empty", probe: "caps")
            .citing("capabilities left in a container (CAP_SYS_ADMIN escapes: CVE-2022-0492)"),
        Control("capabilities.no-new-privs", class: 3, "no_new_privs is set", probe: "no-new-privs")
            .citing("setuid binaries regaining privileges inside the sandbox"),
        Control("capabilities.setuid0", class: 3, "no setuid(0)", probe: "setuid0", grants: [.rootInside],
                mechanism: .probe(calls: ["setuid"]))
            .citing("regaining root inside the sandbox"),
        Control("capabilities.capset", class: 3, "no raising capabilities with capset", probe: "capset", mechanism: .probe(calls: ["capset"])),
        Control("capabilities.uid-map", class: 3, "host uid 0 is never mapped", probe: "uidmap")
            .citing("root in the container is root on the host (unmapped uid 0)"),
        Control("capabilities.mknod", class: 3, "no device nodes", probe: "mknod-dev", mechanism: .probe(calls: ["mknod", "mknodat"]))
            .citing("device nodes to the host's disks"),
        Control("capabilities.ptrace-init", class: 3, "no tracing the namespace's init (Stockade's, which holds the host's view)",
                probe: "ptrace-init", grants: [syscalls("ptrace")])
            .citing("ptrace of the runtime's process inside the container (CVE-2016-9962)"),
    ]

    static let resources: [Control] = [
        Control("resources.pids", class: 4, "the pids limit holds (fork bomb)", probe: "fork-bomb", [.pidsAbove(16)],
                expect: .contained, needsCgroups: true, mechanism: .pidsLimit)
            .citing("fork bombs"),
        Control("resources.memory", class: 4, "the memory limit holds (anonymous memory)", probe: "mem-bomb",
                [.memoryMiBAbove(64)], expect: .contained, needsCgroups: true, mechanism: .memoryLimit)
            .citing("memory exhaustion of the host"),
        Control("resources.tmp-size", class: 4, "the /tmp size limit holds", probe: "tmpfs-fill", [.tmpMiBAbove(16)],
                expect: .contained, mechanism: .refusalErrno("ENOSPC")),
        Control("resources.descriptors", class: 4, "the descriptor limit holds", probe: "fd-bomb", [.descriptorsAbove(16)],
                expect: .contained, mechanism: .refusalErrno("EMFILE")),
        Control("resources.rt-priority", class: 4, "no real-time scheduling", probe: "rt-priority",
                mechanism: .probe(calls: ["sched_setscheduler"])),
        Control("resources.core-dumps", class: 4, "no core dumps", probe: "core-dump", grants: [.coreDumps])
            .citing("core dumps handed to a host helper (core_pattern pipes)"),
    ]

    static let filesystem: [Control] = [
        Control("filesystem.host-view-read-only", class: 5, "the host view (/usr, /etc, /bin, /) is read-only",
                probe: "write-host-view")
            .citing("overwriting host binaries or libraries from the sandbox"),
    ]

    static let network: [Control] = [
        Control("network.host-loopback", class: 6, "no connecting to the host's loopback listeners", probe: "host-loopback",
                [.fixture], grants: [.networkLoopback], fixture: .loopbackListener)
            .citing("reaching host services bound to 127.0.0.1"),
        Control("network.abstract-unix", class: 6, "no connecting to the host's abstract Unix sockets", probe: "abstract-unix",
                [.fixture], fixture: .abstractListener)
            .citing("abstract Unix sockets shared with the host network namespace (CVE-2020-15257 containerd-shim)"),
        Control("network.unix-path", class: 6, "no connecting to the host's path Unix sockets", probe: "unix-path",
                [.fixture], fixture: .pathListener)
            .citing("a host daemon's socket inside the sandbox (docker.sock exposure)"),
        Control("network.raw-socket", class: 6, "no raw sockets", probe: "raw-socket", mechanism: .probe(calls: ["socket"]))
            .citing("raw sockets for spoofing (CVE-2020-14386 class)"),
    ]

    /// Test names of verify's egress controls, pinned for the run to the loopback fixture. `.invalid`
    /// (RFC 2606) is never a real name: were one ever looked up, no server would answer for it.
    public enum EgressNames {
        public static let admitted = "admitted.verify.stockade.invalid"
        public static let denied = "denied.verify.stockade.invalid"
        public static let privateAddress = "private.verify.stockade.invalid"
        /// The names verify's rules admit (on the fixture's port) and the names pinned, all to 127.0.0.1.
        public static let allowed = [admitted, privateAddress]
        public static let pinned = [admitted, denied, privateAddress]
    }

    /// Run with the worker's network switched to the egress proxy (verify's rules added): each
    /// must be refused by the proxy for its own reason, and the same destination must answer a
    /// direct connection unsandboxed.
    static let egress: [Control] = [
        Control("egress.denied-name", class: 14, "a name no rule admits is refused, and never looked up", probe: "egress-connect",
                [.literal(EgressNames.denied), .literal("127.0.0.1"), .fixture, .literal(EgressNames.admitted)],
                fixture: .loopbackListener, mechanism: .egress(reason: "not-allowed"), egress: .init(allowPrivate: true))
            .citing("data carried out in DNS lookups of denied names (allowlist bypasses of agent sandboxes)"),
        Control("egress.ip-literal", class: 14, "an IP literal is refused unless a rule names that address", probe: "egress-connect",
                [.literal("127.0.0.1"), .literal("127.0.0.1"), .fixture, .literal(EgressNames.admitted)],
                fixture: .loopbackListener, mechanism: .egress(reason: "ip-literal"), egress: .init(allowPrivate: true))
            .citing("allowlists bypassed by connecting to an address instead of a name"),
        Control("egress.private-address", class: 14, "an admitted name resolving to a private or loopback address is refused",
                probe: "egress-connect", [.literal(EgressNames.privateAddress), .literal("127.0.0.1"), .fixture],
                fixture: .loopbackListener, mechanism: .egress(reason: "loopback-address"), egress: .init(allowPrivate: false))
            .citing("SSRF to internal services and cloud metadata through an allowed name (DNS rebinding class)"),
        Control("egress.direct", class: 14, "a connection around the proxy reaches nothing", probe: "host-loopback",
                [.fixture], fixture: .loopbackListener, mechanism: .probe(calls: ["connect"]), egress: .init(allowPrivate: true))
            .citing("clients that ignore HTTP_PROXY and connect directly"),
    ]

    static let descriptors: [Control] = [
        Control("descriptors.inherited", class: 7, "only descriptors 0, 1, 2 reach the worker", probe: "fds",
                fixture: .inheritedDescriptor)
            .citing("descriptors leaked from the runtime (CVE-2024-21626 Leaky Vessels, CVE-2016-9962)"),
        Control("descriptors.cwd-outside", class: 7, "no working directory or descriptor outside the root", probe: "cwd-outside",
                mechanism: .probe(calls: ["chroot"]))
            .citing("a working directory leaked from the runtime (CVE-2024-21626, /proc/self/fd/N as cwd)"),
        Control("terminals.tiocsti", class: 7, "no TIOCSTI injection (also with the high bits set)", probe: "tiocsti",
                grants: [syscalls("ioctl")])
            .citing("TIOCSTI input injection (CVE-2017-5226 bubblewrap, CVE-2016-7545)"),
    ]

    static let supervisor: [Control] = [
        Control("supervisor.sigsys-spoof", class: 8, "a SIGSYS from the worker's own filter is signaled, not a seccomp kill", probe: "spoof-sigsys",
                expect: .signaled(31), mechanism: .classification)
            .citing("status spoofing: a worker forging a seccomp kill"),
        Control("supervisor.oom-spoof", class: 8, "exit 137 is an exit, not an OOM", probe: "spoof-oom", expect: .exited(137),
                mechanism: .classification)
            .citing("status spoofing: a worker forging an OOM kill"),
        Control("supervisor.runtime-binary", class: 8, "no opening the runtime's binary for writing through /proc/self/exe or /proc/1/exe",
                probe: "exe-overwrite", ["/proc/self/exe", "/proc/1/exe"].map { .literal($0) })
            .citing("overwriting the runtime binary through /proc/self/exe (CVE-2019-5736)"),
    ]

    /// The control with this id.
    public static func control(_ id: String) -> Control? { all.first { $0.id == id } }

    /// The controls a selector names, in catalogue order: an id, a prefix ending in `*`
    /// (`seccomp.*`), `class:N`, or `*` for all. Empty when it names none.
    public static func select(_ selector: String, from controls: [Control] = all) -> [Control] {
        if selector == "*" { return controls }
        if selector.hasPrefix("class:") {
            guard let n = Int(selector.dropFirst("class:".count)) else { return [] }
            return controls.filter { $0.threatClass == n }
        }
        if selector.hasSuffix("*") {
            let prefix = selector.dropLast()
            guard !prefix.contains("*") else { return [] }
            return controls.filter { $0.id.hasPrefix(prefix) }
        }
        return controls.filter { $0.id == selector }
    }

    /// The catalogue as a table: id, class, probe, what it proves, the incident class.
    public static func listing(_ controls: [Control] = all) -> String {
        let width = max(7, controls.map(\.id.count).max() ?? 0)
        let probeWidth = max(5, controls.map(\.probe.count).max() ?? 0)
        func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
        var lines = [pad("CONTROL", width) + "  CLASS  " + pad("PROBE", probeWidth) + "  PROVES (INCIDENT CLASS)"]
        for c in controls {
            let incident = c.incident.map { " (\($0))" } ?? ""
            lines.append(pad(c.id, width) + "  " + pad(String(c.threatClass), 5) + "  " + pad(c.probe, probeWidth) + "  " + c.title + incident)
        }
        return lines.joined(separator: "\n")
    }
}
