/// Imports a Docker/OCI seccomp profile (the JSON format of moby's
/// `profiles/seccomp/default.json`) as a `SeccompPolicy`, keeping Stockade's
/// visibility rules:
///
/// - `SCMP_ACT_ERRNO` becomes `.notify`, answered with the rule's `errnoRet`
///   (recorded in `notifyErrno`): a silent EPERM cannot be audited, a notified
///   one is recorded as a violation and answered the same way. The one
///   exception is `clone3` answered `ENOSYS`, the capability probe glibc makes
///   before falling back to `clone` (whose flags the filter can check): it
///   stays a silent `.errno(ENOSYS)`, as in Stockade's default policy.
/// - `SCMP_ACT_TRAP` and `SCMP_ACT_NOTIFY` become `.notify` answered EPERM;
///   `SCMP_ACT_TRACE` becomes `.notify` answered ENOSYS (what the kernel
///   answers when no tracer is attached).
/// - `SCMP_ACT_KILL`, `SCMP_ACT_KILL_THREAD` and `SCMP_ACT_KILL_PROCESS`
///   become `.killProcess` (the whole process, never one thread).
/// - `SCMP_ACT_LOG` becomes `.allow` (the kernel's log is not Stockade's audit).
/// - Foreign architectures always kill, whatever `architectures` lists: the
///   list must name `SCMP_ARCH_X86_64`; other entries are accepted and unused.
/// - A rule's `includes`/`excludes` are evaluated for this host: `arches`
///   against x86_64 (`amd64`), `caps` against the worker's capabilities (it
///   has none, so `includes.caps` rules never apply and `excludes.caps` rules
///   always do), `minKernel` against the running kernel.
/// - Several `args` on the same index become alternatives (one rule each), as
///   runc does; otherwise all of a rule's `args` must hold.
/// - `flags` are accepted and ignored; `listenerPath` is refused (Stockade is
///   the listener of its own notifications).
///
/// Unknown keys, actions, operators and syscall names are errors naming the
/// place in the file, e.g. `syscalls[3].names[1]: unknown syscall "foo"`.
public enum DockerSeccomp {
    /// What the import needs to know about the machine; StockadePolicy does no
    /// syscalls, so `StockadeLinux` supplies the libseccomp lookups.
    public struct Host: Sendable {
        /// Whether libseccomp knows `name` on the native architecture.
        public var syscallExists: @Sendable (String) -> Bool
        /// Every syscall name of the native architecture (to answer a non-EPERM
        /// `defaultErrnoRet` for calls no rule names).
        public var syscallNames: @Sendable () -> [String]
        /// The running kernel's (major, minor), for `minKernel`.
        public var kernel: (major: Int, minor: Int)

        public init(syscallExists: @escaping @Sendable (String) -> Bool, syscallNames: @escaping @Sendable () -> [String],
                    kernel: (major: Int, minor: Int)) {
            self.syscallExists = syscallExists
            self.syscallNames = syscallNames
            self.kernel = kernel
        }
    }

    static let EPERM: Int32 = 1
    static let ENOSYS: Int32 = 38

    /// Every `SCMP_ARCH_*` name libseccomp defines.
    static let architectureNames: Set<String> = [
        "SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_ARM", "SCMP_ARCH_AARCH64",
        "SCMP_ARCH_LOONGARCH64", "SCMP_ARCH_M68K", "SCMP_ARCH_MIPS", "SCMP_ARCH_MIPS64", "SCMP_ARCH_MIPS64N32",
        "SCMP_ARCH_MIPSEL", "SCMP_ARCH_MIPSEL64", "SCMP_ARCH_MIPSEL64N32", "SCMP_ARCH_PPC", "SCMP_ARCH_PPC64",
        "SCMP_ARCH_PPC64LE", "SCMP_ARCH_S390", "SCMP_ARCH_S390X", "SCMP_ARCH_PARISC", "SCMP_ARCH_PARISC64",
        "SCMP_ARCH_RISCV64", "SCMP_ARCH_SHEB", "SCMP_ARCH_SH",
    ]
    /// Names `includes.arches`/`excludes.arches` use for this machine (Go's and the kernel's).
    static let nativeArchNames: Set<String> = ["amd64", "x86_64", "SCMP_ARCH_X86_64"]
    static let filterFlags: Set<String> = [
        "SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
        "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV", "SECCOMP_FILTER_FLAG_NEW_LISTENER", "SECCOMP_FILTER_FLAG_TSYNC_ESRCH",
    ]

