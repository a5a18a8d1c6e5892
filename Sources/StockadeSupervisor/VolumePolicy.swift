import Glibc
import StockadePolicy

/// Decides which host paths a worker may see as volumes. Each source is
/// resolved once (realpath) and the resolved path is both what is checked and
/// what is mounted: the mount opens it without following any link
/// (`stk_clone_tree` with `STK_CLONE_NO_SYMLINKS`), so a link swapped into the
/// path after the check, by whoever can write its directories (another run's
/// worker through its own writable volume, say), fails the run instead of
/// redirecting the mount.
///
/// Bind mounts are read-only unless `rw` is given, and always nosuid and
/// nodev (`RootLayout`).
public enum VolumePolicy {
    /// A volume and the field it came from (`volumes[2]`, `--volume[0]`).
    public struct Entry: Sendable, Equatable {
        public var field: String
        public var volume: Profile.Volume

        public init(field: String, volume: Profile.Volume) {
            self.field = field
            self.volume = volume
        }
    }

    /// The volumes to mount (sources resolved) and every problem found.
    public struct Check: Sendable, Equatable {
        public var volumes: [Profile.Volume]
        public var issues: [ProfileIssue]
    }

    /// Kernel interfaces and the host's device tree: never shown to a worker.
    static let kernelTrees = ["/proc", "/sys", "/dev"]
    /// Container engines' state and sockets (and the host's message bus): a
    /// worker that reaches one controls the host. A source inside one, equal
    /// to one or containing one is refused.
    static let engineTrees = ["/run/containerd", "/var/lib/containerd", "/var/lib/docker", "/run/docker", "/run/podman",
                              "/var/lib/containers", "/run/crio", "/var/run/crio", "/run/dbus", "/var/run/dbus"]
    static let engineSocketNames: Set<String> = ["docker.sock", "containerd.sock", "podman.sock", "crio.sock"]
    /// Worker paths a volume must not cover: the sandbox's own structure and the read-only system view.
    static let reservedTargets = ["/proc", "/dev", "/sys", "/sandbox", "/usr", "/etc", "/bin", "/sbin"]

    /// The profile's volumes as `volumes[i]`, then the command line's as `--volume[i]`.
    public static func entries(profile: [Profile.Volume], flags: [Profile.Volume]) -> [Entry] {
        profile.enumerated().map { Entry(field: "volumes[\($0.offset)]", volume: $0.element) }
            + flags.enumerated().map { Entry(field: "--volume[\($0.offset)]", volume: $0.element) }
    }

    /// Checks every entry; `stateDirectory` nil skips the state-directory rule.
    public static func validate(_ entries: [Entry], allowedRoots: [String], stateDirectory: String?) -> Check {
        var issues: [ProfileIssue] = []
        var volumes: [Profile.Volume] = []
        let roots = allowedRoots.map { resolvedIfPresent($0) }
        let state = stateDirectory.map { resolvedIfPresent($0) }
        var targets: [String: String] = [:]
        for entry in entries {
            let targetIssue = targetProblem(entry.volume.target)
            if let targetIssue {
                issues.append(ProfileIssue("\(entry.field).target", targetIssue))
            } else if let earlier = targets[entry.volume.target] {
                issues.append(ProfileIssue("\(entry.field).target", "\(entry.volume.target) is already the target of \(earlier)"))
            } else {
                targets[entry.volume.target] = entry.field
            }
            switch resolveSource(entry.volume.source, allowedRoots: roots, stateDirectory: state) {
            case .failure(let problem):
                issues.append(ProfileIssue("\(entry.field).source", problem.reason))
            case .success(let resolved):
                if targetIssue == nil {
                    volumes.append(Profile.Volume(source: resolved, target: entry.volume.target, readOnly: entry.volume.readOnly))
                }
            }
        }
        return Check(volumes: volumes, issues: issues)
    }

    struct Problem: Error {
        let reason: String
    }

