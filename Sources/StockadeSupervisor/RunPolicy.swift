import Glibc
import Synchronization
import StockadeLinux
import StockadePolicy

/// The host-dependent parts of a profile, resolved for one run: the volumes
/// to mount (sources resolved), the secrets, and the seccomp policy. `ProfileDecoder` checks a profile's form; this checks it
/// against the machine (paths exist, files have safe modes, syscall names
/// are known).
public struct RunPolicy: Sendable {
    public var volumes: [Profile.Volume]
    public var secrets: RunSecrets
    public var seccomp: SeccompPolicy
}

/// Loads the seccomp policy a profile chooses: Stockade's default, or a
/// Docker/OCI seccomp file, then the profile's `allow` and `deny`.
public enum SeccompLoader {
    /// What `DockerSeccomp` needs from this machine, from libseccomp and uname(2).
    public static let host = DockerSeccomp.Host(
        syscallExists: { SeccompCompiler.syscallNumber($0) != nil },
        syscallNames: { (0..<1024).compactMap { SeccompCompiler.syscallName(Int32($0)) } },
        kernel: kernelVersion())

    static func kernelVersion() -> (major: Int, minor: Int) {
        var name = utsname()
        guard uname(&name) == 0 else { return (0, 0) }
        let release = withUnsafeBytes(of: name.release) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        let parts = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        return parts.count == 2 ? (parts[0], parts[1]) : (0, 0)
    }

    /// Stockade's default policy as built for the last few `seccomp` sections that chose it: a pure
    /// function of the section (its lists and action) and this host's syscall table, so it is built
    /// once per section rather than at every run (about 350 rules). A Docker file is read every time.
    private static let defaults = Mutex(RecentlyUsed<Profile.Seccomp, SeccompPolicy>(capacity: 8))

    public static func policy(for profile: Profile) throws(ProfileError) -> SeccompPolicy {
        let seccomp = profile.seccomp
        if case .stockade = seccomp.base, let hit = defaults.withLock({ $0.value(for: seccomp) }) { return hit }
        let policy = try build(seccomp)
        if case .stockade = seccomp.base {
            defaults.withLock { _ = $0.insert(seccomp, policy) }
        }
        return policy
    }

    private static func build(_ seccomp: Profile.Seccomp) throws(ProfileError) -> SeccompPolicy {
        let unknown = seccomp.unknownNames(syscallExists: host.syscallExists)
        let kill = seccomp.onViolation == .kill
        switch seccomp.base {
        case .stockade:
            if !unknown.isEmpty { throw ProfileError(source: nil, issues: unknown) }
            return .stockadeDefault(allow: seccomp.allow, deny: seccomp.deny, killOnViolation: kill)
        case .docker(let path):
            var issues = unknown
            var policy: SeccompPolicy?
            do {
                policy = try DockerSeccomp.policy(from: try document(path), host: host, killOnViolation: kill)
            } catch {
                issues += error.issues
            }
            guard let policy, issues.isEmpty else { throw ProfileError(source: nil, issues: issues) }
            return policy.adjusted(allow: seccomp.allow, deny: seccomp.deny)
        }
    }

    static func document(_ path: String) throws(ProfileError) -> JSONValue {
        let field = "seccomp.dockerProfile"
        let bytes: [UInt8]
        do {
            bytes = try FileReading.read(path, limit: 1 << 20)
        } catch {
            throw ProfileError(source: nil, issues: [ProfileIssue(field, error.description)])
        }
        do {
            return try StrictJSON.parse(bytes, limits: StrictJSON.Limits(maxBytes: 1 << 20, maxDepth: 16))
        } catch {
            throw ProfileError(source: nil, issues: [ProfileIssue(field, "\(path) is not valid JSON: \(error)")])
        }
    }
}

/// The checks `stockade profile check` adds to decoding: volumes (profile
/// volumes; the state-directory rule against `stateDirectory`), secret files,
/// and the seccomp policy (a Docker file is imported, names are looked up).
public enum ProfileHostCheck {
    public static func issues(_ profile: Profile, stateDirectory: String?) -> [ProfileIssue] {
        var issues = VolumePolicy.validate(VolumePolicy.entries(profile: profile.volumes, flags: []),
                                           allowedRoots: profile.allowedVolumeRoots, stateDirectory: stateDirectory).issues
        issues += SecretLoader.check(profile.secrets, hostEnvironment: nil)
        do {
            _ = try SeccompLoader.policy(for: profile)
        } catch {
            issues += error.issues
        }
        return issues
    }
}