    /// A Docker action as Stockade will apply it.
    struct Mapped {
        var action: SeccompPolicy.Action
        /// The errno a notified call is answered with.
        var errno: Int32?
    }

    /// The policy a Docker seccomp document describes. `field` is the profile
    /// field every issue is reported under (`seccomp.dockerProfile`).
    public static func policy(from document: JSONValue, host: Host, field: String = "seccomp.dockerProfile",
                              killOnViolation: Bool = false) throws(ProfileError) -> SeccompPolicy {
        var importer = Importer(host: host, field: field)
        let policy = importer.run(document, killOnViolation: killOnViolation)
        guard let policy, importer.issues.isEmpty else {
            throw ProfileError(source: nil, issues: importer.issues)
        }
        return policy
    }

    struct Importer {
        let host: Host
        let field: String
        var issues: [ProfileIssue] = []

        init(host: Host, field: String) {
            self.host = host
            self.field = field
        }

        mutating func fail(_ path: String, _ reason: String) {
            issues.append(ProfileIssue(field, path.isEmpty ? reason : "\(path): \(reason)"))
        }

        mutating func object(_ value: JSONValue, _ path: String, keys: Set<String>) -> [String: JSONValue]? {
            guard let o = value.object else {
                fail(path, "expected an object, found \(value.typeName)")
                return nil
            }
            for key in o.keys.sorted() where !keys.contains(key) {
                fail(path.isEmpty ? key : "\(path).\(key)", "unknown key (known keys: \(keys.sorted().joined(separator: ", ")))")
            }
            return o
        }

        mutating func strings(_ value: JSONValue, _ path: String) -> [String] {
            guard let items = value.array else {
                fail(path, "expected an array of strings, found \(value.typeName)")
                return []
            }
            var out: [String] = []
            for (i, item) in items.enumerated() {
                if let s = item.string { out.append(s) } else { fail("\(path)[\(i)]", "expected a string, found \(item.typeName)") }
            }
            return out
        }

        /// A whole number from its literal text (StrictJSON keeps it exact), up to `max`.
        mutating func unsigned(_ value: JSONValue, _ path: String, max: UInt64) -> UInt64? {
            guard case .number(let text) = value, let n = UInt64(text), n <= max else {
                fail(path, "expected a whole number from 0 to \(max)")
                return nil
            }
            return n
        }

        mutating func action(_ value: JSONValue, _ path: String, errnoRet: Int32?) -> Mapped? {
            guard let name = value.string else {
                fail(path, "expected an action name such as \"SCMP_ACT_ERRNO\", found \(value.typeName)")
                return nil
            }
            switch name {
            case "SCMP_ACT_ALLOW", "SCMP_ACT_LOG": return Mapped(action: .allow)
            case "SCMP_ACT_ERRNO": return Mapped(action: .notify, errno: errnoRet ?? DockerSeccomp.EPERM)
            case "SCMP_ACT_TRAP", "SCMP_ACT_NOTIFY": return Mapped(action: .notify, errno: DockerSeccomp.EPERM)
            case "SCMP_ACT_TRACE": return Mapped(action: .notify, errno: DockerSeccomp.ENOSYS)
            case "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS": return Mapped(action: .killProcess)
            default:
                fail(path, "unknown action \"\(name)\" (known: SCMP_ACT_ALLOW, SCMP_ACT_ERRNO, SCMP_ACT_KILL, SCMP_ACT_KILL_PROCESS, SCMP_ACT_KILL_THREAD, SCMP_ACT_TRAP, SCMP_ACT_TRACE, SCMP_ACT_LOG, SCMP_ACT_NOTIFY)")
                return nil
            }
        }

