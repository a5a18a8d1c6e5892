import CSeccomp
import Glibc
import StockadePolicy
import Synchronization

/// A compiled classic-BPF seccomp program, ready for the child to install.
public struct SeccompProgram: Sendable, Equatable {
    /// `struct sock_filter` entries, 8 bytes each, native byte order.
    public let bytes: [UInt8]

    public var instructionCount: Int { bytes.count / 8 }
}

/// Compiles a `SeccompPolicy` to BPF with libseccomp, in the supervisor, before
/// any clone: the child only installs the bytes.
public enum SeccompCompiler {
    // libseccomp's action values (function-like macros in seccomp.h).
    static let actAllow: UInt32 = 0x7FFF_0000
    static let actNotify: UInt32 = 0x7FC0_0000
    static let actKillProcess: UInt32 = 0x8000_0000
    static func actErrno(_ e: Int32) -> UInt32 { 0x0005_0000 | (UInt32(bitPattern: e) & 0xFFFF) }

    static func action(_ a: SeccompPolicy.Action) -> UInt32 {
        switch a {
        case .allow: actAllow
        case .notify: actNotify
        case .killProcess: actKillProcess
        case .errno(let e): actErrno(e)
        }
    }

    /// The syscall number of `name` on the native architecture, nil if libseccomp does not know it.
    public static func syscallNumber(_ name: String) -> Int32? {
        let nr = seccomp_syscall_resolve_name(name)
        return nr == __NR_SCMP_ERROR ? nil : nr
    }

    /// The name of syscall `number` on the native architecture.
    public static func syscallName(_ number: Int32) -> String? {
        guard let cName = seccomp_syscall_resolve_num_arch(UInt32(SCMP_ARCH_NATIVE), number) else { return nil }
        defer { free(cName) }
        return String(cString: cName)
    }

    /// The last few policies compiled by this process: a batch of runs under
    /// one profile compiles its filter once (about 2 ms each).
    private static let cache = Mutex(RecentlyUsed<SeccompPolicy, SeccompProgram>(capacity: 8))

    /// `disk`: where compiled programs are kept between processes (`SeccompDiskCache`); looked in
    /// when this process has not compiled `policy` yet, and written after a compile.
    public static func compile(_ policy: SeccompPolicy, disk: SeccompDiskCache? = nil) throws(LinuxError) -> SeccompProgram {
        if let hit = cache.withLock({ $0.value(for: policy) }) { return hit }
        let key = disk == nil ? nil : SeccompDiskCache.key(policy)
        let program: SeccompProgram
        if let disk, let key, let stored = disk.load(key) {
            program = stored
        } else {
            program = try compileUncached(policy)
            if let disk, let key { disk.store(key, program) }
        }
        cache.withLock { _ = $0.insert(policy, program) }
        return program
    }

    static func compileUncached(_ policy: SeccompPolicy) throws(LinuxError) -> SeccompProgram {
        guard let ctx = seccomp_init(action(policy.defaultAction)) else {
            throw LinuxError(.seccomp, stage: .seccomp, "libseccomp could not create a filter context")
        }
        defer { seccomp_release(ctx) }
        try check(seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, action(policy.badArchAction)), "set the foreign-architecture action")
        // A binary tree of syscall numbers keeps a 300-rule allowlist cheap per call.
        try check(seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2), "enable binary-tree optimisation")

        for rule in policy.rules where rule.action != policy.defaultAction {
            guard let nr = syscallNumber(rule.syscall) else {
                throw LinuxError(.seccomp, stage: .seccomp, "unknown syscall name \(rule.syscall)")
            }
            var comparisons = rule.comparisons.map { c -> scmp_arg_cmp in
                var cmp = scmp_arg_cmp()
                cmp.arg = UInt32(c.argument)
                cmp.datum_a = c.value
                switch c.op {
                case .equal: cmp.op = SCMP_CMP_EQ
                case .notEqual: cmp.op = SCMP_CMP_NE
                case .less: cmp.op = SCMP_CMP_LT
                case .lessOrEqual: cmp.op = SCMP_CMP_LE
                case .greater: cmp.op = SCMP_CMP_GT
                case .greaterOrEqual: cmp.op = SCMP_CMP_GE
                case .maskedEqual(let mask):
                    cmp.op = SCMP_CMP_MASKED_EQ
                    cmp.datum_a = mask
                    cmp.datum_b = c.value
                }
                return cmp
            }
            let rc = comparisons.withUnsafeMutableBufferPointer { buffer in
                seccomp_rule_add_exact_array(ctx, action(rule.action), nr, UInt32(buffer.count), buffer.baseAddress)
            }
            // -EEXIST: the same rule again (e.g. a profile allow of an allowed call).
            if rc != 0 && rc != -EEXIST {
                throw LinuxError(.seccomp, stage: .seccomp, errno: -rc, "libseccomp refused the rule for \(rule.syscall)")
            }
        }

        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else {
            throw LinuxError(.seccomp, stage: .seccomp, errno: errno, "could not create a pipe to export the filter")
        }
        defer { close(fds[0]) }
        let rc = seccomp_export_bpf(ctx, fds[1])
        close(fds[1])
        try check(rc, "export the filter as BPF")
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fds[0], $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            bytes += chunk[0..<n]
        }
        guard !bytes.isEmpty, bytes.count % 8 == 0, bytes.count / 8 <= 4096 else {
            throw LinuxError(.seccomp, stage: .seccomp, "the exported filter has an invalid size of \(bytes.count) bytes")
        }
        return SeccompProgram(bytes: bytes)
    }

    private static func check(_ rc: Int32, _ what: String) throws(LinuxError) {
        if rc != 0 { throw LinuxError(.seccomp, stage: .seccomp, errno: -rc, "libseccomp could not \(what)") }
    }
}
