import Foundation
import Glibc
@testable import StockadeLinux
import StockadePolicy
import StockadeTestSupport
@testable import StockadeSupervisor
import Testing

private let projectRoot = TestPaths.projectRoot

// MARK: - Volumes

@Suite("volume policy")
struct VolumePolicyTests {
    func check(_ volumes: [Profile.Volume], flags: [Profile.Volume] = [], roots: [String] = [], state: String? = nil) -> VolumePolicy.Check {
        VolumePolicy.validate(VolumePolicy.entries(profile: volumes, flags: flags), allowedRoots: roots, stateDirectory: state)
    }

    func messages(_ volumes: [Profile.Volume], flags: [Profile.Volume] = [], roots: [String] = [], state: String? = nil) -> [String] {
        check(volumes, flags: flags, roots: roots, state: state).issues.map(\.description)
    }

    @Test("a good volume is kept read-only by default, rw only when asked, with its source resolved")
    func accepted() throws {
        let dir = try temporaryDirectory("vol")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createDirectory(atPath: dir + "/real", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: dir + "/link", withDestinationPath: dir + "/real")
        let result = check([Profile.Volume(source: dir + "/link", target: "/data"),
                            Profile.Volume(source: dir + "/real", target: "/out", readOnly: false)], roots: [dir])
        #expect(result.issues.isEmpty)
        #expect(result.volumes == [Profile.Volume(source: dir + "/real", target: "/data", readOnly: true),
                                   Profile.Volume(source: dir + "/real", target: "/out", readOnly: false)])
    }

    @Test("a source outside the allowed roots is refused, also through a symlink inside one")
    func allowedRoots() throws {
        let dir = try temporaryDirectory("vol")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for sub in ["allowed", "other"] { try FileManager.default.createDirectory(atPath: "\(dir)/\(sub)", withIntermediateDirectories: true) }
        try FileManager.default.createSymbolicLink(atPath: dir + "/allowed/escape", withDestinationPath: dir + "/other")
        #expect(messages([Profile.Volume(source: dir + "/allowed", target: "/a"), Profile.Volume(source: dir + "/other", target: "/b"),
                          Profile.Volume(source: dir + "/allowed/escape", target: "/c")], roots: [dir + "/allowed"]) == [
            "volumes[1].source: not under an allowed root \(dir)/allowed",
            "volumes[2].source: not under an allowed root \(dir)/allowed (\(dir)/allowed/escape resolves to \(dir)/other)",
        ])
    }

    @Test("host sources that must never be volumes are refused, naming the field and why", arguments: [
        ("/", "volumes[0].source: / is the host's root directory"),
        ("/proc/self", "volumes[0].source: /proc/self (resolves to /proc/"),
        ("/sys", "volumes[0].source: /sys is inside /sys: kernel and device interfaces are never volumes"),
        ("/dev/null", "volumes[0].source: /dev/null is inside /dev"),
        ("/dev", "volumes[0].source: /dev is inside /dev"),
        ("/var/run/docker.sock", "volumes[0].source: /var/run/docker.sock is a container engine socket"),
        ("/run/containerd/containerd.sock", "volumes[0].source: /run/containerd/containerd.sock is a container engine socket"),
        ("/run", "volumes[0].source: /run contains /run/containerd"),
        ("/var", "volumes[0].source: /var contains /var/lib/containerd"),
        ("/no/such/dir", "volumes[0].source: /no/such/dir does not exist"),
        ("relative/dir", "volumes[0].source: must be an absolute host path"),
    ])
    func forbiddenSources(source: String, message: String) {
        let found = messages([Profile.Volume(source: source, target: "/data")])
        #expect(found.count == 1 && found[0].hasPrefix(message), "\(found)")
    }

    @Test("the state directory, anything in it and anything containing it are refused")
    func stateDirectory() throws {
        let dir = try temporaryDirectory("vol")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let state = dir + "/state"
        try FileManager.default.createDirectory(atPath: state + "/runs", withIntermediateDirectories: true)
        let found = messages([Profile.Volume(source: state, target: "/a"), Profile.Volume(source: state + "/runs", target: "/b"),
                              Profile.Volume(source: dir, target: "/c")], state: state)
        #expect(found == [
            "volumes[0].source: \(state) is inside the state directory \(state) (run directories and the audit database)",
            "volumes[1].source: \(state)/runs is inside the state directory \(state) (run directories and the audit database)",
            "volumes[2].source: \(dir) contains the state directory \(state) (run directories and the audit database)",
        ])
        // `stockade profile check` has no state directory: the rule is skipped.
        #expect(messages([Profile.Volume(source: dir, target: "/c")]).isEmpty)
    }

    @Test("a FIFO is not a volume")
    func fifo() throws {
        let dir = try temporaryDirectory("vol")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        #expect(mkfifo(dir + "/fifo", 0o600) == 0)
        #expect(messages([Profile.Volume(source: dir + "/fifo", target: "/f")]) == [
            "volumes[0].source: \(dir)/fifo is a FIFO: only directories and regular files can be volumes",
        ])
    }

    @Test("targets must be absolute, normalized and outside what the sandbox provides", arguments: [
        ("data", "must be an absolute path"),
        ("/", "cannot be the worker's root directory"),
        ("/proc/x", "/proc/x is inside /proc"),
        ("/dev", "/dev is inside /dev"),
        ("/sys/fs", "/sys/fs is inside /sys"),
        ("/sandbox/result", "/sandbox/result is inside /sandbox"),
        ("/usr/local", "/usr/local is inside /usr"),
        ("/etc/passwd", "/etc/passwd is inside /etc"),
        ("/bin", "/bin is inside /bin"),
        ("/sbin/x", "/sbin/x is inside /sbin"),
        ("/lib64/x", "/lib64/x is inside /lib64"),
        ("/libx32", "/libx32 is inside /libx32"),
        ("/a//b", "must be a normalized path"),
        ("/a/./b", "must be a normalized path"),
        ("/a/../etc", "must be a normalized path"),
        ("/a/", "must be a normalized path"),
    ])
    func targets(target: String, message: String) {
        let found = messages([Profile.Volume(source: "/usr/share", target: target)])
        #expect(found.count == 1 && found[0].hasPrefix("volumes[0].target: \(message)"), "\(found)")
    }

    @Test("command-line volumes are checked as --volume[i], and a target is used once")
    func flags() {
        let found = messages([Profile.Volume(source: "/usr/share", target: "/data")],
                             flags: [Profile.Volume(source: "/usr/share", target: "/data"), Profile.Volume(source: "/nope", target: "/x")],
                             roots: ["/usr"])
        #expect(found == ["--volume[0].target: /data is already the target of volumes[0]", "--volume[1].source: /nope does not exist"])
    }
}

