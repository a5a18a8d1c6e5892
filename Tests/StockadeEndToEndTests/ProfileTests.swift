import Foundation
import Glibc
@testable import StockadeLinux
import StockadePolicy
@testable import StockadeSupervisor
import Testing

/// The project's root (for Profiles/ and Fixtures/).
private let projectRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url = url.deletingLastPathComponent() }
    return url.path
}()

/// A fresh directory under /tmp, removed by the caller.
private func temporaryDirectory(_ tag: String) throws -> String {
    let path = "/tmp/stockade-\(tag)-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

private func write(_ text: String, to path: String, mode: Int) throws {
    try Data(text.utf8).write(to: URL(fileURLWithPath: path))
    chmod(path, mode_t(mode))
}

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

@Suite("a relative extends path")
struct RelativeExtendsTests {
    @Test("a relative extends path names a file beside the profile, wherever the command is started")
    func besideTheProfile() throws {
        let dir = try temporaryDirectory("extends-beside"), elsewhere = try temporaryDirectory("extends-elsewhere")
        defer {
            try? FileManager.default.removeItem(atPath: dir)
            try? FileManager.default.removeItem(atPath: elsewhere)
        }
        try write(#"{"limits": {"memory": "48m"}}"#, to: dir + "/base.json", mode: 0o644)
        try write(#"{"extends": "./base.json", "limits": {"cpus": 0.5}}"#, to: dir + "/child.json", mode: 0o644)
        // A decoy where the old lookup (against the current directory) would have looked.
        try write(#"{"limits": {"memory": "24m"}}"#, to: elsewhere + "/base.json", mode: 0o644)

        let loaded = try ProfileCatalog(directories: []).load(dir + "/child.json")
        #expect(loaded.profile.limits.memoryBytes == 48 << 20)
        #expect(FileManager.default.currentDirectoryPath != dir)

        // Through the binary, started in the decoy's directory.
        let shown = try Harness.exec("/bin/sh", ["-c", "cd \"$1\" && exec \"$0\" profile show \"$2\"", Harness.stockade, elsewhere,
                                                 dir + "/child.json"])
        #expect(shown.status == 0, "\(shown.stderr)")
        #expect(shown.stdout.contains(#""memory": "48m""#), "\(shown.stdout)")
    }

    @Test("a missing base is reported by the path it was resolved to")
    func missingBase() throws {
        let dir = try temporaryDirectory("extends-missing")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try write(#"{"extends": "parts/base.json"}"#, to: dir + "/child.json", mode: 0o644)
        #expect {
            try ProfileCatalog(directories: []).load(dir + "/child.json")
        } throws: { error in
            (error as? ProfileError)?.source == dir + "/parts/base.json"
        }
        let r = try Harness.exec("/bin/sh", ["-c", "cd / && exec \"$0\" profile show \"$1\"", Harness.stockade, dir + "/child.json"])
        #expect(r.status == 1)
        #expect(r.stderr.contains(dir + "/parts/base.json"), "\(r.stderr)")
    }

    @Test("names, absolute paths and built-in profiles are not rebased", arguments: [
        ("default", "/p/child.json", false, "default"),
        ("/abs/base.json", "/p/child.json", false, "/abs/base.json"),
        ("base.json", "/p/child.json", false, "/p/base.json"),
        ("../up/base.json", "/p/q/child.json", false, "/p/q/../up/base.json"),
        ("./base.json", "child.json", false, "./base.json"),
        ("./base.json", "builtin:strict", true, "./base.json"),
    ])
    func rebasing(_ parent: String, _ source: String, _ builtin: Bool, _ expected: String) {
        #expect(ProfileCatalog.relative(parent, to: source, builtin: builtin) == expected)
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

@Suite("the port forwarder", .enabled(if: getuid() == 0, "needs root: it enters a network namespace with setns(2)"), .serialized,
       .timeLimit(.minutes(3)))
struct PortForwarderTests {
    /// Relays within the test's own namespace: the mechanics are the same as into a worker's.
    @Test("it relays both ways, bounds concurrent connections at 64, and closes everything on stop")
    func relay() throws {
        let server = try hostListener()
        defer { close(server.fd) }
        let free = try hostListener()
        close(free.fd)
        let forwarder = try PortForwarder.start(mappings: [Profile.PortMapping(hostPort: free.port, workerPort: server.port)], workerPid: getpid())
        defer { forwarder.stop() }  // idempotent; stops it also when an expectation below ends the test early
        // Echo one line per connection on a thread: accept, read, answer.
        let echo = Thread {
            let c = accept(server.fd, nil, nil)
            guard c >= 0 else { return }
            var buffer = [UInt8](repeating: 0, count: 256)
            let n = buffer.withUnsafeMutableBytes { recv(c, $0.baseAddress, $0.count, 0) }
            let reply = Array("echo: ".utf8) + buffer[0..<max(n, 0)]
            _ = reply.withUnsafeBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            close(c)
        }
        echo.start()
        #expect(exchange(port: free.port, send: "hello\n") == "echo: hello\n")
        // That relay's thread ends just after the reply arrives: wait for it, or it would still hold
        // one of the 64 places when the connections below come in (bounded, as below).
        var drained = 0
        while forwarder.activeConnections > 0 && drained < 2_000 {
            usleep(10_000)
            drained += 1
        }

        // 64 connections are held open (the server never answers them); the 65th is closed at once.
        var held: [Int32] = []
        defer { for fd in held { close(fd) } }
        for _ in 0..<PortForwarder.maxConnections {
            let fd = try #require(connectedSocket(port: free.port))
            held.append(fd)
        }
        // Once all 64 are being relayed, one more is turned away. (Bounded: a synchronous loop is not
        // stopped by the time limit, and a hang would stall the whole run.)
        var waited = 0
        while forwarder.activeConnections < PortForwarder.maxConnections && waited < 2_000 {
            usleep(10_000)
            waited += 1
        }
        try #require(forwarder.activeConnections == PortForwarder.maxConnections,
                     "only \(forwarder.activeConnections) connections are being relayed after 20 s")
        let extra = try #require(connectedSocket(port: free.port))
        held.append(extra)
        #expect(readAll(extra) == "")

        forwarder.stop()
        // Every relayed connection is closed by stop.
        #expect(readAll(held[0]) == "")
        #expect(connectedSocket(port: free.port) == nil)
    }

    @Test("a host port in use fails, naming the port")
    func taken() throws {
        let busy = try hostListener()
        defer { close(busy.fd) }
        #expect(throws: LinuxError.self) { try PortForwarder.listen(mappings: [Profile.PortMapping(hostPort: busy.port, workerPort: 80)]) }
        do {
            _ = try PortForwarder.listen(mappings: [Profile.PortMapping(hostPort: busy.port, workerPort: 80)])
        } catch {
            #expect(error.stage == .publish)
            #expect(error.message.contains("127.0.0.1:\(busy.port)") && error.message.contains("already in use"))
        }
    }
}

private func connectedSocket(port: UInt16) -> Int32? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return nil }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    let rc = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    if rc != 0 {
        close(fd)
        return nil
    }
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    return fd
}

/// Reads until EOF (or the 10 s receive timeout, which returns what was read plus "<timeout>").
private func readAll(_ fd: Int32) -> String {
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n < 0 { return String(decoding: out, as: UTF8.self) + (errno == EAGAIN ? "<timeout>" : "") }
        if n == 0 { break }
        out += buffer[0..<n]
    }
    return String(decoding: out, as: UTF8.self)
}

// MARK: - End to end

/// A TCP listener on host 127.0.0.1 at an ephemeral port.
private func hostListener() throws -> (fd: Int32, port: UInt16) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    try #require(fd >= 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let rc = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { p in
            // A backlog above the forwarder's 64 connections: with a smaller one the kernel resets
            // some relayed connections once its accept queue overflows, and they stop counting as active.
            bind(fd, p, length) == 0 && listen(fd, 128) == 0 && getsockname(fd, p, &length) == 0
        }
    }
    try #require(rc)
    return (fd, UInt16(bigEndian: address.sin_port))
}

