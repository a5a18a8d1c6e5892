import Glibc
import StockadePolicy

/// One run as the engine asks for it: the command and per-run overrides of the profile.
public struct RunOptions: Sendable {
    public var command: [String]?
    public var profile: String = "default"
    public var memoryBytes: Int64?
    public var cpus: Double?
    public var pids: Int?
    public var timeoutSeconds: Double?
    public var network: Profile.NetworkMode?
    public var publish: [Profile.PortMapping] = []
    /// `--allow-host`: added to the profile's `network.egress.allow`; implies `network.mode` proxy.
    public var allowHosts: [EgressRule] = []
    /// Pinned names added to the profile's `network.hosts` (validated by the caller: `verify` pins
    /// its own test names to its loopback fixture).
    public var pinnedHosts: [String: String] = [:]
    /// Overrides the profile's `network.egress.allowPrivate` (for `verify`'s egress controls, which
    /// prove the address check with it off and the name checks with it on).
    public var allowPrivate: Bool?
    public var volumes: [Profile.Volume] = []
    public var environment: [(String, String)] = []
    public var workspace: String?
    public var request: String?
    /// `--label k=v`: recorded in `run.created`, shown and filtered by `audit runs`.
    public var labels: [String: String] = [:]
    /// `--name`: what a person calls the run, recorded in `run.created`.
    public var name: String?
    /// `-i`: a descriptor (the supervisor's stdin) copied into the worker's stdin until its end;
    /// nil keeps the worker's stdin /dev/null.
    public var input: Int32?
    /// The worker's root: an imported image, or a directory (else the profile's `root`).
    public var image: String?
    public var rootfs: String?
    /// The API principal (token name) that submitted the run, recorded in `run.created` as
    /// `submittedBy`: who may not decide the run's diff (see `review.allowSelfApproval`). Set by the
    /// service, never from a request body; nil for runs started from the command line.
    public var submittedBy: String?
    /// A run claimed from a shared run queue (`stockade serve --node`): the node running it, its
    /// attempt and the attempt it retries, recorded in `run.created`. Set by the service only.
    public var queuePlacement: QueuePlacement?

    public init(command: [String]? = nil) {
        self.command = command
    }
}

/// Where the state lives: `--state-dir`, else `$STOCKADE_STATE_DIR`, else
/// `$XDG_STATE_HOME/stockade`, else `~/.local/state/stockade`. A relative path is taken from the
/// current directory and made absolute here, once, so every part of a run (the audit store, the run
/// directories, the spawn helpers, a `serve` started from it) names the same directory.
public enum StateDirectory {
    public static func resolve(explicit: String?, environment: [String: String]) -> String {
        absolute(chosen(explicit: explicit, environment: environment))
    }

    private static func chosen(explicit: String?, environment: [String: String]) -> String {
        if let explicit, !explicit.isEmpty { return explicit }
        if let dir = environment["STOCKADE_STATE_DIR"], !dir.isEmpty { return dir }
        if let xdg = environment["XDG_STATE_HOME"], !xdg.isEmpty { return xdg + "/stockade" }
        let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? "/root"
        return home + "/.local/state/stockade"
    }

    /// `path` below the current directory when it is relative (its `..` left for the kernel to
    /// resolve); unchanged when the current directory cannot be read (it was removed), which the
    /// state directory's creation then reports.
    static func absolute(_ path: String) -> String {
        guard !path.hasPrefix("/"), let cwd = getcwd(nil, 0) else { return path }
        defer { free(cwd) }
        let base = String(cString: cwd)
        return (base.hasSuffix("/") ? base : base + "/") + path
    }
}

/// Where a queued run runs: recorded in its `run.created` as `node`, `attempt` and `retryOf`.
public struct QueuePlacement: Sendable, Equatable {
    public let node: String
    public let attempt: Int
    public let retryOf: String?

    public init(node: String, attempt: Int, retryOf: String?) {
        self.node = node
        self.attempt = attempt
        self.retryOf = retryOf
    }
}
