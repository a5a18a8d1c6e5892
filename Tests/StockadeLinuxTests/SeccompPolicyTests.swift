import Testing
import StockadePolicy
@testable import StockadeLinux

/// Evaluates the compiled default filter the way the kernel would.
@Suite("the default seccomp filter")
struct SeccompFilterTests {
    static let program: SeccompProgram = {
        do { return try SeccompCompiler.compile(.stockadeDefault()) } catch { fatalError("\(error)") }
    }()
    static let allow: UInt32 = 0x7FFF_0000
    static let notify: UInt32 = 0x7FC0_0000

    func verdict(_ name: String, args: [UInt64] = [], arch: UInt32 = BPFInterpreter.auditArchX86_64) throws -> UInt32 {
        let nr = try #require(SeccompCompiler.syscallNumber(name), "\(name) resolves")
        return try BPFInterpreter(Self.program).evaluate(arch: arch, nr: nr, args: args)
    }

    @Test("every name in the built-in allowlist is a syscall libseccomp knows")
    func namesResolve() {
        for name in SeccompPolicy.allowedSyscalls + SeccompPolicy.unsupportedSyscalls {
            #expect(SeccompCompiler.syscallNumber(name) != nil, "\(name)")
        }
    }

    @Test("ordinary calls are allowed", arguments: ["read", "write", "openat", "execve", "exit_group", "mmap", "futex", "wait4"])
    func allowed(name: String) throws {
        #expect(try verdict(name) == Self.allow)
    }

    @Test("dangerous calls are notified to the supervisor", arguments: [
        "keyctl", "add_key", "request_key", "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2",
        "pivot_root", "chroot", "unshare", "setns", "bpf", "perf_event_open", "userfaultfd", "open_by_handle_at",
        "init_module", "finit_module", "delete_module", "kexec_load", "clock_settime", "settimeofday", "sethostname",
        "swapon", "reboot", "acct", "io_uring_setup", "io_uring_enter", "open_tree", "move_mount", "fsopen",
    ])
    func notified(name: String) throws {
        #expect(try verdict(name) == Self.notify)
    }

    @Test("clone3 reports ENOSYS so callers fall back to clone, whose flags are checked")
    func clone3() throws {
        #expect(try verdict("clone3") == 0x0005_0000 | 38)
    }

    @Test("clone is allowed for threads and refused with any namespace flag")
    func cloneFlags() throws {
        let thread: UInt64 = 0x003D_0F00 // CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|PARENT_SETTID|CHILD_CLEARTID
        #expect(try verdict("clone", args: [thread]) == Self.allow)
        for flag: UInt64 in [0x1000_0000, 0x2000_0000, 0x0002_0000, 0x0400_0000, 0x0800_0000, 0x4000_0000, 0x0200_0000] {
            #expect(try verdict("clone", args: [thread | flag]) == Self.notify, "flag \(String(flag, radix: 16))")
        }
    }

    @Test("TIOCSTI and TIOCLINUX are refused even with the high 32 bits set; other ioctls pass")
    func ioctlTruncation() throws {
        for request: UInt64 in [0x5412, 0x541C, 0x1_0000_5412, 0xFFFF_FFFF_0000_541C] {
            #expect(try verdict("ioctl", args: [0, request]) == Self.notify, "request \(String(request, radix: 16))")
        }
        for request: UInt64 in [0x541B /* FIONREAD */, 0x5401 /* TCGETS */, 0x5413, 0x5411, 0x1_0000_541B] {
            #expect(try verdict("ioctl", args: [0, request]) == Self.allow, "request \(String(request, radix: 16))")
        }
    }

    @Test("socket families outside the allowlist are refused, with the domain truncated to 32 bits")
    func socketFamilies() throws {
        #expect(try verdict("socket", args: [2, 1, 0]) == Self.allow)       // AF_INET
        #expect(try verdict("socket", args: [1, 1, 0]) == Self.allow)       // AF_UNIX
        #expect(try verdict("socket", args: [16, 3, 0]) == Self.allow)      // AF_NETLINK, NETLINK_ROUTE
        #expect(try verdict("socket", args: [16, 3, 9]) == Self.notify)     // NETLINK_AUDIT
        #expect(try verdict("socket", args: [40, 1, 0]) == Self.notify)     // AF_VSOCK
        #expect(try verdict("socket", args: [17, 3, 0]) == Self.notify)     // AF_PACKET
        #expect(try verdict("socket", args: [38, 5, 0]) == Self.notify)     // AF_ALG
        #expect(try verdict("socket", args: [0x1_0000_0002, 1, 0]) == Self.allow) // truncates to AF_INET: harmless
    }