/// Connects to host 127.0.0.1:port, sends a line and reads until EOF; nil if the connection fails.
private func exchange(port: UInt16, send line: String) -> String? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { return nil }
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    let bytes = Array(line.utf8)
    _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n <= 0 { break }
        out += buffer[0..<n]
    }
    return String(decoding: out, as: UTF8.self)
}

@Suite("operator profiles, end to end", .enabled(if: Harness.canSandbox, "needs root and user namespaces (run the suite as root on Linux)"),
       .timeLimit(.minutes(2)))
struct ProfileEndToEndTests {
    @Test("a read-only volume refuses writes and an rw one accepts them; only the rw host directory changes")
    func volumes() throws {
        let h = try Harness()
        let dir = try temporaryDirectory("e2e-vol")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for sub in ["ro", "rw"] {
            try FileManager.default.createDirectory(atPath: "\(dir)/\(sub)", withIntermediateDirectories: true)
            chmod("\(dir)/\(sub)", 0o777)
            try write("host\n", to: "\(dir)/\(sub)/existing", mode: 0o666)
        }
        let r = try h.run(["--volume", "\(dir)/ro:/data/ro", "--volume", "\(dir)/rw:/data/rw:rw"], ["/bin/sh", "-c", """
            cat /data/ro/existing
            echo worker > /data/ro/new && echo ro-write-worked
            echo worker >> /data/ro/existing && echo ro-append-worked
            echo worker > /data/rw/new && echo rw-write-worked
            """])
        let report = try r.report()
        let out = report.string("stdout") ?? ""
        #expect(out.contains("host\n"))
        #expect(!out.contains("ro-write-worked") && !out.contains("ro-append-worked"), "\(out)")
        #expect(out.contains("rw-write-worked"), "\(out) \(report.string("stderr") ?? "")")
        #expect(!FileManager.default.fileExists(atPath: dir + "/ro/new"))
        #expect(try String(contentsOfFile: dir + "/ro/existing", encoding: .utf8) == "host\n")
        #expect(try String(contentsOfFile: dir + "/rw/new", encoding: .utf8) == "worker\n")
    }

