/// Stockade's default seccomp policy: an allowlist at least as strict as
/// Docker's default profile, where every other call is notified to the
/// supervisor (recorded, answered with EPERM) and foreign architectures kill.
extension SeccompPolicy {
    // Linux constants (x86_64); StockadePolicy does no syscalls and imports no libc.
    static let TIOCSTI: UInt32 = 0x5412
    static let TIOCLINUX: UInt32 = 0x541C
    static let namespaceCloneFlags: UInt64 = 0x7E02_0000 // NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
    static let AF_UNIX: UInt64 = 1, AF_INET: UInt64 = 2, AF_INET6: UInt64 = 10, AF_NETLINK: UInt64 = 16
    static let NETLINK_ROUTE: UInt64 = 0
    static let ENOSYS: Int32 = 38

    /// Calls allowed without conditions.
    public static let allowedSyscalls: [String] = [
        "accept", "accept4", "access", "alarm", "arch_prctl", "bind", "brk", "capget", "capset", "chdir",
        "chown", "clock_getres", "clock_gettime", "clock_nanosleep", "close", "close_range", "connect",
        "copy_file_range", "dup", "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_pwait",
        "epoll_pwait2", "epoll_wait", "eventfd", "eventfd2", "execve", "execveat", "exit", "exit_group", "faccessat",
        "faccessat2", "fadvise64", "fallocate", "fchdir", "fchown", "fchownat", "fcntl",
        "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr", "fsetxattr", "fstat", "fstatfs",
        "fsync", "ftruncate", "futex", "futex_waitv", "futimesat", "get_mempolicy", "get_robust_list", "getcpu",
        "getcwd", "getdents", "getdents64", "getegid", "geteuid", "getgid", "getgroups", "getitimer", "getpeername",
        "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom", "getresgid", "getresuid", "getrlimit",
        "getrusage", "getsid", "getsockname", "getsockopt", "gettid", "gettimeofday", "getuid", "getxattr",
        "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "ioprio_get", "ioprio_set", "kill",
        "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self", "lchown", "lgetxattr", "link",
        "linkat", "listen", "listxattr", "llistxattr", "lremovexattr", "lseek", "lsetxattr", "lstat", "madvise",
        "mbind", "membarrier", "memfd_create", "mincore", "mlock", "mlock2",
        "mlockall", "mmap", "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive", "mq_timedsend",
        "mq_unlink", "mremap", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
        "name_to_handle_at", "nanosleep", "newfstatat", "pause", "pidfd_open",
        "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect", "poll", "ppoll", "prctl",
        "pread64", "preadv", "preadv2", "prlimit64", "pselect6", "pwrite64", "pwritev", "pwritev2", "read",
        "readahead", "readlink", "readlinkat", "readv", "recvfrom", "recvmmsg", "recvmsg", "remap_file_pages",
        "removexattr", "rename", "renameat", "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction",
        "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
        "rt_tgsigqueueinfo", "sched_get_priority_max", "sched_get_priority_min", "sched_getaffinity",
        "sched_getattr", "sched_getparam", "sched_getscheduler", "sched_rr_get_interval", "sched_setaffinity",
        "sched_setattr", "sched_setparam", "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl",
        "semget", "semop", "semtimedop", "sendfile", "sendmmsg", "sendmsg", "sendto", "set_mempolicy",
        "set_robust_list", "set_tid_address", "setfsgid", "setfsuid", "setgid", "setgroups", "setitimer", "setpgid",
        "setpriority", "setregid", "setresgid", "setresuid", "setreuid", "setrlimit", "setsid", "setsockopt",
        "setuid", "setxattr", "shmat", "shmctl", "shmdt", "shmget", "shutdown", "sigaltstack", "signalfd",
        "signalfd4", "splice", "stat", "statfs", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs",
        "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
        "timer_settime", "timerfd_create", "timerfd_gettime", "timerfd_settime", "times", "tkill", "truncate",
        "umask", "uname", "unlink", "unlinkat", "utime", "utimensat", "utimes", "vfork", "vmsplice", "wait4",
        "waitid", "write", "writev",
    ]

    static let setIDBits: UInt64 = 0o6000 // S_ISUID | S_ISGID

