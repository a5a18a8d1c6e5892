import ArgumentParser
import Glibc
import StockadeAudit
import StockadeAuditSQLite
import StockadePolicy
import StockadeStore
import StockadeSupervisor

/// Which store `audit backup|export|import` work on: `--store URL`, else `$STOCKADE_STORE`, else the
/// state directory's `audit.sqlite`; `--store` and `--state-dir` together are refused.
struct TransferStoreOptions: ParsableArguments {
    @Option(help: "The audit store: sqlite:///PATH, postgres://USER@HOST:PORT/DB or postgresql:///DB?host=/SOCKET/DIR (else $STOCKADE_STORE, else the state directory's audit.sqlite).")
    var store: String?

    func validate(_ state: StateOptions) throws {
        if store != nil, state.stateDir != nil {
            throw ValidationError("--store: names the store by its URL; leave out --state-dir (or --store)")
        }
        _ = try resolved(state)
    }

    /// The store's URL (`--store`, else `$STOCKADE_STORE`, else `<state>/audit.sqlite`, as every command
    /// chooses it), and whether it is the state directory's own file (created with its directory).
    func resolved(_ state: StateOptions) throws -> (url: StoreURL, inStateDirectory: Bool) {
        let url = try resolveStore(state, store)
        if case .sqlite(let path) = url, path == StoreOpener.defaultPath(stateDirectory: state.resolved()) { return (url, true) }
        return (url, false)
    }
}

