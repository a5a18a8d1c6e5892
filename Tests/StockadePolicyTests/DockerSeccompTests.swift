import Testing
@testable import StockadePolicy

/// A small syscall table standing in for libseccomp (StockadePolicy does no syscalls).
private let table = ["read", "write", "openat", "clone", "clone3", "keyctl", "ptrace", "personality", "socket", "getpid", "mount", "capset", "ioctl"]
private let host = DockerSeccomp.Host(syscallExists: { table.contains($0) }, syscallNames: { table }, kernel: (6, 1))

private func parse(_ text: String) throws -> JSONValue {
    try StrictJSON.parse(Array(text.utf8), limits: StrictJSON.Limits(maxBytes: 1 << 20, maxDepth: 16))
}

private func issues(_ text: String) throws -> [String] {
    do {
        _ = try DockerSeccomp.policy(from: try parse(text), host: host)
        return []
    } catch let error as ProfileError {
        return error.issues.map(\.description)
    }
}

@Suite("importing a Docker seccomp profile")
struct DockerSeccompTests {
    @Test("ERRNO becomes a notification answered with its errno, so every denial stays visible")
    func errnoIsNotified() throws {
        let policy = try DockerSeccomp.policy(from: try parse("""
            {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1, "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
             "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                          {"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                          {"names": ["ptrace"], "action": "SCMP_ACT_KILL_THREAD"}]}
            """), host: host)
        #expect(policy.defaultAction == .notify)
        #expect(policy.badArchAction == .notify)
        #expect(policy.killOnForeignArchitecture)
        #expect(policy.rules.contains(SeccompPolicy.Rule("read", .allow)))
        #expect(policy.rules.contains(SeccompPolicy.Rule("keyctl", .notify)))
        #expect(policy.rules.contains(SeccompPolicy.Rule("ptrace", .killProcess)))
        #expect(policy.notifyErrno == ["keyctl": 13])
    }

    @Test("each action maps to what Stockade can see", arguments: [
        ("SCMP_ACT_ALLOW", SeccompPolicy.Action.allow, Int32?.none),
        ("SCMP_ACT_LOG", .allow, nil),
        ("SCMP_ACT_ERRNO", .notify, nil),
        ("SCMP_ACT_TRAP", .notify, nil),
        ("SCMP_ACT_NOTIFY", .notify, nil),
        ("SCMP_ACT_TRACE", .notify, 38),
        ("SCMP_ACT_KILL", .killProcess, nil),
        ("SCMP_ACT_KILL_PROCESS", .killProcess, nil),
    ])
    func actions(name: String, action: SeccompPolicy.Action, errno: Int32?) throws {
        let policy = try DockerSeccomp.policy(from: try parse("""
            {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["getpid"], "action": "\(name)"}]}
            """), host: host)
        #expect(policy.rules.first { $0.syscall == "getpid" }?.action == action)
        #expect(policy.notifyErrno["getpid"] == errno)
    }

    @Test("a non-EPERM default errno answers every call no rule names")
    func defaultErrno() throws {
        let policy = try DockerSeccomp.policy(from: try parse("""
            {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38, "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}
            """), host: host)
        #expect(policy.notifyErrno["mount"] == 38)
        #expect(policy.notifyErrno["keyctl"] == nil) // EPERM, the monitor's answer when none is recorded
    }

    @Test("clone3 answered ENOSYS stays a silent capability probe")
    func clone3() throws {
        let policy = try DockerSeccomp.policy(from: try parse("""
            {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]}
            """), host: host)
        #expect(policy.rules == [SeccompPolicy.Rule("clone3", .errno(38))])
    }