// MARK: - Secrets

@Suite("secret loading")
struct SecretLoaderTests {
    func load(_ secrets: [Profile.Secret], env: [String: String] = [:]) -> Result<RunSecrets, ProfileError> {
        do { return .success(try SecretLoader.load(secrets, hostEnvironment: env)) } catch { return .failure(error) }
    }

    func messages(_ secrets: [Profile.Secret], env: [String: String] = [:]) -> [String] {
        if case .failure(let e) = load(secrets, env: env) { return e.issues.map(\.description) }
        return []
    }

    @Test("a 0600 file and a supervisor variable become worker variables, trailing newline dropped, and feed the redactor")
    func loads() throws {
        let dir = try temporaryDirectory("secret")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try write("file-secret-value\n", to: dir + "/token", mode: 0o600)
        try write("read-only-secret", to: dir + "/ro", mode: 0o400)
        let result = try load([Profile.Secret(env: "API_TOKEN", source: .file(dir + "/token")),
                               Profile.Secret(env: "RO", source: .file(dir + "/ro")),
                               Profile.Secret(env: "FROM_ENV", source: .environment("HOST_TOKEN"))],
                              env: ["HOST_TOKEN": "env-secret-value"]).get()
        #expect(result.environment.map(\.0) == ["API_TOKEN", "RO", "FROM_ENV"])
        #expect(result.environment.map(\.1) == ["file-secret-value", "read-only-secret", "env-secret-value"])
        #expect(result.redactor.redact("a file-secret-value b env-secret-value") == "a [REDACTED] b [REDACTED]")
    }