extension AuditCommand {
    struct Backup: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "backup",
            abstract: "Copy the SQLite audit database while runs keep writing; verify the copy.",
            discussion: """
                SQLite's online backup API copies the database (the trail, API tokens and idempotency \
                keys) from one read snapshot into a temporary file beside DEST, which is verified, \
                fsynced and renamed to DEST; DEST must not exist. Restore: stop the service, move \
                <state>/audit.sqlite and its -wal and -shm files aside, copy the backup to \
                <state>/audit.sqlite (mode 0600), run `stockade audit verify`. A PostgreSQL store is \
                backed up with pg_dump: this command prints the exact command.
                """)
        @Argument(help: "The backup file to create (must not exist).") var destination: String
        @OptionGroup var state: StateOptions
        @OptionGroup var storeOptions: TransferStoreOptions
        @Flag(help: "The summary as one JSON object.") var json = false

        func validate() throws {
            try storeOptions.validate(state)
            if destination.isEmpty { throw ValidationError("DEST: name the backup file to create") }
        }

        func run() throws {
            let source: String
            switch try storeOptions.resolved(state).url {
            case .sqlite(let path):
                source = path
            case .postgres(let url):
                Console.error("""
                    stockade: audit backup copies a SQLite store only; back up the PostgreSQL store \(url) with pg_dump \
                    (the password from $PGPASSWORD or ~/.pgpass):
                      \(PostgresDumpCommand.dump(url, to: destination))
                    and restore it into an empty database with:
                      \(PostgresDumpCommand.restore(url, from: destination))
                    """)
                throw ExitCode(1)
            }
            let summary: SQLiteBackupSummary
            do throws(AuditError) {
                summary = try SQLiteBackup.copy(from: source, to: destination)
            } catch {
                Console.error("stockade: audit backup: \(error)")
                throw ExitCode(1)
            }
            let head = summary.head ?? AuditChainHead(seq: 0, hash: String(repeating: "0", count: 64))
            if json {
                Console.out(JSONValue.object([
                    "backup": .string(summary.destination), "source": .string(source), "bytes": .number(summary.bytes),
                    "runs": .number(summary.counts.runs), "bundles": .number(summary.counts.bundles), "diffs": .number(summary.counts.diffs),
                    "events": .number(summary.counts.events), "headSeq": .number(head.seq), "headHash": .string(head.hash),
                ]).serialized())
            } else {
                Console.out("backed up \(source) to \(summary.destination): \(summary.counts.events) events, \(summary.counts.runs) runs, head seq \(head.seq), \(summary.bytes) bytes; the copy's chain verifies")
            }
        }
    }

    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "export",
            abstract: "Write the whole audit trail as JSON lines (runs, bundles, diffs, events) from one snapshot.",
            discussion: """
                The first line names the format and version, the last one the counts and the chain \
                head, so a truncated file is refused by `audit import`. The chain is verified as it is \
                written: a broken chain exits 1 without the last line. API tokens are not part of the \
                trail and are not exported.
                """)
        @OptionGroup var state: StateOptions
        @OptionGroup var storeOptions: TransferStoreOptions
        @Option(help: "Write the export to this new file (fsynced, then renamed into place) instead of stdout.") var output: String?

        func validate() throws {
            try storeOptions.validate(state)
            if let output, output.isEmpty || output == "-" { throw ValidationError("--output: name a new file, or leave --output out for stdout") }
        }

        func run() throws {
            let (url, _) = try storeOptions.resolved(state)
            var sink = LineSink(descriptor: 1)
            do throws(AuditError) {
                if let output { sink = try LineSink(creating: output) }
            } catch {
                Console.error("stockade: --output: \(error)")
                throw ExitCode(1)
            }
            let summary: AuditTransferSummary
            do {
                switch url {
                case .sqlite(let path):
                    summary = try SQLiteAuditStore(readingAt: path).exportTrail { line in try sink.write(line) }
                case .postgres(let postgres):
                    // Read-only: nothing is migrated; a store whose schema is not current is refused.
                    summary = try StoreOpener.postgresSupport(postgres.description)
                        .exportTrail(postgres, environment: ProcessEnvironment.current()) { line in try sink.write(line) }
                }
                try sink.finish()
            } catch {
                sink.abandon()
                Console.error("stockade: audit export: \(error)")
                throw ExitCode(1)
            }
            if let output {
                Console.out("exported \(url) to \(output): \(summary.counts.runs) runs, \(summary.counts.bundles) bundles, \(summary.counts.diffs) diffs, \(summary.counts.events) events, head seq \(summary.head.seq)")
            }
        }
    }

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "import",
            abstract: "Load an `audit export` into an empty store, checking every line and the hash chain.",
            discussion: """
                Everything is written in one transaction: a line that fails a check (named by its \
                number and key), a broken chain, counts or a chain head that differ from the last line, \
                or a truncated file leave the store unchanged (exit 1). A store that already holds rows \
                is refused. API tokens are not part of an export: create them again on the new store.
                """)
        @Argument(help: "The export file, or - for stdin.") var file: String
        @OptionGroup var state: StateOptions
        @OptionGroup var storeOptions: TransferStoreOptions
        @Flag(help: "The summary as one JSON object.") var json = false

        func validate() throws {
            try storeOptions.validate(state)
            if file.isEmpty { throw ValidationError("FILE: name the export file, or - for stdin") }
        }

        func run() throws {
            let (url, inStateDirectory) = try storeOptions.resolved(state)
            let reader: LineSource
            do throws(AuditError) {
                reader = try file == "-" ? LineSource(descriptor: 0, name: "stdin") : LineSource(opening: file)
            } catch {
                Console.error("stockade: FILE: \(error)")
                throw ExitCode(1)
            }
            let summary: AuditTransferSummary
            switch url {
            case .sqlite(let path):
                // A database this import creates is removed again when the import fails: nothing is left behind.
                let existed = access(path, F_OK) == 0
                do {
                    if inStateDirectory, !existed { try makeStateDirectory(parentOf: path) }
                    summary = try SQLiteAuditStore(path: path, supervisorPid: getpid(), supervisorStart: ProcessIdentity.currentStartTime, hostId: "")
                        .importTrail(source: reader.name) { () throws(AuditError) in try reader.next() }
                } catch {
                    if !existed { for suffix in ["", "-wal", "-shm"] { unlink(path + suffix) } }
                    Console.error("stockade: audit import: \(error)")
                    throw ExitCode(1)
                }
            case .postgres(let postgres):
                do {
                    summary = try StoreOpener.postgresSupport(postgres.description)
                        .importTrail(postgres, environment: ProcessEnvironment.current(), supervisorPid: getpid(),
                                     supervisorStart: ProcessIdentity.currentStartTime, source: reader.name) { () throws(AuditError) in try reader.next() }
                } catch {
                    Console.error("stockade: audit import: \(error)")
                    throw ExitCode(1)
                }
            }
            if json {
                Console.out(JSONValue.object([
                    "store": .string(url.description), "runs": .number(summary.counts.runs), "bundles": .number(summary.counts.bundles),
                    "diffs": .number(summary.counts.diffs), "events": .number(summary.counts.events), "headSeq": .number(summary.head.seq),
                    "headHash": .string(summary.head.hash),
                ]).serialized())
            } else {
                Console.out("imported \(summary.counts.events) events, \(summary.counts.runs) runs, \(summary.counts.bundles) bundles, \(summary.counts.diffs) diffs into \(url); chain verified, head seq \(summary.head.seq)")
            }
        }

        /// The state directory (mode 0700) and its parents, as the commands that run workers make it.
        private func makeStateDirectory(parentOf path: String) throws {
            var prefix = ""
            for component in path.split(separator: "/").dropLast() {
                prefix += "/" + component
                if mkdir(prefix, 0o700) != 0, errno != EEXIST {
                    throw AuditError(.storage, path: prefix, errno: errno, "cannot create the state directory")
                }
            }
        }
    }
}