        mutating func errnoValue(_ value: JSONValue?, _ path: String) -> Int32? {
            guard let value else { return nil }
            return unsigned(value, path, max: 4095).map { Int32($0) }
        }

        mutating func architectures(_ root: [String: JSONValue]) {
            var names: [String] = []
            if let v = root["architectures"] {
                for (i, name) in strings(v, "architectures").enumerated() {
                    if DockerSeccomp.architectureNames.contains(name) { names.append(name) } else {
                        fail("architectures[\(i)]", "unknown architecture \"\(name)\"")
                    }
                }
            }
            if let v = root["archMap"] {
                guard let entries = v.array else {
                    fail("archMap", "expected an array, found \(v.typeName)")
                    return
                }
                for (i, entry) in entries.enumerated() {
                    let path = "archMap[\(i)]"
                    guard let o = object(entry, path, keys: ["architecture", "subArchitectures"]) else { continue }
                    if let a = o["architecture"] {
                        if let name = a.string, DockerSeccomp.architectureNames.contains(name) { names.append(name) } else {
                            fail("\(path).architecture", "unknown architecture \(a.string.map { "\"\($0)\"" } ?? a.typeName)")
                        }
                    }
                    if let s = o["subArchitectures"] {
                        for (j, name) in strings(s, "\(path).subArchitectures").enumerated() {
                            if DockerSeccomp.architectureNames.contains(name) { names.append(name) } else {
                                fail("\(path).subArchitectures[\(j)]", "unknown architecture \"\(name)\"")
                            }
                        }
                    }
                }
            }
            if !names.isEmpty && !names.contains("SCMP_ARCH_X86_64") {
                fail("architectures", "does not include SCMP_ARCH_X86_64, the architecture Stockade runs workers on")
            }
        }

        /// Whether a rule's includes/excludes let it apply on this host to a worker without capabilities.
        mutating func applies(_ entry: [String: JSONValue], _ path: String) -> Bool {
            var applies = true
            if let v = entry["includes"], let o = object(v, "\(path).includes", keys: ["arches", "caps", "minKernel"]) {
                if let a = o["arches"] {
                    let arches = strings(a, "\(path).includes.arches")
                    if !arches.isEmpty && DockerSeccomp.nativeArchNames.isDisjoint(with: arches) { applies = false }
                }
                // The worker holds no capabilities: a rule for holders of some never applies.
                if let c = o["caps"], !strings(c, "\(path).includes.caps").isEmpty { applies = false }
                if let k = o["minKernel"] {
                    if let version = k.string.flatMap(DockerSeccomp.kernelVersion) {
                        if (host.kernel.major, host.kernel.minor) < version { applies = false }
                    } else {
                        fail("\(path).includes.minKernel", "expected a kernel version such as \"4.8\"")
                    }
                }
            }
            if let v = entry["excludes"], let o = object(v, "\(path).excludes", keys: ["arches", "caps", "minKernel"]) {
                if let a = o["arches"], !DockerSeccomp.nativeArchNames.isDisjoint(with: strings(a, "\(path).excludes.arches")) {
                    applies = false
                }
                // Excluding holders of a capability excludes nobody here: the worker holds none.
                if let c = o["caps"] { _ = strings(c, "\(path).excludes.caps") }
                if let k = o["minKernel"] {
                    if let version = k.string.flatMap(DockerSeccomp.kernelVersion) {
                        if (host.kernel.major, host.kernel.minor) >= version { applies = false }
                    } else {
                        fail("\(path).excludes.minKernel", "expected a kernel version such as \"4.8\"")
                    }
                }
            }
            return applies
        }

