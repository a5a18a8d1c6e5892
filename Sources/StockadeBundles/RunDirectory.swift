import CStockade
import Glibc
import StockadePolicy
import Synchronization
import SystemPackage

/// One run's directory, `<state>/runs/<run-id>/` (mode 0700), with `logs/` beneath it, `request/`,
/// `result/`, `upper/` and `image-root/` when the run has a request bundle, a result bundle to copy,
/// a workspace or an image (`makeSubdirectory`), and
/// `report.json` once the run is finished. A run makes only what it uses: on a filesystem such as ext4
/// each directory is an inode and a block allocated in the run's path.
///
/// While the object is open it holds an exclusive `flock` on `<run>/.lock`: that is how
/// `collectGarbage` tells a running run (lock held, by this or another supervisor process) from a
/// finished or abandoned one. `close()` (or deinit) releases the lock and the directory descriptor.
public final class RunDirectory: Sendable {
    public static let requestName = "request"
    public static let resultName = "result"
    public static let upperName = "upper"
    public static let imageRootName = "image-root"
    public static let logsName = "logs"
    public static let reportName = "report.json"
    public static let lockName = ".lock"
    /// Made with the run directory; `request/`, `result/`, `upper/` and `image-root/` only when a run
    /// asks (`makeSubdirectory`): most runs leave no result bundle.
    static let subdirectories = [logsName]

    private struct Handles: Sendable {
        var directory: Int32
        var lock: Int32
    }

    public let runId: String
    /// `<state>/runs/<run-id>`.
    public let path: String
    private let handles: Mutex<Handles?>

    public var requestPath: String { path + "/" + Self.requestName }
    public var resultPath: String { path + "/" + Self.resultName }
    /// Where the workspace's bounded tmpfs is mounted, in a private mount namespace only.
    public var upperPath: String { path + "/" + Self.upperName }
    public var logsPath: String { path + "/" + Self.logsName }
    public var reportPath: String { path + "/" + Self.reportName }

    /// An `O_DIRECTORY` descriptor of the run directory, valid until `close()`; nil after it.
    public var descriptor: Int32? { handles.withLock { $0?.directory } }

    /// Whether the lock is still held (the object has not been closed).
    public var isOpen: Bool { handles.withLock { $0 != nil } }

    private init(runId: String, path: String, directory: Int32, lock: Int32) {
        self.runId = runId
        self.path = path
        self.handles = Mutex(Handles(directory: directory, lock: lock))
    }

    deinit { close() }

    /// Releases the lock (the run now counts as finished for `collectGarbage`) and closes the
    /// directory descriptor. Idempotent.
    public func close() {
        guard let open = handles.withLock({ state -> Handles? in
            defer { state = nil }
            return state
        }) else { return }
        _ = flock(open.lock, LOCK_UN)
        Glibc.close(open.lock)
        Glibc.close(open.directory)
    }

    /// Makes `request/`, `result/`, `upper/` or `image-root/` (mode 0700) for a run that uses it, relative to the
    /// run directory's descriptor, and returns its path. Fails if it exists: the run directory is new,
    /// and only the supervisor writes in it.
    public func makeSubdirectory(_ name: String) throws(BundleError) -> String {
        precondition([Self.requestName, Self.resultName, Self.upperName, Self.imageRootName].contains(name), "not a subdirectory made on demand: \(name)")
        guard let directory = descriptor else {
            throw BundleError(.runDirectoryFailed, path: path, "the run directory is closed; make \(name)/ before close()")
        }
        if mkdirat(directory, name, 0o700) != 0 {
            throw Self.failure(path + "/" + name, errno, "cannot create the run's \(name) directory")
        }
        return path + "/" + name
    }

    /// Makes `<stateDirectory>/runs/<runId>/` (creating the state and `runs` directories when
    /// missing), its subdirectories, and takes the run's lock. Fails if the run directory exists.
    public static func create(stateDirectory: String, runId: String) throws(BundleError) -> RunDirectory {
        try validate(runId: runId)
        try makeDirectories(stateDirectory)
        let runs = try openRuns(stateDirectory, create: true)
        defer { Glibc.close(runs) }
        let path = stateDirectory + "/runs/" + runId
        var existing = stat()
        if fstatat(runs, runId, &existing, AT_SYMLINK_NOFOLLOW) == 0 {
            throw BundleError(.runDirectoryExists, path: path,
                              "the run directory already exists: run ids must be unique; pick a new id")
        }
        // Built under a dot name that gc treats as a run of its own (so a crash here is still
        // collected), locked, then renamed into place: gc never sees the real name unlocked.
        let building = creatingPrefix + runId
        if mkdirat(runs, building, 0o700) != 0 {
            let code = errno
            if code == EEXIST {
                throw BundleError(.runDirectoryExists, path: path, errno: code,
                                  "a run directory with this id is being created: run ids must be unique; pick a new id")
            }
            throw failure(path, code, "cannot create the run directory")
        }
        let run: RunDirectory
        do {
            run = try populate(runs: runs, building: building, runId: runId, path: path)
        } catch {
            discard(runs: runs, name: building)
            throw error
        }
        if stk_renameat2(runs, building, runs, runId, 1 /* RENAME_NOREPLACE */) != 0 {
            let code = errno
            run.close()
            discard(runs: runs, name: building)
            if code == EEXIST {
                throw BundleError(.runDirectoryExists, path: path, errno: code,
                                  "the run directory already exists: run ids must be unique; pick a new id")
            }
            throw failure(path, code, "cannot move the new run directory into place")
        }
        return run
    }