/// The `pg_dump` and `pg_restore` command lines for a PostgreSQL store: libpq's keyword/value
/// connection string (never a password), each value quoted for the shell.
enum PostgresDumpCommand {
    static func connection(_ url: PostgresStoreURL) -> String {
        var parts: [String] = []
        switch url.endpoint {
        case .tcp(let host, let port):
            parts += ["host=\(host)", "port=\(port)", "sslmode=\(url.tlsMode.rawValue)"]
        case .unixSocket(let path):
            let slash = path.lastIndex(of: "/") ?? path.startIndex
            parts += ["host=\(path[..<slash])", "port=\(path[path.index(after: slash)...].dropFirst(".s.PGSQL.".count))"]
        }
        if let user = url.user { parts.append("user=\(user)") }
        parts.append("dbname=\(url.database)")
        if let roots = url.trustRootsPath { parts.append("sslrootcert=\(roots)") }
        return parts.joined(separator: " ")
    }

    static func dump(_ url: PostgresStoreURL, to file: String) -> String {
        "pg_dump --format=custom --no-owner --file=\(quoted(file)) --dbname=\(quoted(connection(url)))"
    }

    static func restore(_ url: PostgresStoreURL, from file: String) -> String {
        "pg_restore --single-transaction --no-owner --dbname=\(quoted(connection(url))) \(quoted(file))"
    }

    static func quoted(_ text: String) -> String {
        var out = "'"
        for character in text { out += character == "'" ? "'\\''" : String(character) }
        return out + "'"
    }
}

/// Export lines to a descriptor, buffered; to a new file through a temporary name beside it that is
/// fsynced and then linked into place (never replacing a file), so a failed export leaves no file.
struct LineSink {
    private let fd: Int32
    private let path: String?
    private let temporary: String?
    private var buffer: [UInt8] = []

    init(descriptor: Int32) {
        fd = descriptor
        path = nil
        temporary = nil
    }

    init(creating path: String) throws(AuditError) {
        var status = stat()
        if lstat(path, &status) == 0 {
            throw AuditError(.storage, path: path, "the file already exists: an export never replaces a file; name a new one")
        }
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
        let temporary = directory + "/." + name + ".partial-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else {
            throw AuditError(.storage, path: temporary, errno: errno, "cannot create the export's temporary file (does the directory exist, and is it writable?)")
        }
        self.fd = fd
        self.path = path
        self.temporary = temporary
    }

    mutating func write(_ line: String) throws(AuditError) {
        buffer += line.utf8
        buffer.append(0x0A)
        if buffer.count >= 1 << 16 { try flush() }
    }

    /// Everything written and, for a file, synced and in place (on failure, `abandon` cleans up).
    mutating func finish() throws(AuditError) {
        try flush()
        guard let path, let temporary else { return }
        guard fsync(fd) == 0 else { throw AuditError(.storage, path: temporary, errno: errno, "cannot sync the export to disk") }
        guard link(temporary, path) == 0 else {
            throw AuditError(.storage, path: path, errno: errno, "cannot put the export in place (a file of that name appeared meanwhile?)")
        }
        close(fd)
        unlink(temporary)
    }

    /// After a failure: the temporary file is closed and removed; nothing is left under the file's name.
    func abandon() {
        guard let temporary else { return }
        close(fd)
        unlink(temporary)
    }

    private mutating func flush() throws(AuditError) {
        var offset = 0
        while offset < buffer.count {
            let n = buffer[offset...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw AuditError(.storage, path: temporary ?? "stdout", errno: errno, "cannot write the export") }
            offset += n
        }
        buffer.removeAll(keepingCapacity: true)
    }
}

/// An export's lines from a file or stdin, without their newlines; bounded by `AuditExportFormat.maxLineBytes`.
final class LineSource {
    let name: String
    private let fd: Int32
    private var buffer: [UInt8] = []
    private var start = 0
    private var atEnd = false
    private var lineNumber = 0

    init(descriptor: Int32, name: String) {
        fd = descriptor
        self.name = name
    }

    convenience init(opening path: String) throws(AuditError) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw AuditError(.storage, path: path, errno: errno, "cannot open the export file") }
        self.init(descriptor: fd, name: path)
    }

    deinit { if fd > 2 { close(fd) } }

    /// The next line, nil at the end of the input.
    func next() throws(AuditError) -> [UInt8]? {
        var searched = start
        while true {
            if let newline = buffer[searched...].firstIndex(of: 0x0A) {
                let line = Array(buffer[start..<newline])
                start = newline + 1
                lineNumber += 1
                return line
            }
            searched = buffer.count
            if buffer.count - start > AuditExportFormat.maxLineBytes {
                throw AuditError(.invalidExport, path: name, "line \(lineNumber + 1) is longer than \(AuditExportFormat.maxLineBytes) bytes: not an export; nothing was imported")
            }
            if atEnd {
                guard start < buffer.count else { return nil }
                let line = Array(buffer[start...])
                start = buffer.count
                lineNumber += 1
                return line
            }
            if start > 0 {
                buffer.removeFirst(start)
                searched -= start
                start = 0
            }
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw AuditError(.storage, path: name, errno: errno, "cannot read the export")
            }
            if n == 0 { atEnd = true } else { buffer += chunk[..<n] }
        }
    }
}
