import CSQLite
import Glibc
import StockadeAudit

/// What `SQLiteBackup.copy` wrote.
public struct SQLiteBackupSummary: Sendable, Equatable {
    public let destination: String
    public let counts: AuditRowCounts
    /// The verified chain's last event; nil for an empty trail.
    public let head: AuditChainHead?
    /// The copy's size in bytes.
    public let bytes: Int64
}

/// `stockade audit backup`: a consistent copy of a live audit database (the trail, and the tables
/// stored beside it such as API tokens and idempotency keys), taken while supervisors keep writing.
///
/// SQLite's online backup API copies the pages in steps, all from one read transaction the source
/// connection holds from the first step to the last: in WAL mode a reader never blocks the writers,
/// and the copy is the database as of that snapshot (the backup never restarts because of a write).
/// The copy goes to a temporary file beside the destination, is switched from WAL to a rollback
/// journal (one self-contained file), its chain is verified, it is fsynced, and only then linked to
/// the destination name, which must not exist (a `link` never replaces a file). The directory is
/// fsynced last.
public enum SQLiteBackup {
    public static let defaultPagesPerStep: Int32 = 256

    /// Copies the database at `source` to `destination` (see the type). `progress` hears the pages
    /// still to copy and the total after each step but the last (while the snapshot is held).
    public static func copy(from source: String, to destination: String, pagesPerStep: Int32 = defaultPagesPerStep,
                            progress: (_ remaining: Int32, _ total: Int32) -> Void = { _, _ in }) throws(AuditError) -> SQLiteBackupSummary {
        guard pagesPerStep >= 1 else {
            throw AuditError(.invalidArgument, path: source, "pagesPerStep must be at least 1, not \(pagesPerStep)")
        }
        guard access(source, F_OK) == 0 else {
            throw AuditError(.storage, path: source, "there is no audit database here: nothing has run with this state directory (set --state-dir or STOCKADE_STATE_DIR)")
        }
        var status = stat()
        if lstat(destination, &status) == 0 {
            throw AuditError(.storage, path: destination, "the backup destination already exists: a backup never replaces a file; name a new one")
        }
        let directory = parentDirectory(of: destination)
        let name = destination.split(separator: "/").last.map(String.init) ?? destination
        let temporary = directory + "/." + name + ".partial-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else {
            let err = errno
            throw AuditError(.storage, path: temporary, errno: err,
                             "cannot create the backup's temporary file beside the destination (does \(directory) exist, and is it writable?)")
        }
        close(fd)
        defer { for suffix in ["", "-journal", "-wal", "-shm"] { unlink(temporary + suffix) } }

        try copyPages(from: source, to: temporary, pagesPerStep: pagesPerStep, progress: progress)
        let verification = try SQLiteAuditStore(readingAt: temporary).verifyChain()
        guard verification.isValid else {
            throw AuditError(.brokenChain, path: source,
                             "the copy's audit chain is broken at seq \(verification.firstBrokenSeq ?? 0): \(verification.reason ?? "hash mismatch"); the source is broken the same way (see `stockade audit verify`); no backup was written")
        }
        let counts = try SQLiteAuditBackend.open(path: temporary, readOnly: true).first("""
            SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM bundles), (SELECT count(*) FROM diffs), (SELECT count(*) FROM events)
            """, [], "count the rows of the copy") { AuditRowCounts(runs: $0.int64(0), bundles: $0.int64(1), diffs: $0.int64(2), events: $0.int64(3)) }
            ?? AuditRowCounts()
        let bytes = try syncFile(temporary)
        guard link(temporary, destination) == 0 else {
            let err = errno
            throw AuditError(.storage, path: destination, errno: err,
                             err == EEXIST ? "the backup destination appeared while the copy was made: a backup never replaces a file; name a new one"
                                 : "cannot put the backup in place")
        }
        unlink(temporary)
        try syncDirectory(directory)
        return SQLiteBackupSummary(destination: destination, counts: counts, head: verification.head, bytes: bytes)
    }

    /// The pages, from one read snapshot of the source; then the copy leaves WAL mode.
    private static func copyPages(from source: String, to temporary: String, pagesPerStep: Int32,
                                  progress: (Int32, Int32) -> Void) throws(AuditError) {
        let reader = try SQLiteAuditBackend.open(path: source, readOnly: true)
        // The snapshot starts at the first read and lasts until the ROLLBACK.
        try reader.execute("BEGIN; SELECT count(*) FROM chain_head", "start the backup's read snapshot")
        defer { try? reader.execute("ROLLBACK", "end the backup's read snapshot") }
        let copy = try SQLiteConnection(path: temporary, readOnly: false)
        try reader.backup(into: copy, pagesPerStep: pagesPerStep, busyTimeoutMilliseconds: SQLiteAuditBackend.busyTimeoutMilliseconds,
                          progress: progress)
        let mode = try copy.first("PRAGMA journal_mode = DELETE", [], "make the copy one self-contained file") { $0.text(0) }
        guard mode?.lowercased() == "delete" else {
            throw AuditError(.storage, path: temporary, "the copy stayed in \(mode ?? "unknown") journal mode; no backup was written")
        }
    }

    private static func parentDirectory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    /// fsync, and the size.
    private static func syncFile(_ path: String) throws(AuditError) -> Int64 {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw AuditError(.storage, path: path, errno: errno, "cannot reopen the backup copy to sync it") }
        defer { close(fd) }
        var status = stat()
        guard fsync(fd) == 0, fstat(fd, &status) == 0 else {
            throw AuditError(.storage, path: path, errno: errno, "cannot sync the backup copy to disk; no backup was written")
        }
        return Int64(status.st_size)
    }

    private static func syncDirectory(_ path: String) throws(AuditError) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw AuditError(.storage, path: path, errno: errno, "cannot open the backup's directory to sync it") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw AuditError(.storage, path: path, errno: errno, "cannot sync the backup's directory") }
    }
}
