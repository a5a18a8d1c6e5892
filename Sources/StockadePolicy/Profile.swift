/// A resolved worker profile: what one kind of worker may use. Every field has
/// a safe default; `ProfileLoader` fills them in and rejects unknown keys.
public struct Profile: Sendable, Equatable {
    public var name: String = "default"
    public var description: String = ""
    /// The worker's ids inside its user namespace (0 only when the profile says so).
    public var user = User()
    public var hostname: String = "stockade"
    public var limits = Limits()
    public var network = Network()
    public var volumes: [Volume] = []
    /// When non-empty, every volume source must lie beneath one of these.
    public var allowedVolumeRoots: [String] = []
    public var tmpfs: [Tmpfs] = []
    public var environment = Environment()
    public var secrets: [Secret] = []
    public var seccomp = Seccomp()
    public var bundles = BundleBounds()
    public var review = Review()
    /// What the worker's `/` is: the host's system directories (the default), an imported image, or a directory.
    public var root: Root = .host

    public init() {}

    public enum Root: Sendable, Equatable {
        case host
        /// An imported OCI image, by NAME[:TAG] or manifest digest.
        case image(String)
        /// A directory tree, shown read-only as the root's only layer.
        case rootfs(String)
    }

    public struct User: Sendable, Equatable {
        public var uid: UInt32 = 1000
        public var gid: UInt32 = 1000
        public init() {}
    }

    public struct Limits: Sendable, Equatable {
        /// Below this a limit is refused: measured on Linux 6.1 (cgroup v2), 256 KiB is OOM-killed
        /// before `echo` runs, 512 KiB runs `echo`, 1 MiB runs `sh` and `perl`; 4 MiB leaves room
        /// for what init and the filter are charged on other kernels.
        public static let minimumMemoryBytes: Int64 = 4 << 20
        public var memoryBytes: Int64 = 256 << 20
        public var cpus: Double = 1
        public var pids: Int = 64
        public var timeoutSeconds: Double = 60
        public var stdoutBytes: Int = 1 << 20
        public var stderrBytes: Int = 1 << 20
        public var tmpBytes: Int64 = 64 << 20
        public var workspaceBytes: Int64 = 256 << 20
        public var resultBytes: Int64 = 64 << 20
        public var resultInodes: Int64 = 4096
        public var rlimits = Rlimits()
        public init() {}
    }

    public struct Rlimits: Sendable, Equatable {
        public var nofile: UInt64 = 256
        public var fsize: UInt64 = 256 << 20
        public var core: UInt64 = 0
        public var stack: UInt64 = 8 << 20
        public init() {}
    }

    public enum NetworkMode: String, Sendable, Equatable, CaseIterable {
        case none, loopback
        /// Only `lo`, with the supervisor's egress proxy on it: names the profile's
        /// `network.egress` admits are reachable through it, nothing else.
        case proxy
    }

    public struct PortMapping: Sendable, Equatable {
        public var hostPort: UInt16
        public var workerPort: UInt16
        public init(hostPort: UInt16, workerPort: UInt16) {
            self.hostPort = hostPort
            self.workerPort = workerPort
        }
    }

    public struct Network: Sendable, Equatable {
        public var mode: NetworkMode = .none
        public var publish: [PortMapping] = []
        /// Used in `proxy` mode only.
        public var egress = Egress()
        /// Pinned names for the proxy's resolver (as /etc/hosts): name to address, both validated.
        public var hosts: [String: String] = [:]
        public init() {}
    }

    public struct Volume: Sendable, Equatable {
        public var source: String
        public var target: String
        public var readOnly: Bool
        public init(source: String, target: String, readOnly: Bool = true) {
            self.source = source
            self.target = target
            self.readOnly = readOnly
        }
    }

    public struct Tmpfs: Sendable, Equatable {
        public var target: String
        public var sizeBytes: Int64
        public init(target: String, sizeBytes: Int64) {
            self.target = target
            self.sizeBytes = sizeBytes
        }
    }

    public struct Environment: Sendable, Equatable {
        /// Names passed through from the supervisor's environment.
        public var pass: [String] = []
        /// Values set for every worker.
        public var set: [String: String] = ["PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/workspace", "LANG": "C.UTF-8"]
        /// Names whose values, wherever they come from (`pass`, `set`, `--env`,
        /// a request manifest), are secrets: redacted like `secrets`.
        public var secret: [String] = []
        public init() {}
    }

    public enum SecretSource: Sendable, Equatable {
        case file(String)
        case environment(String)
    }

    /// A secret injected as environment variable `env`; its value never reaches a report, log or audit row.
    public struct Secret: Sendable, Equatable {
        public var env: String
        public var source: SecretSource
        public init(env: String, source: SecretSource) {
            self.env = env
            self.source = source
        }
    }

    public enum SeccompBase: Sendable, Equatable {
        case stockade
        /// A Docker/OCI seccomp JSON file.
        case docker(path: String)
    }

    public enum ViolationAction: String, Sendable, Equatable, CaseIterable {
        /// The denied call fails with EPERM and is recorded; the worker goes on.
        case errno
        /// The denied call is recorded and the worker is killed (outcome `seccomp`).
        case kill
    }

    public struct Seccomp: Sendable, Equatable {
        public var base: SeccompBase = .stockade
        public var allow: [String] = []
        public var deny: [String] = []
        public var onViolation: ViolationAction = .errno
        public init() {}
    }

    public struct Review: Sendable, Equatable {
        public var autoAcceptDiffs = false
        /// Whether the principal that submitted a run through the API may decide its diff.
        public var allowSelfApproval = false
        public init() {}
    }
}