    @Test("a profile volume outside allowedVolumeRoots fails the run (125) and profile check, naming the field")
    func badProfile() throws {
        let h = try Harness()
        let dir = try temporaryDirectory("e2e-bad")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try write(#"{"extends": "default", "allowedVolumeRoots": ["/srv/data"], "volumes": [{"source": "/usr/share", "target": "/data"}]}"#,
                  to: dir + "/bad.json", mode: 0o644)
        let r = try h.stockade(["run", "--json", "--profile", dir + "/bad.json", "--", "/bin/true"])
        #expect(r.status == 125)
        let setup = try #require(try r.report()["setupError"] as? [String: Any])
        #expect(setup["message"] as? String == "volumes[0].source: not under an allowed root /srv/data")
        let check = try h.stockade(["profile", "check", dir + "/bad.json"])
        #expect(check.status == 1)
        #expect(check.stderr.contains("bad.json: volumes[0].source: not under an allowed root /srv/data"), "\(check.stderr)")
    }

    @Test("--network loopback brings lo up and shows no other interface; the default leaves lo down")
    func loopback() throws {
        let h = try Harness()
        let up = try h.run(["--network", "loopback"], ["/bin/sh", "-c", "/usr/bin/ip -o link show; tail -n +3 /proc/net/dev | cut -d: -f1"])
        let lines = (try up.report().string("stdout") ?? "").split(separator: "\n").map(String.init)
        let links = lines.filter { $0.contains(": <") }
        #expect(links.count == 1, "\(lines)")
        #expect(links.first?.contains("lo: <LOOPBACK,UP,LOWER_UP>") == true, "\(lines)")
        #expect(lines.filter { !$0.contains(": <") }.map { $0.trimmingCharacters(in: .whitespaces) } == ["lo"])
        let down = try h.run([], ["/usr/bin/ip", "-o", "link", "show"])
        let text = try down.report().string("stdout") ?? ""
        #expect(text.contains("lo: <LOOPBACK>") && !text.contains("UP"), "\(text)")
    }

    @Test("a published port reaches a server on the worker's loopback, and the worker cannot reach a host listener")
    func publish() throws {
        let h = try Harness()
        // A free host port: bind an ephemeral one, then release it for the forwarder.
        let probe = try hostListener()
        close(probe.fd)
        let hostPort = probe.port
        let server = """
            use IO::Socket::INET;
            my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 8080, Listen => 5, ReuseAddr => 1) or die "listen: $!";
            my $c = $s->accept; my $line = <$c>; print $c "worker got $line"; close $c; print "served\\n";
            """
        let result = LockedResult()
        let thread = Thread {
            result.set(try? h.run(["--publish", "\(hostPort):8080", "--timeout", "30"], ["/usr/bin/perl", "-e", server]))
        }
        thread.start()
        var reply: String?
        for _ in 0..<300 where reply == nil && !result.done {
            if let text = exchange(port: hostPort, send: "ping\n"), !text.isEmpty { reply = text } else { usleep(50_000) }
        }
        while !result.done { usleep(10_000) }
        #expect(reply == "worker got ping\n")
        let r = try #require(result.value)
        #expect(try r.report().string("stdout") == "served\n")

        // The other way: a host listener on 127.0.0.1 stays unreachable from a loopback worker.
        let listener = try hostListener()
        defer { close(listener.fd) }
        let out = try h.run(["--network", "loopback"], ["/usr/bin/perl", "-MIO::Socket::INET", "-e",
                                                        "print IO::Socket::INET->new(PeerAddr => '127.0.0.1:\(listener.port)', Timeout => 3) ? \"connected\\n\" : \"refused\\n\""])
        #expect(try out.report().string("stdout") == "refused\n")
        #expect(fcntl(listener.fd, F_SETFL, O_NONBLOCK) == 0)
        #expect(accept(listener.fd, nil, nil) < 0 && errno == EAGAIN)
    }