        mutating func comparisons(_ value: JSONValue, _ path: String) -> [SeccompPolicy.Comparison] {
            guard let items = value.array else {
                fail(path, "expected an array, found \(value.typeName)")
                return []
            }
            var out: [SeccompPolicy.Comparison] = []
            for (i, item) in items.enumerated() {
                let p = "\(path)[\(i)]"
                guard let o = object(item, p, keys: ["index", "value", "valueTwo", "op"]) else { continue }
                guard let iv = o["index"], let index = unsigned(iv, "\(p).index", max: 5) else {
                    if o["index"] == nil { fail("\(p).index", "is required") }
                    continue
                }
                guard let vv = o["value"], let value = unsigned(vv, "\(p).value", max: UInt64.max) else {
                    if o["value"] == nil { fail("\(p).value", "is required") }
                    continue
                }
                var two: UInt64 = 0
                if let t = o["valueTwo"] {
                    guard let v = unsigned(t, "\(p).valueTwo", max: UInt64.max) else { continue }
                    two = v
                }
                guard let opValue = o["op"], let op = opValue.string else {
                    fail("\(p).op", o["op"] == nil ? "is required" : "expected a string such as \"SCMP_CMP_EQ\"")
                    continue
                }
                let argument = Int(index)
                switch op {
                case "SCMP_CMP_EQ": out.append(.init(argument: argument, .equal, value))
                case "SCMP_CMP_NE": out.append(.init(argument: argument, .notEqual, value))
                case "SCMP_CMP_LT": out.append(.init(argument: argument, .less, value))
                case "SCMP_CMP_LE": out.append(.init(argument: argument, .lessOrEqual, value))
                case "SCMP_CMP_GT": out.append(.init(argument: argument, .greater, value))
                case "SCMP_CMP_GE": out.append(.init(argument: argument, .greaterOrEqual, value))
                // Docker's MASKED_EQ: `value` is the mask, `valueTwo` what the masked argument must equal.
                case "SCMP_CMP_MASKED_EQ": out.append(.init(argument: argument, .maskedEqual(mask: value), two))
                default:
                    fail("\(p).op", "unknown operator \"\(op)\" (known: SCMP_CMP_EQ, SCMP_CMP_NE, SCMP_CMP_LT, SCMP_CMP_LE, SCMP_CMP_GT, SCMP_CMP_GE, SCMP_CMP_MASKED_EQ)")
                }
            }
            return out
        }