    static let creatingPrefix = ".creating-"

    /// Opens the directory being built, fixes its mode, takes the lock and makes the subdirectories.
    private static func populate(runs: Int32, building: String, runId: String, path: String) throws(BundleError) -> RunDirectory {
        let directory = openat(runs, building, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if directory < 0 { throw failure(path, errno, "cannot open the new run directory") }
        // mkdirat honours the umask; the mode is part of the contract.
        if fchmod(directory, 0o700) != 0 {
            let code = errno
            Glibc.close(directory)
            throw failure(path, code, "cannot set the run directory's mode to 0700")
        }
        let lock = openat(directory, lockName, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        if lock < 0 || flock(lock, LOCK_EX | LOCK_NB) != 0 {
            let code = errno
            if lock >= 0 { Glibc.close(lock) }
            Glibc.close(directory)
            throw failure(path + "/" + lockName, code, "cannot create and lock the run's lock file")
        }
        let run = RunDirectory(runId: runId, path: path, directory: directory, lock: lock)
        for name in subdirectories where mkdirat(directory, name, 0o700) != 0 {
            let code = errno
            run.close()
            throw failure(path + "/" + name, code, "cannot create the run's \(name) directory")
        }
        return run
    }

    /// Best-effort removal of a half-made run directory; gc removes what is left.
    private static func discard(runs: Int32, name: String) {
        let directory = openat(runs, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard directory >= 0 else { return }
        defer { Glibc.close(directory) }
        var st = stat()
        guard fstat(directory, &st) == 0 else { return }
        var remover = TreeRemover(top: directory, device: st.st_dev, topPath: name)
        if (try? remover.empty(directory, depth: 0, path: name)) != nil {
            _ = unlinkat(runs, name, AT_REMOVEDIR)
        }
    }

    // MARK: Garbage collection

    /// The current wall-clock time in seconds since the epoch, the `now` of `collectGarbage`.
    public static func currentTime() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }

    /// Removes the finished run directories under `<stateDirectory>/runs` whose age (from the
    /// mtime of `report.json`, else of the directory) is at least `seconds`, and returns their run
    /// ids (or `.creating-<id>` for one a crash left half-made), sorted. A run whose lock is held
    /// is never removed. Removal never follows a link: each directory is opened with
    /// `O_NOFOLLOW | O_DIRECTORY`, made searchable if the worker left it mode 000, and emptied with
    /// `unlinkat`; it never crosses into another mount.
    public static func collectGarbage(stateDirectory: String, olderThan seconds: Double,
                                      now: Double = currentTime()) throws(BundleError) -> [String] {
        let runs: Int32
        do {
            runs = try openRuns(stateDirectory, create: false)
        } catch let error where error.errno == ENOENT {
            return []
        }
        defer { Glibc.close(runs) }
        var runsStat = stat()
        guard fstat(runs, &runsStat) == 0 else { throw failure(stateDirectory + "/runs", errno, "cannot stat") }
        let listed: [[UInt8]]
        switch DirectoryEntries.names(runs, limit: Int.max) {
        case .success(let result): listed = result.names
        case .failure(let problem):
            throw failure(stateDirectory + "/runs", problem.rawValue, "cannot list the run directories")
        }
        var removed: [String] = []
        for raw in listed {
            guard let runId = String(validating: raw, as: UTF8.self), isRunDirectoryName(runId) else {
                continue  // Not a name `create` makes: not ours to remove.
            }
            let path = stateDirectory + "/runs/" + runId
            if try collect(runs: runs, runId: runId, path: path, device: runsStat.st_dev,
                           cutoff: now - seconds) {
                removed.append(runId)
            }
        }
        return removed.sorted()
    }

    /// Removes these finished run directories whatever their age (never a locked,
    /// running one, nor a name `create` does not make); returns the ids removed.
    public static func remove(stateDirectory: String, runIds: [String]) throws(BundleError) -> [String] {
        let runs: Int32
        do {
            runs = try openRuns(stateDirectory, create: false)
        } catch let error where error.errno == ENOENT {
            return []
        }
        defer { Glibc.close(runs) }
        var runsStat = stat()
        guard fstat(runs, &runsStat) == 0 else { throw failure(stateDirectory + "/runs", errno, "cannot stat") }
        var removed: [String] = []
        for runId in runIds where isRunDirectoryName(runId) {
            if try collect(runs: runs, runId: runId, path: stateDirectory + "/runs/" + runId, device: runsStat.st_dev,
                           cutoff: .infinity) {
                removed.append(runId)
            }
        }
        return removed
    }

    /// Removes one run directory if it is old enough and not locked; true when it was removed.
    private static func collect(runs: Int32, runId: String, path: String, device: dev_t,
                                cutoff: Double) throws(BundleError) -> Bool {
        var st = stat()
        guard fstatat(runs, runId, &st, AT_SYMLINK_NOFOLLOW) == 0, st.st_mode & S_IFMT == S_IFDIR else {
            return false
        }
        let directory = openat(runs, runId, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if directory < 0 { throw failure(path, errno, "cannot open the run directory") }
        defer { Glibc.close(directory) }
        guard fstat(directory, &st) == 0, st.st_dev == device else { return false }
        var age = st.st_mtim
        var report = stat()
        if fstatat(directory, reportName, &report, AT_SYMLINK_NOFOLLOW) == 0, report.st_mode & S_IFMT == S_IFREG {
            age = report.st_mtim
        }
        guard Double(age.tv_sec) + Double(age.tv_nsec) / 1e9 <= cutoff else { return false }

        let lock = openat(directory, lockName, O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        if lock < 0 && errno != ENOENT { throw failure(path + "/" + lockName, errno, "cannot open the run's lock file") }
        defer { if lock >= 0 { Glibc.close(lock) } }
        if lock >= 0 && flock(lock, LOCK_EX | LOCK_NB) != 0 {
            if errno == EWOULDBLOCK { return false }  // Still running.
            throw failure(path + "/" + lockName, errno, "cannot test the run's lock")
        }
        var remover = TreeRemover(top: directory, device: device, topPath: path)
        try remover.empty(directory, depth: 0, path: path)
        if unlinkat(runs, runId, AT_REMOVEDIR) != 0 {
            throw BundleError(.garbageCollectionFailed, path: path, errno: errno,
                              "emptied the run directory but cannot remove it: \(DirectoryEntries.describe(errno))")
        }
        return true
    }

    // MARK: Durations

    /// Parses an `--older-than` duration: a number of seconds, or a number followed by `s`, `m`,
    /// `h` or `d` (`30s`, `15m`, `12h`, `7d`, `3600`, `1.5h`). The error names the text.
    public static func parseDuration(_ text: String) throws(BundleError) -> Double {
        guard let seconds = DurationText.parse(text) else {
            throw BundleError(.invalidDuration,
                              "\"\(text)\" is not a duration: write a number of seconds, optionally with a unit s, m, h or d (30s, 15m, 12h, 7d)")
        }
        return seconds
    }

    // MARK: Helpers

    static func validate(runId: String) throws(BundleError) {
        let bytes = Array(runId.utf8)
        let allowed = bytes.allSatisfy { byte in
            (0x30...0x39).contains(byte) || (0x41...0x5A).contains(byte) || (0x61...0x7A).contains(byte)
                || byte == 0x2D || byte == 0x5F || byte == 0x2E
        }
        guard !bytes.isEmpty, bytes.count <= 128, allowed, bytes.first != 0x2E else {
            throw BundleError(.invalidRunId, path: runId,
                              "a run id must be 1 to 128 characters of A-Z, a-z, 0-9, '-', '_' or '.', not starting with '.'")
        }
    }

    /// A run id, or the name of one still being created (left so by a crash).
    private static func isRunDirectoryName(_ name: String) -> Bool {
        let id = name.hasPrefix(creatingPrefix) ? String(name.dropFirst(creatingPrefix.count)) : name
        return (try? validate(runId: id)) != nil
    }

    private static func failure(_ path: String, _ code: Int32, _ what: String) -> BundleError {
        BundleError(.runDirectoryFailed, path: path, errno: code, "\(what): \(DirectoryEntries.describe(code))")
    }

    /// `mkdir -p` for the operator's state directory (a trusted path: symlinks in it are followed).
    private static func makeDirectories(_ path: String) throws(BundleError) {
        // One mkdir when it exists (every run after the first); the walk from the root only when not.
        if mkdir(path, 0o700) == 0 || errno == EEXIST { return }
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST {
                throw failure(prefix, errno, "cannot create the state directory")
            }
        }
    }

    private static func openRuns(_ stateDirectory: String, create: Bool) throws(BundleError) -> Int32 {
        let state = open(stateDirectory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if state < 0 { throw failure(stateDirectory, errno, "cannot open the state directory") }
        defer { Glibc.close(state) }
        if create && mkdirat(state, "runs", 0o700) != 0 && errno != EEXIST {
            throw failure(stateDirectory + "/runs", errno, "cannot create the runs directory")
        }
        let runs = openat(state, "runs", O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if runs < 0 { throw failure(stateDirectory + "/runs", errno, "cannot open the runs directory") }
        return runs
    }
}