extension Supervisor {
    /// Resolves what the profile (already merged with `options`, except
    /// volumes) needs from the host. Volume problems fail at stage `mounts`,
    /// secrets at `secrets`, seccomp at `seccomp`: all before anything runs.
    func runPolicy(for profile: Profile, options: RunOptions, secrets: RunSecrets) throws(SetupFailure) -> RunPolicy {
        try Self.runPolicy(for: profile, options: options, secrets: secrets, stateDirectory: stateDirectory)
    }

    static func runPolicy(for profile: Profile, options: RunOptions, secrets: RunSecrets, stateDirectory: String) throws(SetupFailure) -> RunPolicy {
        let check = VolumePolicy.validate(VolumePolicy.entries(profile: profile.volumes, flags: options.volumes),
                                          allowedRoots: profile.allowedVolumeRoots, stateDirectory: stateDirectory)
        guard check.issues.isEmpty else {
            throw SetupFailure(stage: .mounts, errno: 0, message: ProfileError(source: nil, issues: check.issues).description)
        }
        let seccomp: SeccompPolicy
        do {
            seccomp = try SeccompLoader.policy(for: profile)
        } catch {
            throw SetupFailure(stage: .seccomp, errno: 0, message: error.description)
        }
        return RunPolicy(volumes: check.volumes, secrets: secrets, seccomp: seccomp)
    }

    /// The run's secrets and every value to redact: the secrets proper and the
    /// values of variables the profile marks secret. Loaded once, before the
    /// run's first audit row, so the store knows them from the start; a failure
    /// is returned, to be thrown once the run is recorded.
    func loadSecrets(for profile: Profile, options: RunOptions) -> (RunSecrets, [String], SetupFailure?) {
        let secrets: RunSecrets
        do {
            secrets = try SecretLoader.load(profile.secrets, hostEnvironment: hostEnvironment)
        } catch {
            return (.none, [], SetupFailure(stage: .secrets, errno: 0, message: error.description))
        }
        var values = secrets.redactor.secrets.map { String(decoding: $0, as: UTF8.self) }
        let environment = planner.environment(for: profile, options: options, secrets: secrets)
        for name in profile.environment.secret {
            guard let value = environment.last(where: { $0.0 == name })?.1 else { continue }
            guard value.utf8.count >= 8 else {
                return (secrets, values, SetupFailure(stage: .secrets, message: "environment.secret: the value of \(name) is " +
                        "\(value.utf8.count) bytes; at least 8 are needed so that redacting it cannot garble ordinary output"))
            }
            values.append(value)
        }
        return (secrets, values, nil)
    }

    func listenForPublishedPorts(_ profile: Profile) throws(SetupFailure) -> PortForwarder? {
        guard !profile.network.publish.isEmpty else { return nil }
        do {
            return try PortForwarder.listen(mappings: profile.network.publish)
        } catch {
            throw SetupFailure(stage: error.stage, errno: error.errno, message: error.message)
        }
    }
}

extension Redactor {
    /// Captured output with every secret replaced; when the capture was cut
    /// at its cap, a secret's beginning left at the cut is dropped too.
    func redact(captured: CapturedOutput) -> [UInt8] {
        guard !isEmpty else { return captured.bytes }
        guard captured.truncated else { return redact(captured.bytes) }
        var stream = StreamRedactor(self)
        return stream.feed(captured.bytes)
    }
}

/// Redacts the worker's output as it streams to the terminal: one
/// `StreamRedactor` per stream, so secrets split across writes are caught.
final class RedactingOutput: Sendable {
    private let streams: Mutex<[Int32: StreamRedactor]>
    private let redactor: Redactor
    private let sink: @Sendable (Int32, [UInt8]) -> Void

    /// nil when there is nothing to redact or nowhere to write.
    init?(_ redactor: Redactor, _ sink: (@Sendable (Int32, [UInt8]) -> Void)?) {
        guard let sink, !redactor.isEmpty else { return nil }
        self.redactor = redactor
        self.sink = sink
        streams = Mutex([:])
    }

    @Sendable func write(_ stream: Int32, _ bytes: [UInt8]) {
        let clean = streams.withLock { s -> [UInt8] in
            var r = s[stream] ?? StreamRedactor(redactor)
            defer { s[stream] = r }
            return r.feed(bytes)
        }
        if !clean.isEmpty { sink(stream, clean) }
    }

    /// Emits what each stream still holds back.
    func finish() {
        let tails = streams.withLock { s -> [(Int32, [UInt8])] in
            defer { s = [:] }
            return s.keys.sorted().map { key in
                var r = s[key] ?? StreamRedactor(redactor)
                return (key, r.finish())
            }
        }
        for (stream, tail) in tails where !tail.isEmpty { sink(stream, tail) }
    }
}