    @Test("a secret file anyone else may read or write is refused, naming the field and the mode", arguments: [0o644, 0o640, 0o604, 0o602, 0o660, 0o700, 0o4600])
    func modes(mode: Int) throws {
        let dir = try temporaryDirectory("secret")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try write("long-enough-secret", to: dir + "/token", mode: mode)
        let octal = String(mode, radix: 8)
        #expect(messages([Profile.Secret(env: "T", source: .file(dir + "/token"))]) == [
            "secrets[0].file: \(dir)/token has mode \(String(repeating: "0", count: 4 - octal.count) + octal); a secret file must be 0600 or stricter (chmod 600 \(dir)/token)",
        ])
    }

    @Test("symlinks, directories, missing files, short, huge and unset secrets are refused")
    func refused() throws {
        let dir = try temporaryDirectory("secret")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try write("long-enough-secret", to: dir + "/token", mode: 0o600)
        try FileManager.default.createSymbolicLink(atPath: dir + "/link", withDestinationPath: dir + "/token")
        try write("short\n", to: dir + "/short", mode: 0o600)
        try write(String(repeating: "x", count: (64 << 10) + 1), to: dir + "/huge", mode: 0o600)
        try FileManager.default.createDirectory(atPath: dir + "/dir", withIntermediateDirectories: true)
        chmod(dir + "/dir", 0o700)
        let found = messages([
            Profile.Secret(env: "A", source: .file(dir + "/link")),
            Profile.Secret(env: "B", source: .file(dir + "/missing")),
            Profile.Secret(env: "C", source: .file(dir + "/short")),
            Profile.Secret(env: "D", source: .file(dir + "/huge")),
            Profile.Secret(env: "E", source: .file(dir + "/dir")),
            Profile.Secret(env: "F", source: .environment("UNSET_VAR")),
            Profile.Secret(env: "G", source: .environment("SHORT_VAR")),
            Profile.Secret(env: "A", source: .file(dir + "/token")),
        ], env: ["SHORT_VAR": "1234567"])
        #expect(found == [
            "secrets[7].env: A is already the variable of secrets[0]",
            "secrets[0].file: \(dir)/link is a symbolic link; name the file itself",
            "secrets[1].file: \(dir)/missing does not exist",
            "secrets[2].file: the secret is 5 bytes; at least 8 are needed so that redacting it cannot garble ordinary output",
            "secrets[3].file: the secret is larger than 64 KiB",
            "secrets[4].file: \(dir)/dir is not a regular file",
            "secrets[5].fromEnv: UNSET_VAR is not set in the supervisor's environment",
            "secrets[6].fromEnv: the secret is 7 bytes; at least 8 are needed so that redacting it cannot garble ordinary output",
        ])
    }

    @Test("profile check checks secret files but not the supervisor's variables")
    func check() {
        #expect(SecretLoader.check([Profile.Secret(env: "F", source: .environment("UNSET_VAR"))], hostEnvironment: nil).isEmpty)
        #expect(SecretLoader.check([Profile.Secret(env: "F", source: .file("/no/such/secret"))], hostEnvironment: nil).map(\.description)
            == ["secrets[0].file: /no/such/secret does not exist"])
    }
}

// MARK: - Seccomp import and example profiles

@Suite("the Docker-format seccomp fixture, compiled and evaluated")
struct DockerSeccompFilterTests {
    static let allow: UInt32 = 0x7FFF_0000
    static let notify: UInt32 = 0x7FC0_0000
    static let killProcess: UInt32 = 0x8000_0000

    static func policy() throws -> SeccompPolicy {
        var profile = Profile()
        profile.seccomp.base = .docker(path: projectRoot + "/Fixtures/seccomp/docker-minimal.json")
        profile.seccomp.deny = ["getcpu"]
        return try SeccompLoader.policy(for: profile)
    }

    func verdict(_ program: SeccompProgram, _ name: String, args: [UInt64] = [], arch: UInt32 = BPFInterpreter.auditArchX86_64) throws -> UInt32 {
        let nr = try #require(SeccompCompiler.syscallNumber(name), "\(name) resolves")
        return try BPFInterpreter(program).evaluate(arch: arch, nr: nr, args: args)
    }

