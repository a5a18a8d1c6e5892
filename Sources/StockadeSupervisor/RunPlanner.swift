import Glibc
import StockadeBundles
import StockadeImages
import StockadeLinux
import StockadePolicy

/// The pure part of a run's resolution: profile + per-run options + the request manifest + the
/// image's config in, one resolved run out (limits, network, user, command, environment, rlimits).
/// It touches no file, process or kernel object, so its table is tested without root
/// (`RunPlannerTests`). What depends on the host (volumes, secrets, seccomp names) is `RunPolicy`'s.
public struct RunPlanner: Sendable {
    /// The supervisor's own environment, which `environment.pass` draws from (and nothing else does).
    public var hostEnvironment: [String: String]

    public init(hostEnvironment: [String: String]) {
        self.hostEnvironment = hostEnvironment
    }

    /// What of an image the plan uses: its config and its user as ids in the worker's namespace.
    public struct Image: Sendable {
        public var config: ImageConfig
        public var uid: UInt32?
        public var gid: UInt32?
        public init(config: ImageConfig, uid: UInt32? = nil, gid: UInt32? = nil) {
            self.config = config
            self.uid = uid
            self.gid = gid
        }
        public init(_ record: ImageRecord) {
            self.init(config: record.config, uid: record.uid, gid: record.gid)
        }
    }

    /// One run as it will be: the profile with every per-run override applied, and the command.
    public struct ResolvedRun: Sendable {
        public var profile: Profile
        /// The options with the manifest's command and environment merged in (flags win).
        public var options: RunOptions
        /// Flags, else the request manifest's, else the image's `Entrypoint` + `Cmd`; empty: none.
        public var command: [String]
        /// The image's `WorkingDir`, when it has one.
        public var workdir: String?
        /// The image's `Env`, overridden by the profile and the run.
        public var imageEnvironment: [String]
    }

    /// The profile's limits and network as the run's options override them, so that what is
    /// recorded is what is enforced.
    public static func apply(_ options: RunOptions, to profile: inout Profile) {
        if let v = options.memoryBytes { profile.limits.memoryBytes = v }
        if let v = options.cpus { profile.limits.cpus = v }
        if let v = options.pids { profile.limits.pids = v }
        if let v = options.timeoutSeconds { profile.limits.timeoutSeconds = v }
        if let v = options.network { profile.network.mode = v }
        profile.network.publish += options.publish
        profile.network.egress.allow += options.allowHosts
        if !options.allowHosts.isEmpty { profile.network.mode = .proxy }
        profile.network.hosts.merge(options.pinnedHosts) { $1 }
        if let v = options.allowPrivate { profile.network.egress.allowPrivate = v }
        // Publishing needs the worker's loopback up (it is still the worker's only interface).
        if !profile.network.publish.isEmpty && profile.network.mode == .none { profile.network.mode = .loopback }
        // A profile a submitter names by path is one it may have written itself (through a volume of
        // an earlier run, or any file on the host): its review rules cannot loosen the review of that
        // submitter's own run. Only a profile the service finds by name may.
        if options.submittedBy != nil && ProfileCatalog.isPath(options.profile) {
            profile.review.allowSelfApproval = false
            profile.review.autoAcceptDiffs = false
        }
        // Volumes from options are checked (as `--volume[i]`) and added by `runPolicy(for:options:)`.
    }

    /// The run: options over the profile, the image's user, then the command and environment from
    /// the flags, the request manifest and the image, in that order of precedence.
    public func resolve(profile base: Profile, options baseOptions: RunOptions, image: Image?,
                        manifest: BundleManifest?) -> ResolvedRun {
        var profile = base
        Self.apply(baseOptions, to: &profile)
        if let image, let uid = image.uid {
            profile.user.uid = uid
            profile.user.gid = image.gid ?? uid
        }
        var options = baseOptions
        if let manifest {
            if options.command == nil { options.command = manifest.command }
            let fromFlags = Set(options.environment.map(\.0))
            for (k, v) in (manifest.env ?? [:]).sorted(by: { $0.key < $1.key }) where !fromFlags.contains(k) {
                options.environment.append((k, v))
            }
        }
        if options.command?.isEmpty ?? true, let config = image?.config {
            let fromImage = (config.entrypoint ?? []) + (config.cmd ?? [])
            if !fromImage.isEmpty { options.command = fromImage }
        }
        return ResolvedRun(profile: profile, options: options, command: options.command ?? [],
                           workdir: image?.config.workingDir, imageEnvironment: image?.config.env ?? [])
    }

    /// Only what the profile passes or sets, then per-run values, then the
    /// profile's secrets (which nothing overrides); nothing else of the supervisor's.
    public func environment(for profile: Profile, options: RunOptions, secrets: RunSecrets = .none, image: [String] = []) -> [(String, String)] {
        var env: [String: String] = [:]
        // The image's Env first: the profile and the run override it.
        for entry in image {
            if let eq = entry.firstIndex(of: "=") { env[String(entry[..<eq])] = String(entry[entry.index(after: eq)...]) }
        }
        for name in profile.environment.pass {
            if let value = hostEnvironment[name] { env[name] = value }
        }
        for (k, v) in profile.environment.set { env[k] = v }
        if profile.network.mode == .proxy {
            // The proxy is the only way out: every common client finds it here (curl reads only lower-case http_proxy).
            let http = "http://127.0.0.1:\(EgressProxy.port)"
            for (k, v) in [("HTTP_PROXY", http), ("HTTPS_PROXY", http), ("ALL_PROXY", "socks5h://127.0.0.1:\(EgressProxy.port)"),
                           ("NO_PROXY", "localhost,127.0.0.1,::1")] {
                env[k] = v
                env[k.lowercased()] = v
            }
        }
        for (k, v) in options.environment { env[k] = v }
        for (k, v) in secrets.environment { env[k] = v }
        return env.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
    }

    /// The worker's resource limits: the profile's, and none a worker could use against the host
    /// (no real-time priority, 64 KiB of locked memory).
    public static func rlimits(for profile: Profile) -> [(Int32, UInt64, UInt64)] {
        let r = profile.limits.rlimits
        return [
            (Int32(RLIMIT_CORE.rawValue), r.core, r.core),
            (Int32(RLIMIT_NOFILE.rawValue), r.nofile, r.nofile),
            (Int32(RLIMIT_FSIZE.rawValue), r.fsize, r.fsize),
            (Int32(RLIMIT_STACK.rawValue), r.stack, r.stack),
            (Int32(__RLIMIT_RTPRIO.rawValue), 0, 0),
            (Int32(__RLIMIT_MEMLOCK.rawValue), 64 << 10, 64 << 10),
        ]
    }
}