    /// Calls that set a file's mode, with the index of their mode argument. They are allowed
    /// only without the set-user-ID and set-group-ID bits: a worker writing an rw volume as the
    /// directory's owner (root, say) must not leave a set-ID file that host users could run
    /// (the worker's own mounts are nosuid; the host's view of the volume is not).
    static let modeArguments: [(String, Int)] = [
        ("chmod", 1), ("fchmod", 1), ("fchmodat", 2), ("creat", 1), ("open", 2), ("openat", 3),
        ("mkdir", 1), ("mkdirat", 2), ("mknod", 1), ("mknodat", 2),
    ]

    /// Rules with argument conditions; calls not matched fall to the default (notify).
    public static var conditionalRules: [Rule] {
        var rules: [Rule] = []
        for (name, argument) in modeArguments {
            rules.append(Rule(name, .allow, [Comparison(argument: argument, .maskedEqual(mask: setIDBits), 0)]))
        }
        // Threads and processes, never new namespaces.
        rules.append(Rule("clone", .allow, [Comparison(argument: 0, .maskedEqual(mask: namespaceCloneFlags), 0)]))
        // clone3 passes its flags in memory a filter cannot read: report it as
        // missing so glibc falls back to clone, whose flags are checked above.
        rules.append(Rule("clone3", .errno(ENOSYS)))
        // Terminal injection, with the 32-bit truncation of the request closed.
        rules += allowUnless32("ioctl", argument: 1, excluded: [TIOCSTI, TIOCLINUX])
        // Socket families: Unix, IPv4, IPv6, and netlink only for routing queries.
        for family in [AF_UNIX, AF_INET, AF_INET6] {
            rules.append(Rule("socket", .allow, [Comparison(argument: 0, .maskedEqual(mask: 0xFFFF_FFFF), family)]))
        }
        rules.append(Rule("socket", .allow, [
            Comparison(argument: 0, .maskedEqual(mask: 0xFFFF_FFFF), AF_NETLINK),
            Comparison(argument: 2, .maskedEqual(mask: 0xFFFF_FFFF), NETLINK_ROUTE),
        ]))
        rules.append(Rule("socketpair", .allow, [Comparison(argument: 0, .maskedEqual(mask: 0xFFFF_FFFF), AF_UNIX)]))
        // personality: only the values Docker allows (Linux, PER_LINUX32, UNAME26, query).
        for persona: UInt64 in [0x0, 0x8, 0x20000, 0xFFFF_FFFF] {
            rules.append(Rule("personality", .allow, [Comparison(argument: 0, .maskedEqual(mask: 0xFFFF_FFFF), persona)]))
        }
        return rules
    }

    /// Answered ENOSYS (after notification), so that callers fall back to
    /// plain reads and writes: io_uring bypasses per-call filtering, and Linux
    /// AIO contexts come from one host-wide pool (`fs.aio-max-nr`) that no
    /// cgroup bounds, so one worker could take every context of the host.
    /// A profile that needs them allows them by name (`seccomp.allow`). `openat2` passes its
    /// mode in memory the filter cannot read (see `modeArguments`): callers fall back to `openat`.
    public static let unsupportedSyscalls = [
        "openat2",
        "io_uring_setup", "io_uring_enter", "io_uring_register",
        "io_setup", "io_submit", "io_getevents", "io_pgetevents", "io_cancel", "io_destroy",
    ]

    /// The default policy, adjusted by a profile's `allow`, `deny` and `onViolation`.
    public static func stockadeDefault(allow extraAllow: [String] = [], deny: [String] = [], killOnViolation: Bool = false) -> SeccompPolicy {
        let denied = Set(deny)
        var rules: [Rule] = []
        for name in allowedSyscalls + extraAllow where !denied.contains(name) {
            rules.append(Rule(name, .allow))
        }
        let unconditional = Set(rules.map(\.syscall))
        rules += conditionalRules.filter { !denied.contains($0.syscall) && !unconditional.contains($0.syscall) }
        var errnos: [String: Int32] = [:]
        for name in unsupportedSyscalls { errnos[name] = ENOSYS }
        return SeccompPolicy(defaultAction: .notify, badArchAction: .notify, rules: rules, notifyErrno: errnos,
                             killOnViolation: killOnViolation, killOnForeignArchitecture: true)
    }
}