    @Test("it denies what it lists, allows what it allows, and notifies the rest")
    func verdicts() throws {
        let policy = try Self.policy()
        let program = try SeccompCompiler.compile(policy)
        for name in ["read", "write", "openat", "execve", "exit_group", "getpid"] {
            #expect(try verdict(program, name) == Self.allow, "\(name)")
        }
        // Listed ERRNO and TRAP: notified (recorded), then answered with their errno.
        for name in ["keyctl", "add_key", "request_key", "io_uring_setup", "capset"] {
            #expect(try verdict(program, name) == Self.notify, "\(name)")
        }
        #expect(policy.notifyErrno["io_uring_setup"] == 38)
        #expect(policy.notifyErrno["keyctl"] == nil) // EPERM
        // Listed KILL_PROCESS.
        for name in ["ptrace", "process_vm_readv"] { #expect(try verdict(program, name) == Self.killProcess, "\(name)") }
        // Not listed (or only for holders of CAP_SYS_ADMIN): the default, notified.
        for name in ["mount", "unshare", "setns", "bpf", "userfaultfd"] { #expect(try verdict(program, name) == Self.notify, "\(name)") }
        // The profile's own deny list.
        #expect(try verdict(program, "getcpu") == Self.notify)
        // Arguments.
        #expect(try verdict(program, "clone", args: [0x003D_0F00]) == Self.allow)
        #expect(try verdict(program, "clone", args: [0x003D_0F00 | 0x1000_0000]) == Self.notify) // CLONE_NEWUSER
        #expect(try verdict(program, "clone3") == 0x0005_0000 | 38)
        #expect(try verdict(program, "socket", args: [2, 1, 0]) == Self.allow)
        #expect(try verdict(program, "socket", args: [17, 3, 0]) == Self.notify) // AF_PACKET
        #expect(try verdict(program, "personality", args: [0]) == Self.allow)
        #expect(try verdict(program, "personality", args: [0xFFFF_FFFF]) == Self.allow)
        #expect(try verdict(program, "personality", args: [8]) == Self.notify)
        // Foreign architectures never reach the rules (the monitor kills on them).
        #expect(try BPFInterpreter(program).evaluate(arch: BPFInterpreter.auditArchI386, nr: 3) == Self.notify)
        #expect(policy.killOnForeignArchitecture)
    }

    @Test("an unknown syscall in a Docker file is an error naming the entry and the name")
    func unknownName() throws {
        let dir = try temporaryDirectory("docker")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try write(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}, {"names": ["write", "foo"], "action": "SCMP_ACT_ALLOW"}]}"#,
                  to: dir + "/d.json", mode: 0o644)
        var profile = Profile()
        profile.seccomp.base = .docker(path: dir + "/d.json")
        profile.seccomp.allow = ["no_such_call"]
        #expect(ProfileHostCheck.issues(profile, stateDirectory: nil).map(\.description) == [
            #"seccomp.allow[0]: unknown syscall "no_such_call""#,
            #"seccomp.dockerProfile: syscalls[1].names[1]: unknown syscall "foo""#,
        ])
    }
}

@Suite("example profiles")
struct ExampleProfileTests {
    static let examples: [String] = {
        let dir = projectRoot + "/Profiles/examples"
        return ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(".json") }.sorted().map { dir + "/" + $0 }
    }()

    @Test("there is one example per feature")
    func present() {
        #expect(Self.examples.map { URL(fileURLWithPath: $0).lastPathComponent }
            == ["docker-seccomp.json", "loopback.json", "publish.json", "secrets.json", "volumes.json"])
    }

    @Test("every example loads and passes the host checks (the secrets example with its file created)", arguments: examples)
    func loads(path: String) throws {
        var path = path
        let dir = try temporaryDirectory("example")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        if path.hasSuffix("/secrets.json") {
            // The example names /etc/stockade/api-token; test a copy pointing at a file made here.
            try write("example-api-token\n", to: dir + "/api-token", mode: 0o600)
            let text = try String(contentsOfFile: path, encoding: .utf8).replacingOccurrences(of: "/etc/stockade/api-token", with: dir + "/api-token")
            try write(text, to: dir + "/secrets.json", mode: 0o644)
            path = dir + "/secrets.json"
        }
        let loaded = try ProfileCatalog(directories: [projectRoot + "/Profiles"]).load(path)
        #expect(ProfileHostCheck.issues(loaded.profile, stateDirectory: dir + "/state").isEmpty)
        #expect(loaded.profile.name.hasPrefix("example-"))
    }
}

@Suite("profile loading, reused while unchanged")
struct ProfileCacheTests {
    private func profile(memory: String, extends parent: String? = nil) -> String {
        let base = parent.map { "\"extends\": \"\($0)\", " } ?? ""
        return "{\(base)\"limits\": {\"memory\": \"\(memory)\"}}"
    }