    /// The resolved source, or why it may not be a volume.
    static func resolveSource(_ source: String, allowedRoots: [String], stateDirectory: String?) -> Result<String, Problem> {
        guard source.hasPrefix("/"), !source.utf8.contains(0) else {
            return .failure(Problem(reason: "must be an absolute host path, found \(source)"))
        }
        if let name = source.split(separator: "/").last, engineSocketNames.contains(String(name)) {
            return .failure(Problem(reason: "\(source) is a container engine socket: a worker that reaches it controls the host"))
        }
        guard let resolved = realPath(source) else {
            let e = errno
            if e == ENOENT { return .failure(Problem(reason: "\(source) does not exist")) }
            return .failure(Problem(reason: "cannot resolve \(source): \(String(cString: strerror(e)))"))
        }
        let shown = resolved == source ? source : "\(source) (resolves to \(resolved))"
        if resolved == "/" {
            return .failure(Problem(reason: "\(shown) is the host's root directory"))
        }
        for tree in kernelTrees where isBeneath(resolved, tree) {
            return .failure(Problem(reason: "\(shown) is inside \(tree): kernel and device interfaces are never volumes"))
        }
        let name = resolved.split(separator: "/").last.map(String.init) ?? ""
        if engineSocketNames.contains(name) {
            return .failure(Problem(reason: "\(shown) is a container engine socket: a worker that reaches it controls the host"))
        }
        for tree in engineTrees where isBeneath(resolved, tree) || isBeneath(tree, resolved) {
            return .failure(Problem(reason: "\(shown) \(isBeneath(resolved, tree) ? "is inside" : "contains") \(tree), container engine or host bus state a worker must never reach"))
        }
        if let state = stateDirectory {
            if isBeneath(resolved, state) {
                return .failure(Problem(reason: "\(shown) is inside the state directory \(state) (run directories and the audit database)"))
            }
            if isBeneath(state, resolved) {
                return .failure(Problem(reason: "\(shown) contains the state directory \(state) (run directories and the audit database)"))
            }
        }
        var st = stat()
        guard lstat(resolved, &st) == 0 else {
            return .failure(Problem(reason: "cannot inspect \(shown): \(String(cString: strerror(errno)))"))
        }
        let kind = st.st_mode & S_IFMT
        guard kind == S_IFDIR || kind == S_IFREG else {
            return .failure(Problem(reason: "\(shown) is \(kindName(kind)): only directories and regular files can be volumes"))
        }
        if !allowedRoots.isEmpty && !allowedRoots.contains(where: { isBeneath(resolved, $0) }) {
            let detail = resolved == source ? "" : " (\(source) resolves to \(resolved))"
            return .failure(Problem(reason: "not under an allowed root \(allowedRoots.joined(separator: ", "))\(detail)"))
        }
        return .success(resolved)
    }

    /// Why `target` cannot be a volume's place in the worker, or nil.
    static func targetProblem(_ target: String) -> String? {
        guard target.hasPrefix("/") else { return "must be an absolute path, found \(target)" }
        if target == "/" { return "cannot be the worker's root directory" }
        if target.utf8.contains(where: { $0 < 0x20 || $0 == 0x7F }) { return "contains a control character" }
        let parts = target.dropFirst().split(separator: "/", omittingEmptySubsequences: false)
        if parts.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) {
            return "must be a normalized path (no empty, \".\" or \"..\" components, no trailing slash), found \(target)"
        }
        if let first = parts.first, first.hasPrefix("lib") {
            return "\(target) is inside /\(first), part of the read-only system view"
        }
        for reserved in reservedTargets where isBeneath(target, reserved) {
            return "\(target) is inside \(reserved), which the sandbox itself provides"
        }
        return nil
    }

    /// Whether `path` is `ancestor` or lies beneath it (both absolute and normalized).
    static func isBeneath(_ path: String, _ ancestor: String) -> Bool {
        if ancestor == "/" { return true }
        return path == ancestor || path.hasPrefix(ancestor + "/")
    }

    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// `path` resolved when it exists (so that comparisons see through symlinks), else as given.
    static func resolvedIfPresent(_ path: String) -> String {
        realPath(path) ?? (path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path)
    }

    static func kindName(_ kind: mode_t) -> String {
        switch kind {
        case S_IFSOCK: "a socket"
        case S_IFIFO: "a FIFO"
        case S_IFCHR: "a character device"
        case S_IFBLK: "a block device"
        case S_IFLNK: "a symbolic link"
        default: "not a directory or regular file"
        }
    }
}