    @Test("a host port in use fails the run closed, naming the port")
    func portTaken() throws {
        let h = try Harness()
        let listener = try hostListener()
        defer { close(listener.fd) }
        let r = try h.run(["--publish", "\(listener.port):80"], ["/bin/true"])
        #expect(r.status == 125)
        let setup = try #require(try r.report()["setupError"] as? [String: Any])
        #expect(setup["stage"] as? String == "publish")
        #expect((setup["message"] as? String)?.contains("127.0.0.1:\(listener.port)") == true)
    }

    @Test("a secret from a 0600 file reaches the worker and never the report, the logs or report.json, even split across writes")
    func secrets() throws {
        let h = try Harness()
        let dir = try temporaryDirectory("e2e-secret")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let secret = "s3cr3t-Value-42"
        try write(secret + "\n", to: dir + "/token", mode: 0o600)
        try write(#"{"extends": "default", "secrets": [{"env": "API_TOKEN", "file": "\#(dir)/token"}]}"#, to: dir + "/p.json", mode: 0o644)
        let r = try h.run(["--profile", dir + "/p.json"], ["/bin/sh", "-c", """
            test "$API_TOKEN" = "\(secret.prefix(6))""\(secret.dropFirst(6))" && echo visible-to-worker
            echo "token=$API_TOKEN"; echo "$API_TOKEN" >&2
            printf 's3cr3t-'; sleep 0.2; printf 'Value-42\\n'
            """])
        let report = try r.report()
        let stdout = report.string("stdout") ?? ""
        #expect(stdout == "visible-to-worker\ntoken=[REDACTED]\n[REDACTED]\n")
        #expect(report.string("stderr") == "[REDACTED]\n")
        #expect(!r.stdout.contains(secret) && !r.stdout.contains("Value-42"))
        // Streaming to the operator (no --json): redacted as it streams, also across writes.
        let streamed = try h.stockade(["run", "--profile", dir + "/p.json", "--", "/bin/sh", "-c",
                                       "echo \"$API_TOKEN\"; printf 's3cr3t-'; sleep 0.2; printf 'Value-42\\n'"])
        #expect(streamed.stdout == "[REDACTED]\n[REDACTED]\n", "\(streamed.stdout)")
        #expect(!streamed.stderr.contains("Value-42"))
        let runDirectory = h.stateDirectory + "/runs/" + (report.string("runId") ?? "")
        for file in ["logs/stdout.log", "logs/stderr.log", "report.json"] {
            let text = try String(contentsOfFile: runDirectory + "/" + file, encoding: .utf8)
            #expect(!text.contains(secret) && !text.contains("Value-42"), "\(file)")
            #expect(text.contains("[REDACTED]"), "\(file)")
        }
    }

    @Test("a secret file readable by others is refused before anything runs")
    func secretMode() throws {
        let h = try Harness()
        let dir = try temporaryDirectory("e2e-secret")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try write("long-enough-secret\n", to: dir + "/token", mode: 0o644)
        try write(#"{"extends": "default", "secrets": [{"env": "API_TOKEN", "file": "\#(dir)/token"}]}"#, to: dir + "/p.json", mode: 0o644)
        let r = try h.run(["--profile", dir + "/p.json"], ["/bin/true"])
        #expect(r.status == 125)
        let setup = try #require(try r.report()["setupError"] as? [String: Any])
        #expect(setup["stage"] as? String == "secrets")
        #expect(setup["message"] as? String == "secrets[0].file: \(dir)/token has mode 0644; a secret file must be 0600 or stricter (chmod 600 \(dir)/token)")
    }

    @Test("an imported Docker-format profile denies what it lists, visibly, and allows the rest")
    func dockerProfile() throws {
        let h = try Harness()
        // keyctl is 250 and getpid 39 on x86_64; getcpu (309) is denied by the example's own deny list.
        let r = try h.stockade(["run", "--json", "--profile", projectRoot + "/Profiles/examples/docker-seccomp.json", "--",
                                "/usr/bin/perl", "-e", #"$r = syscall(250, 0, 0, 0, 0, 0); print "keyctl=$r errno=", $!+0, "\n"; print "getpid=", (syscall(39) > 0 ? "ok" : "fail"), "\n"; $r = syscall(309, 0, 0, 0); print "getcpu=$r errno=", $!+0, "\n";"#])
        let report = try r.report()
        #expect(report.string("outcome") == "exited")
        #expect(report.string("stdout") == "keyctl=-1 errno=1\ngetpid=ok\ngetcpu=-1 errno=1\n")
        #expect(Set(report.violationSyscalls) == ["keyctl", "getcpu"])
    }
}

final class LockedResult: @unchecked Sendable {
    private let lock = NSLock()
    private var result: Harness.Result?
    private var finished = false
    func set(_ r: Harness.Result?) { lock.lock(); result = r; finished = true; lock.unlock() }
    var done: Bool { lock.lock(); defer { lock.unlock() }; return finished }
    var value: Harness.Result? { lock.lock(); defer { lock.unlock() }; return result }
}