    @Test("an edit to the profile, even of the same size right after the last load, is seen by the next load")
    func editedFile() throws {
        let dir = try temporaryDirectory("cache-edit")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let catalog = ProfileCatalog(directories: [dir])
        try write(profile(memory: "64m"), to: dir + "/edit.json", mode: 0o644)
        let first = try catalog.load("edit")
        #expect(first.profile.limits.memoryBytes == 64 << 20)
        #expect(try catalog.load("edit").digest == first.digest)
        try write(profile(memory: "32m"), to: dir + "/edit.json", mode: 0o644)
        let second = try catalog.load("edit")
        #expect(second.profile.limits.memoryBytes == 32 << 20)
        #expect(second.digest != first.digest)
    }

    @Test("an edit to a profile it extends is seen, and so is a file that now comes first in the search path")
    func chainAndSearchPath() throws {
        let early = try temporaryDirectory("cache-early"), late = try temporaryDirectory("cache-late")
        defer {
            try? FileManager.default.removeItem(atPath: early)
            try? FileManager.default.removeItem(atPath: late)
        }
        let catalog = ProfileCatalog(directories: [early, late])
        try write(profile(memory: "48m"), to: late + "/base.json", mode: 0o644)
        try write("{\"extends\": \"base\"}", to: late + "/child.json", mode: 0o644)
        #expect(try catalog.load("child").profile.limits.memoryBytes == 48 << 20)
        try write(profile(memory: "40m"), to: late + "/base.json", mode: 0o644)
        #expect(try catalog.load("child").profile.limits.memoryBytes == 40 << 20)
        try write(profile(memory: "24m"), to: early + "/base.json", mode: 0o644)
        let shadowed = try catalog.load("child")
        #expect(shadowed.profile.limits.memoryBytes == 24 << 20)
        try FileManager.default.removeItem(atPath: late + "/child.json")
        #expect(throws: ProfileError.self) { try catalog.load("child") }
    }
}

@Suite("Stockade's default seccomp policy, built once per seccomp section")
struct SeccompDefaultCacheTests {
    private func policy(deny: [String] = [], allow: [String] = [], kill: Bool = false) throws -> SeccompPolicy {
        var profile = Profile()
        profile.seccomp.deny = deny
        profile.seccomp.allow = allow
        profile.seccomp.onViolation = kill ? .kill : .errno
        return try SeccompLoader.policy(for: profile)
    }

    @Test("each section gets its own policy, again after more sections than are kept; an unknown name is still refused")
    func perSection() throws {
        let plain = try policy()
        #expect(plain == .stockadeDefault())
        #expect(try policy() == plain)
        #expect(try policy(deny: ["getcpu"]) == .stockadeDefault(deny: ["getcpu"]))
        #expect(try policy(deny: ["getcpu"], kill: true) == .stockadeDefault(deny: ["getcpu"], killOnViolation: true))
        let names = ["getcpu", "uname", "sysinfo", "getrandom", "times", "getppid", "sched_yield", "getpgrp", "getsid", "umask"]
        for _ in 0..<2 {
            for name in names { #expect(try policy(deny: [name]) == .stockadeDefault(deny: [name])) }
        }
        #expect(try policy(allow: ["getcpu"], kill: true) == .stockadeDefault(allow: ["getcpu"], killOnViolation: true))
        #expect(try policy() == plain)
        #expect(throws: ProfileError.self) { try policy(deny: ["no_such_syscall"]) }
        #expect(throws: ProfileError.self) { try policy(deny: ["no_such_syscall"]) }
    }
}

@Suite("redacting captured output")
struct CapturedRedactionTests {
    @Test("output cut by its cap in the middle of a secret keeps no beginning of it")
    func truncated() {
        let redactor = Redactor(secrets: ["abcdefgh-secret"])
        var cut = CapturedOutput()
        cut.bytes = Array("ok abcdefgh-secret and abcdefgh-se".utf8)
        cut.totalBytes = cut.bytes.count + 100
        #expect(String(decoding: redactor.redact(captured: cut), as: UTF8.self) == "ok [REDACTED] and ")
        var whole = cut
        whole.totalBytes = whole.bytes.count
        #expect(String(decoding: redactor.redact(captured: whole), as: UTF8.self) == "ok [REDACTED] and abcdefgh-se")
    }
}