    @Test("personality accepts only the values Docker allows")
    func personality() throws {
        #expect(try verdict("personality", args: [0]) == Self.allow)
        #expect(try verdict("personality", args: [0xFFFF_FFFF]) == Self.allow)
        #expect(try verdict("personality", args: [0x0040000]) == Self.notify) // ADDR_NO_RANDOMIZE
    }

    @Test("a foreign architecture is sent to the supervisor, which kills")
    func foreignArchitecture() throws {
        let interpreter = BPFInterpreter(Self.program)
        #expect(try interpreter.evaluate(arch: BPFInterpreter.auditArchI386, nr: 288) == Self.notify) // i386 keyctl
        #expect(try interpreter.evaluate(arch: BPFInterpreter.auditArchI386, nr: 3) == Self.notify)   // i386 read
        #expect(try interpreter.evaluate(arch: 0xC000_00B7, nr: 63) == Self.notify)                  // aarch64
    }

    @Test("x32 syscall numbers never reach the allowlist")
    func x32() throws {
        let interpreter = BPFInterpreter(Self.program)
        // x32 read, write, getpid: allowed as x86_64 numbers, refused with the x32 bit.
        for nr: Int32 in [0, 1, 39] {
            #expect(try interpreter.evaluate(arch: BPFInterpreter.auditArchX86_64, nr: nr) == Self.allow)
            let verdict = try interpreter.evaluate(arch: BPFInterpreter.auditArchX86_64, nr: nr | BPFInterpreter.x32SyscallBit)
            #expect(verdict != Self.allow, "x32 nr \(nr)")
        }
    }

    @Test("a profile's deny removes a call from the allowlist and its allow adds one")
    func profileAdjustments() throws {
        let program = try SeccompCompiler.compile(.stockadeDefault(allow: ["keyctl"], deny: ["uname"]))
        let interpreter = BPFInterpreter(program)
        #expect(try interpreter.evaluate(arch: BPFInterpreter.auditArchX86_64, nr: try #require(SeccompCompiler.syscallNumber("keyctl"))) == Self.allow)
        #expect(try interpreter.evaluate(arch: BPFInterpreter.auditArchX86_64, nr: try #require(SeccompCompiler.syscallNumber("uname"))) == Self.notify)
    }

    static let linuxAIO = ["io_setup", "io_submit", "io_getevents", "io_pgetevents", "io_cancel", "io_destroy"]

    @Test("Linux AIO is notified and answered ENOSYS by default, and allowed by a profile that names it")
    func linuxAIO() throws {
        let policy = SeccompPolicy.stockadeDefault()
        for name in Self.linuxAIO {
            #expect(try verdict(name) == Self.notify, "\(name)")
            #expect(policy.notifyErrno[name] == 38, "\(name) answered ENOSYS")
        }
        let allowing = BPFInterpreter(try SeccompCompiler.compile(.stockadeDefault(allow: Self.linuxAIO)))
        for name in Self.linuxAIO {
            let nr = try #require(SeccompCompiler.syscallNumber(name))
            #expect(try allowing.evaluate(arch: BPFInterpreter.auditArchX86_64, nr: nr) == Self.allow, "\(name)")
        }
    }

    @Test("an unknown syscall name is an error naming it")
    func unknownName() {
        let policy = SeccompPolicy(defaultAction: .notify, badArchAction: .notify, rules: [.init("no_such_call", .allow)])
        #expect(throws: LinuxError.self) { try SeccompCompiler.compile(policy) }
        do {
            _ = try SeccompCompiler.compile(policy)
        } catch {
            #expect(error.message.contains("no_such_call"))
        }
    }
}

@Suite("masked complement cover")
struct ComplementCoverTests {
    @Test("the patterns match exactly the values that are not excluded", arguments: [
        [UInt32](), [0x5412], [0x5412, 0x541C], [0, 0xFFFF_FFFF], [1, 2, 3, 0x8000_0000],
    ])
    func exact(excluded: [UInt32]) {
        let cover = SeccompPolicy.coverComplement(excluded: Set(excluded))
        func matches(_ v: UInt32) -> Bool { cover.contains { v & $0.mask == $0.value } }
        for v in excluded { #expect(!matches(v), "excluded \(v)") }
        var samples: [UInt32] = [0, 1, 0x5411, 0x5413, 0x541B, 0x541D, 0xFFFF_FFFF, 0x8000_0000, 0x7FFF_FFFF]
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2000 { samples.append(UInt32.random(in: 0...UInt32.max, using: &rng)) }
        for v in samples where !excluded.contains(v) { #expect(matches(v), "value \(v)") }
        #expect(cover.count <= 32 * max(excluded.count, 1))
    }
}