        mutating func run(_ document: JSONValue, killOnViolation: Bool) -> SeccompPolicy? {
            let keys: Set = ["defaultAction", "defaultErrnoRet", "architectures", "archMap", "syscalls", "flags",
                             "listenerPath", "listenerMetadata"]
            guard let root = object(document, "", keys: keys) else { return nil }
            if root["listenerPath"] != nil || root["listenerMetadata"] != nil {
                fail("listenerPath", "not supported: Stockade's supervisor is the listener of every notification")
            }
            if let f = root["flags"] {
                for (i, flag) in strings(f, "flags").enumerated() where !DockerSeccomp.filterFlags.contains(flag) {
                    fail("flags[\(i)]", "unknown filter flag \"\(flag)\"")
                }
            }
            architectures(root)
            let defaultErrno = errnoValue(root["defaultErrnoRet"], "defaultErrnoRet")
            guard let d = root["defaultAction"] else {
                fail("defaultAction", "is required")
                return nil
            }
            guard let defaultMapped = action(d, "defaultAction", errnoRet: defaultErrno) else { return nil }

            var rules: [SeccompPolicy.Rule] = []
            var errnos: [String: (value: Int32, path: String)] = [:]
            if let s = root["syscalls"] {
                guard let entries = s.array else {
                    fail("syscalls", "expected an array, found \(s.typeName)")
                    return nil
                }
                for (i, entry) in entries.enumerated() {
                    let path = "syscalls[\(i)]"
                    let ruleKeys: Set = ["names", "name", "action", "args", "errnoRet", "comment", "includes", "excludes"]
                    guard let o = object(entry, path, keys: ruleKeys) else { continue }
                    var names: [(name: String, path: String)] = []
                    if let n = o["names"] {
                        names += strings(n, "\(path).names").enumerated().map { ($0.element, "\(path).names[\($0.offset)]") }
                    }
                    if let n = o["name"] {
                        if let name = n.string { names.append((name, "\(path).name")) } else { fail("\(path).name", "expected a string") }
                    }
                    if o["names"] == nil && o["name"] == nil { fail("\(path).names", "is required") }
                    let errnoRet = errnoValue(o["errnoRet"], "\(path).errnoRet")
                    guard let a = o["action"] else {
                        fail("\(path).action", "is required")
                        continue
                    }
                    guard let mapped = action(a, "\(path).action", errnoRet: errnoRet) else { continue }
                    if errnoRet != nil, let name = a.string, name != "SCMP_ACT_ERRNO" {
                        fail("\(path).errnoRet", "only applies to SCMP_ACT_ERRNO, not \(name)")
                    }
                    let args = o["args"].map { comparisons($0, "\(path).args") } ?? []
                    guard applies(o, path) else { continue }
                    for (name, namePath) in names {
                        guard host.syscallExists(name) else {
                            fail(namePath, "unknown syscall \"\(name)\"")
                            continue
                        }
                        var ruleAction = mapped.action
                        if let e = mapped.errno {
                            if name == "clone3" && e == DockerSeccomp.ENOSYS {
                                ruleAction = .errno(e)
                            } else if let earlier = errnos[name], earlier.value != e {
                                fail(path, "\(name) is answered errno \(earlier.value) in \(earlier.path) and \(e) here; Stockade answers each notified call with one errno")
                            } else {
                                errnos[name] = (e, path)
                            }
                        }
                        rules += DockerSeccomp.rules(name, ruleAction, args)
                    }
                }
            }
            if !issues.isEmpty { return nil }

            var notifyErrno = errnos.mapValues(\.value)
            let fallback = defaultMapped.errno ?? DockerSeccomp.EPERM
            if fallback != DockerSeccomp.EPERM {
                for name in host.syscallNames() where notifyErrno[name] == nil { notifyErrno[name] = fallback }
            }
            notifyErrno = notifyErrno.filter { $0.value != DockerSeccomp.EPERM }
            return SeccompPolicy(defaultAction: defaultMapped.action, badArchAction: .notify, rules: rules,
                                 notifyErrno: notifyErrno, killOnViolation: killOnViolation, killOnForeignArchitecture: true)
        }
    }

    /// One rule when every comparison is on its own argument (all must hold);
    /// one rule per comparison when an argument repeats (any may hold), as runc
    /// does, because libseccomp cannot test one argument twice in a rule.
    static func rules(_ name: String, _ action: SeccompPolicy.Action, _ args: [SeccompPolicy.Comparison]) -> [SeccompPolicy.Rule] {
        let indices = args.map(\.argument)
        if Set(indices).count == indices.count { return [SeccompPolicy.Rule(name, action, args)] }
        return args.map { SeccompPolicy.Rule(name, action, [$0]) }
    }

    /// "4.8" or "5.10.0" as (major, minor).
    static func kernelVersion(_ text: String) -> (Int, Int)? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count >= 2, let major = Int(parts[0]), let minor = Int(parts[1]) else { return nil }
        return (major, minor)
    }
}

extension SeccompPolicy {
    /// This policy with a profile's `allow` and `deny` lists applied: each
    /// allowed call is allowed without conditions, each denied call is notified
    /// (recorded, answered EPERM or killed per `onViolation`); deny wins.
    public func adjusted(allow: [String], deny: [String]) -> SeccompPolicy {
        var policy = self
        let denied = Set(deny)
        let allowed = Set(allow).subtracting(denied)
        policy.rules.removeAll { denied.contains($0.syscall) || allowed.contains($0.syscall) }
        var seen: Set<String> = []
        for name in allow where allowed.contains(name) && seen.insert(name).inserted {
            policy.rules.append(Rule(name, .allow))
        }
        for name in deny where seen.insert(name).inserted {
            policy.rules.append(Rule(name, .notify))
        }
        return policy
    }
}

extension Profile.Seccomp {
    /// `allow` and `deny` names libseccomp does not know, as issues.
    public func unknownNames(syscallExists: (String) -> Bool) -> [ProfileIssue] {
        var issues: [ProfileIssue] = []
        for (list, names) in [("allow", allow), ("deny", deny)] {
            for (i, name) in names.enumerated() where !syscallExists(name) {
                issues.append(ProfileIssue("seccomp.\(list)[\(i)]", "unknown syscall \"\(name)\""))
            }
        }
        return issues
    }
}
