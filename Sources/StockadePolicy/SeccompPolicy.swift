/// A seccomp policy as values: what the filter does with each system call.
/// `StockadeLinux.SeccompCompiler` turns it into BPF with libseccomp.
public struct SeccompPolicy: Sendable, Equatable {
    public enum Action: Sendable, Equatable, Hashable {
        case allow
        /// Fails the call with this errno without telling the supervisor. Only
        /// for capability probes such as `clone3`, whose callers fall back.
        case errno(Int32)
        /// Stops the call and asks the supervisor, which records a violation and
        /// answers with an errno (or kills the worker): every denial is visible.
        case notify
        /// The kernel kills the process at once.
        case killProcess
    }

    public enum Operator: Sendable, Equatable, Hashable {
        case equal, notEqual, less, lessOrEqual, greater, greaterOrEqual
        /// `(arg & mask) == value`
        case maskedEqual(mask: UInt64)
    }

    public struct Comparison: Sendable, Equatable, Hashable {
        public var argument: Int
        public var op: Operator
        public var value: UInt64
        public init(argument: Int, _ op: Operator, _ value: UInt64) {
            self.argument = argument
            self.op = op
            self.value = value
        }
    }

    public struct Rule: Sendable, Equatable {
        public var syscall: String
        public var action: Action
        /// All must hold (logical and). Rules for the same call are alternatives.
        public var comparisons: [Comparison]
        public init(_ syscall: String, _ action: Action, _ comparisons: [Comparison] = []) {
            self.syscall = syscall
            self.action = action
            self.comparisons = comparisons
        }
    }

    public var defaultAction: Action
    /// What a call made through a foreign architecture (i386 `int $0x80`, x32) gets.
    public var badArchAction: Action
    public var rules: [Rule]
    /// The errno the supervisor answers a notified call with, by syscall name; EPERM otherwise.
    public var notifyErrno: [String: Int32]
    /// Notified calls the supervisor answers by killing the worker (outcome `seccomp`).
    public var killOnViolation: Bool
    /// A foreign-architecture call always kills the worker.
    public var killOnForeignArchitecture: Bool

    public init(defaultAction: Action, badArchAction: Action, rules: [Rule], notifyErrno: [String: Int32] = [:],
                killOnViolation: Bool = false, killOnForeignArchitecture: Bool = true) {
        self.defaultAction = defaultAction
        self.badArchAction = badArchAction
        self.rules = rules
        self.notifyErrno = notifyErrno
        self.killOnViolation = killOnViolation
        self.killOnForeignArchitecture = killOnForeignArchitecture
    }

    /// Whether the filter can emit user notifications (and so needs a listener).
    public var usesNotifications: Bool {
        defaultAction == .notify || badArchAction == .notify || rules.contains { $0.action == .notify }
    }

    /// Rules that allow `syscall` only when the low 32 bits of `argument` are
    /// none of `excluded`. Kernels truncate `int`/`unsigned int` arguments
    /// (`ioctl`'s request, `socket`'s domain) to 32 bits, so a filter comparing
    /// all 64 would let `0x1_0000_5412` through as `TIOCSTI`; and libseccomp can
    /// express neither "not equal under a mask" nor two tests of one argument,
    /// so the complement is covered by masked-equality patterns.
    public static func allowUnless32(_ syscall: String, argument: Int, excluded: [UInt32], also: [Comparison] = []) -> [Rule] {
        coverComplement(excluded: Set(excluded)).map { pattern in
            Rule(syscall, .allow, also + [Comparison(argument: argument, .maskedEqual(mask: UInt64(pattern.mask)), UInt64(pattern.value))])
        }
    }

    /// Masked patterns whose union is exactly the 32-bit values not in `excluded`.
    public static func coverComplement(excluded: Set<UInt32>) -> [(mask: UInt32, value: UInt32)] {
        var out: [(mask: UInt32, value: UInt32)] = []
        func split(_ values: [UInt32], bit: Int, mask: UInt32, prefix: UInt32) {
            if values.isEmpty {
                out.append((mask, prefix))
                return
            }
            if bit < 0 { return }
            let b = UInt32(1) << UInt32(bit)
            split(values.filter { $0 & b == 0 }, bit: bit - 1, mask: mask | b, prefix: prefix)
            split(values.filter { $0 & b != 0 }, bit: bit - 1, mask: mask | b, prefix: prefix | b)
        }
        split(Array(excluded), bit: 31, mask: 0, prefix: 0)
        return out
    }
}