    @Test("args map to comparisons; MASKED_EQ takes the mask from value and the result from valueTwo")
    func arguments() throws {
        let policy = try DockerSeccomp.policy(from: try parse("""
            {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
              {"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 2114060288, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]},
              {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 2, "op": "SCMP_CMP_EQ"}, {"index": 1, "value": 18446744073709551615, "op": "SCMP_CMP_LE"}]},
              {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"}, {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}]}
            """), host: host)
        #expect(policy.rules.contains(SeccompPolicy.Rule("clone", .allow, [.init(argument: 0, .maskedEqual(mask: 0x7E02_0000), 0)])))
        #expect(policy.rules.contains(SeccompPolicy.Rule("socket", .allow, [.init(argument: 0, .equal, 2), .init(argument: 1, .lessOrEqual, UInt64.max)])))
        // The same argument twice: alternatives, one rule each.
        #expect(policy.rules.filter { $0.syscall == "personality" } == [
            SeccompPolicy.Rule("personality", .allow, [.init(argument: 0, .equal, 0)]),
            SeccompPolicy.Rule("personality", .allow, [.init(argument: 0, .equal, 8)]),
        ])
    }

    @Test("includes and excludes are evaluated for an x86_64 worker without capabilities")
    func conditions() throws {
        let policy = try DockerSeccomp.policy(from: try parse("""
            {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
              {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
              {"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
              {"names": ["write"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
              {"names": ["not_on_this_arch"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["s390x"]}},
              {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38, "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
              {"names": ["getpid"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "6.2"}},
              {"names": ["openat"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
              {"names": ["ioctl"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": ["amd64"]}}]}
            """), host: host)
        let names = Set(policy.rules.map(\.syscall))
        #expect(names == ["read", "clone3", "openat"])
    }

    @Test("profile allow and deny adjust the imported policy; deny wins")
    func adjust() throws {
        let base = try DockerSeccomp.policy(from: try parse("""
            {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO"},
              {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 17, "op": "SCMP_CMP_EQ"}]}]}
            """), host: host)
        let adjusted = base.adjusted(allow: ["keyctl", "ptrace"], deny: ["ptrace", "getpid"])
        #expect(adjusted.rules.filter { $0.syscall == "keyctl" } == [SeccompPolicy.Rule("keyctl", .allow)])
        #expect(adjusted.rules.filter { $0.syscall == "ptrace" } == [SeccompPolicy.Rule("ptrace", .notify)])
        #expect(adjusted.rules.filter { $0.syscall == "getpid" } == [SeccompPolicy.Rule("getpid", .notify)])
        #expect(adjusted.rules.filter { $0.syscall == "socket" }.count == 1)
    }

    @Test("a bad Docker profile is refused, naming the place in the file", arguments: [
        (#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}, {"names": ["write"], "action": "SCMP_ACT_ALLOW"}, {"names": ["read"], "action": "SCMP_ACT_ALLOW"}, {"names": ["getpid", "foo"], "action": "SCMP_ACT_ALLOW"}]}"#,
         #"seccomp.dockerProfile: syscalls[3].names[1]: unknown syscall "foo""#),
        (#"{"syscalls": []}"#, "seccomp.dockerProfile: defaultAction: is required"),
        (#"{"defaultAction": "SCMP_ACT_MAYBE"}"#, #"seccomp.dockerProfile: defaultAction: unknown action "SCMP_ACT_MAYBE""#),
        (#"{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_AARCH64"]}"#,
         "seccomp.dockerProfile: architectures: does not include SCMP_ARCH_X86_64"),
        (#"{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_Z80"]}"#, #"seccomp.dockerProfile: architectures[0]: unknown architecture "SCMP_ARCH_Z80""#),
        (#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultAktion": 1}"#, "seccomp.dockerProfile: defaultAktion: unknown key"),
        (#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}"#,
         "seccomp.dockerProfile: syscalls[0].args[0].index: expected a whole number from 0 to 5"),
        (#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}]}]}"#,
         #"seccomp.dockerProfile: syscalls[0].args[0].op: unknown operator "SCMP_CMP_ABOUT""#),
        (#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]}]}"#,
         "seccomp.dockerProfile: syscalls[0].args[0].value: expected a whole number"),
        (#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 18446744073709551616, "op": "SCMP_CMP_EQ"}]}]}"#,
         "seccomp.dockerProfile: syscalls[0].args[0].value: expected a whole number from 0 to 18446744073709551615"),
        (#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]}"#,
         "seccomp.dockerProfile: syscalls[0].errnoRet: only applies to SCMP_ACT_ERRNO"),
        (#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}, {"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]}"#,
         "seccomp.dockerProfile: syscalls[1]: keyctl is answered errno 1 in syscalls[0] and 38 here"),
        (#"{"defaultAction": "SCMP_ACT_ERRNO", "listenerPath": "/run/agent.sock"}"#, "seccomp.dockerProfile: listenerPath: not supported"),
        (#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "new"}}]}"#,
         "seccomp.dockerProfile: syscalls[0].includes.minKernel: expected a kernel version"),
        (#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}"#, "seccomp.dockerProfile: syscalls[0].names: is required"),
    ])
    func refused(document: String, message: String) throws {
        let found = try issues(document)
        #expect(found.contains { $0.hasPrefix(message) }, "\(found)")
    }

    @Test("unknown allow and deny names are issues naming the list and index")
    func profileNames() {
        var seccomp = Profile.Seccomp()
        seccomp.allow = ["read", "raed"]
        seccomp.deny = ["keyctl", "kyectl"]
        #expect(seccomp.unknownNames(syscallExists: { table.contains($0) }).map(\.description) == [
            #"seccomp.allow[1]: unknown syscall "raed""#, #"seccomp.deny[1]: unknown syscall "kyectl""#,
        ])
    }
}

@Suite("dockerProfile paths in a profile")
struct DockerProfilePathTests {
    func decode(_ text: String, source: String?) throws(ProfileError) -> Profile {
        let document: JSONValue
        do { document = try parse(text) } catch { throw ProfileError(source: nil, issues: []) }
        return try ProfileDecoder.decode(document, onto: Profile(), source: source)
    }

    @Test("a relative dockerProfile is relative to the profile file's directory")
    func relative() throws {
        let profile = try decode(#"{"seccomp": {"base": "docker", "dockerProfile": "seccomp/d.json"}}"#, source: "/etc/stockade/profiles/p.json")
        #expect(profile.seccomp.base == .docker(path: "/etc/stockade/profiles/seccomp/d.json"))
        let absolute = try decode(#"{"seccomp": {"base": "docker", "dockerProfile": "/opt/d.json"}}"#, source: "/etc/p.json")
        #expect(absolute.seccomp.base == .docker(path: "/opt/d.json"))
    }

    @Test("a relative dockerProfile in a profile without a file is refused")
    func noFile() {
        #expect(throws: ProfileError.self) { try decode(#"{"seccomp": {"base": "docker", "dockerProfile": "d.json"}}"#, source: "builtin:default") }
        do {
            _ = try decode(#"{"seccomp": {"base": "docker", "dockerProfile": "d.json"}}"#, source: nil)
        } catch {
            #expect(error.description.hasPrefix("seccomp.dockerProfile: must be an absolute path"))
        }
    }
}
