import Glibc
import StockadePolicy
import StockadeTestSupport
import Testing
@testable import StockadeAudit
@testable import StockadeAuditPostgres
@testable import StockadeAuditSQLite

/// `audit export` / `import` between backends and `audit backup`, on real stores: what is moved is
/// every row as it was, the chain is checked on the way in, and a bad file changes nothing.
@Suite("moving the audit trail: export, import, backup", .serialized, .timeLimit(.minutes(3)))
struct AuditTransferTests {
    // MARK: helpers

    /// A trail with every kind of row: two runs (one finished), events of no run, bundles, diffs in
    /// every state (binary content, empty content, a conflict), details with quotes, newlines,
    /// control characters and non-ASCII text.
    static func populate(_ store: some AuditStore) throws {
        try store.beginRun(runId: "run-a", profile: "default", profileDigest: "sha256:aa", command: ["/bin/sh", "-c", "echo 'hi'\n\tthere"],
                           detail: .object(["limits": .object(["memory": .number(1 << 20)])]))
        try store.beginRun(runId: "run-b", profile: "strict", profileDigest: "sha256:bb", command: [], detail: .null)
        try store.record(runId: nil, kind: "token.created", detail: .object(["name": .str("ci"), "scopes": .array([.str("runs:read")])]))
        try store.record(runId: "run-a", kind: "violation", detail: .object([
            "syscall": .str("ptrace"), "note": .str("quote \" backslash \\ newline \n nul-ish \u{1} é ü 漢字 \u{2028}"),
        ]))
        try store.recordBundle(runId: "run-a", role: "request", status: "accepted", reason: nil, files: 3, bytes: 120, manifestSha256: String(repeating: "a", count: 64))
        try store.recordBundle(runId: "run-b", role: "result", status: "rejected", reason: "symlink escapes", files: 1, bytes: 9, manifestSha256: nil)
        let binary: [UInt8] = Array("--- a/x\n+++ b/x\n".utf8) + [0x00, 0xFF, 0xFE, 0x80, 0x0A]
        let accepted = try store.recordDiff(runId: "run-a", content: binary, verdict: "passed", reason: nil)
        _ = try store.decide(diffId: accepted, accept: true, actor: "alice", note: "looks fine")
        try store.markApplied(diffId: accepted, detail: .object(["workspace": .str("/w"), "files": .number(1)]))
        _ = try store.recordDiff(runId: "run-a", content: [], verdict: "passed", reason: nil)
        _ = try store.recordDiff(runId: "run-b", content: Array("+++ ../etc/passwd\n".utf8), verdict: "rejected", reason: "path escapes")
        let conflicted = try store.recordDiff(runId: "run-b", content: Array("@@ -1 +1 @@\n-a\n+b\n".utf8), verdict: "passed", reason: nil)
        _ = try store.decide(diffId: conflicted, accept: true, actor: "bob", note: nil)
        try store.markConflict(diffId: conflicted, conflict: DiffConflict(file: "x", hunk: "hunk 1 (@@ -1 +1 @@)", reason: "lines differ"),
                               detail: .object(["workspace": .str("/w")]))
        try store.finishRun(runId: "run-a", outcome: "success", exitStatus: 0, detail: .object(["durationMs": .number(12)]))
        try store.recordMany((0..<5).map { (runId: "run-b", kind: "egress.denied", detail: .object(["i": .number($0)])) })
    }

    static func export<B>(_ ledger: AuditLedger<B>) throws -> [String] {
        var lines: [String] = []
        _ = try ledger.exportTrail(exportedAt: "2026-12-02T00:00:00.000Z") { lines.append($0) }
        return lines
    }

    @discardableResult
    static func importLines<B>(_ lines: [String], into ledger: AuditLedger<B>) throws(AuditError) -> AuditTransferSummary {
        var iterator = lines.makeIterator()
        return try ledger.importTrail(source: "test.jsonl") { () throws(AuditError) -> [UInt8]? in iterator.next().map { Array($0.utf8) } }
    }

    /// Every row through the ordinary read paths (not the export): what the two stores must agree on.
    static func rows(_ store: some AuditStore) throws -> (runs: [AuditRunRecord], events: [AuditEvent], diffs: [DiffRecord]) {
        var runs: [AuditRunRecord] = []
        try store.runs { runs.append($0) }
        var events: [AuditEvent] = []
        try store.events(runId: nil, since: nil, kind: nil) { events.append($0) }
        return (runs, events, try store.diffs(state: nil))
    }

    static func sqliteStore(_ database: TempDatabase) throws -> SQLiteAuditStore {
        try SQLiteAuditStore(path: database.path, supervisorPid: getpid(), supervisorStart: ProcessIdentity.currentStartTime, hostId: "host-a")
    }

    static func postgresStore(_ url: PostgresStoreURL) throws -> PostgresAuditStore {
        try PostgresAuditStore(url: url, environment: [:], supervisorPid: getpid(), supervisorStart: ProcessIdentity.currentStartTime, hostId: "host-a")
    }

    /// Replaces key `key` of line `index` (a JSON object) with `value` (nil removes it).
    static func edit(_ lines: [String], line index: Int, _ key: String, _ value: JSONValue?) -> [String] {
        var lines = lines
        guard case .object(var members)? = try? StrictJSON.parse(Array(lines[index].utf8), limits: .init(maxBytes: 1 << 30, maxDepth: 8)) else {
            Issue.record("line \(index) is not an object")
            return lines
        }
        members[key] = value
        lines[index] = JSONValue.object(members).serialized()
        return lines
    }

    static func index(of type: String, in lines: [String], _ which: (Int) -> Int = { $0 / 2 }) -> Int {
        let matching = lines.indices.filter { lines[$0].contains("\"type\":\"\(type)\"") }
        return matching[which(matching.count)]
    }

    // MARK: export and import

    @Test("an export lists the header, every row and the end line; imported into a new SQLite store it exports the same lines")
    func sqliteRoundTrip() throws {
        let source = TempDatabase()
        let store = try Self.sqliteStore(source)
        try Self.populate(store)
        let lines = try Self.export(store)
        #expect(lines.first?.hasPrefix("{\"exportedAt\":\"2026-12-02T00:00:00.000Z\",\"format\":\"stockade-audit\",") == true, "\(lines.first ?? "")")
        #expect(lines.filter { $0.contains("\"type\":\"run\"") }.count == 2)
        #expect(lines.filter { $0.contains("\"type\":\"bundle\"") }.count == 2)
        #expect(lines.filter { $0.contains("\"type\":\"diff\"") }.count == 4)
        let events = try store.verifyChain().eventsChecked
        #expect(lines.filter { $0.contains("\"type\":\"event\"") }.count == Int(events))
        #expect(lines.last?.hasPrefix("{\"bundles\":2,\"diffs\":4,\"events\":\(events),") == true, "\(lines.last ?? "")")

        let target = TempDatabase()
        let copy = try Self.sqliteStore(target)
        let summary = try Self.importLines(lines, into: copy)
        #expect(summary.counts == AuditRowCounts(runs: 2, bundles: 2, diffs: 4, events: events))
        try expectIntact(copy.verifyChain(), events: events)
        #expect(Array(try Self.export(copy).dropFirst()) == Array(lines.dropFirst()))
        let (a, b) = (try Self.rows(store), try Self.rows(copy))
        #expect(a.runs == b.runs)
        #expect(a.events == b.events)
        #expect(a.diffs == b.diffs)
        // The ledger goes on from the imported head, and new ids come after the imported ones.
        let next = try copy.recordDiff(runId: "run-b", content: Array("+x\n".utf8), verdict: "passed", reason: nil)
        #expect(next == 5)
        try expectIntact(copy.verifyChain(), events: events + 1)
    }

    @Test("SQLite → PostgreSQL → SQLite keeps every run, bundle, diff and event; the chain verifies on each store",
          .disabled(if: PostgresTestServer.unavailableReason != nil, Comment(rawValue: PostgresTestServer.unavailableReason ?? "")))
    func sqliteToPostgresAndBack() throws {
        let source = TempDatabase()
        let store = try Self.sqliteStore(source)
        try Self.populate(store)
        let lines = try Self.export(store)
        let events = try store.verifyChain().eventsChecked

        let url = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(url) }
        let postgres = try Self.postgresStore(url)
        // A bad file first: the PostgreSQL transaction is rolled back whole.
        let bad = Self.edit(lines, line: Self.index(of: "event", in: lines) { $0 - 1 }, "detail", .string("{}"))
        #expect(throws: AuditError.self) { try Self.importLines(bad, into: postgres) }
        #expect(try PostgresTestServer.execute(url, "SELECT (SELECT count(*) FROM runs) + (SELECT count(*) FROM events) + (SELECT count(*) FROM diffs) + (SELECT count(*) FROM bundles)")
            .first?.first == "0")

        try Self.importLines(lines, into: postgres)
        try expectIntact(postgres.verifyChain(), events: events)
        let pgLines = try Self.export(postgres)
        #expect(Array(pgLines.dropFirst()) == Array(lines.dropFirst()))
        #expect(pgLines.first?.contains("\"source\":\"postgres") == true, "\(pgLines.first ?? "")")
        let (a, b) = (try Self.rows(store), try Self.rows(postgres))
        #expect(a.runs == b.runs)
        #expect(a.events == b.events)
        #expect(a.diffs == b.diffs)

        // PostgreSQL → SQLite.
        let back = TempDatabase()
        let returned = try Self.sqliteStore(back)
        try Self.importLines(pgLines, into: returned)
        try expectIntact(returned.verifyChain(), events: events)
        #expect(Array(try Self.export(returned).dropFirst()) == Array(lines.dropFirst()))

        // The identity sequences were moved past the imported ids: the next bundle and diff follow them.
        let next = try postgres.recordDiff(runId: "run-a", content: Array("+y\n".utf8), verdict: "passed", reason: nil)
        #expect(next == 5)
        try postgres.recordBundle(runId: "run-a", role: "result", status: "accepted", reason: nil, files: 1, bytes: 1, manifestSha256: nil)
        #expect(try PostgresTestServer.execute(url, "SELECT max(id) FROM bundles").first?.first == "3")
        try expectIntact(postgres.verifyChain(), events: events + 2)
    }

    /// A change to a good export, and what the refusal must name.
    struct Tampering: Sendable, CustomTestStringConvertible {
        let name: String
        let expected: String
        let change: @Sendable ([String]) -> [String]
        var testDescription: String { name }
    }

    static let tamperings: [Tampering] = [
        Tampering(name: "a changed detail", expected: "does not match its content") { lines in
            AuditTransferTests.edit(lines, line: AuditTransferTests.index(of: "event", in: lines), "detail", .string("{\"syscall\":\"read\"}"))
        },
        Tampering(name: "a changed hash", expected: "the hash chain does not hold") { lines in
            AuditTransferTests.edit(lines, line: AuditTransferTests.index(of: "event", in: lines), "hash", .string(String(repeating: "b", count: 64)))
        },
        Tampering(name: "an event line removed", expected: "is missing") { lines in
            var lines = lines
            lines.remove(at: AuditTransferTests.index(of: "event", in: lines))
            return lines
        },
        Tampering(name: "the last event removed", expected: "the end line records") { lines in
            var lines = lines
            lines.remove(at: AuditTransferTests.index(of: "event", in: lines) { $0 - 1 })
            return lines
        },
        Tampering(name: "a run line removed", expected: "which no run line before it lists") { lines in
            var lines = lines
            lines.remove(at: AuditTransferTests.index(of: "run", in: lines) { _ in 0 })
            return lines
        },
        Tampering(name: "the end line cut off", expected: "no end line after line") { lines in Array(lines.dropLast()) },
        Tampering(name: "the file cut in the middle of a line", expected: "is not JSON") { lines in
            Array(lines.dropLast()) + [String(lines.last!.prefix(20))]
        },
        Tampering(name: "an unknown key", expected: "key \"admin\" is not a key of a run") { lines in
            AuditTransferTests.edit(lines, line: AuditTransferTests.index(of: "run", in: lines), "admin", .bool(true))
        },
        Tampering(name: "a missing key", expected: "key \"runSeq\" is missing") { lines in
            AuditTransferTests.edit(lines, line: AuditTransferTests.index(of: "event", in: lines), "runSeq", nil)
        },
        Tampering(name: "a key of the wrong type", expected: "key \"seq\": must be an integer") { lines in
            AuditTransferTests.edit(lines, line: AuditTransferTests.index(of: "event", in: lines), "seq", .string("7"))
        },
        Tampering(name: "changed diff content", expected: "key \"sha256\": is not the SHA-256 of the content") { lines in
            AuditTransferTests.edit(lines, line: AuditTransferTests.index(of: "diff", in: lines), "content", .string(Base64.encode(Array("+evil\n".utf8))))
        },
        Tampering(name: "rows out of order", expected: "a bundle after a diff") { lines in
            var lines = lines
            let bundle = lines.remove(at: AuditTransferTests.index(of: "bundle", in: lines) { $0 - 1 })
            lines.insert(bundle, at: AuditTransferTests.index(of: "diff", in: lines) { _ in 0 } + 1)
            return lines
        },
        Tampering(name: "another format version", expected: "key \"version\": version 2") { lines in AuditTransferTests.edit(lines, line: 0, "version", .number(2)) },
        Tampering(name: "an empty file", expected: "no header line") { _ in [] },
        Tampering(name: "a line after the end", expected: "comes after the end line") { lines in lines + [lines[1]] },
    ]

    @Test("a tampered or incomplete export is refused naming the line and the key, and nothing is written", arguments: tamperings)
    func tamperedImportIsRefused(_ tampering: Tampering) throws {
        let source = TempDatabase()
        let store = try Self.sqliteStore(source)
        try Self.populate(store)
        let lines = try Self.export(store)
        let target = TempDatabase()
        let copy = try Self.sqliteStore(target)
        do {
            try Self.importLines(tampering.change(lines), into: copy)
            Issue.record("\(tampering.name) was imported")
        } catch {
            #expect(error.code == .invalidExport, "\(error)")
            #expect(error.message.contains(tampering.expected), "\(error.message)")
            #expect(error.message.contains("nothing was imported"), "\(error.message)")
        }
        #expect(RawSQL.scalar(target.path, "SELECT (SELECT count(*) FROM runs) + (SELECT count(*) FROM events) + (SELECT count(*) FROM diffs) + (SELECT count(*) FROM bundles)") == "0")
        #expect(RawSQL.scalar(target.path, "SELECT seq FROM chain_head") == "0")
        // Positive control: the same store takes the untouched file.
        try Self.importLines(lines, into: copy)
        try expectIntact(copy.verifyChain(), events: try store.verifyChain().eventsChecked)
    }

    @Test("an import into a store that holds events is refused, naming how many, and the store is unchanged")
    func nonEmptyStoreIsRefused() throws {
        let source = TempDatabase()
        let store = try Self.sqliteStore(source)
        try Self.populate(store)
        let lines = try Self.export(store)
        let target = TempDatabase()
        let busy = try Self.sqliteStore(target)
        try busy.record(runId: nil, kind: "verification", detail: .null)
        try busy.record(runId: nil, kind: "verification", detail: .null)
        #expect {
            try Self.importLines(lines, into: busy)
        } throws: { error in
            guard let error = error as? AuditError else { return false }
            return error.code == .storeNotEmpty && error.message.contains("already holds 2 events")
        }
        try expectIntact(busy.verifyChain(), events: 2)
    }

    @Test("an export of a broken chain stops at the broken event and writes no end line")
    func brokenChainIsNotExported() throws {
        let source = TempDatabase()
        let store = try Self.sqliteStore(source)
        try Self.populate(store)
        RawSQL.execute(source.path, "UPDATE events SET detail = '{}' WHERE seq = 3")
        var lines: [String] = []
        #expect {
            _ = try store.exportTrail { lines.append($0) }
        } throws: { error in
            guard let error = error as? AuditError else { return false }
            return error.code == .brokenChain && error.message.contains("broken at seq 3")
        }
        #expect(!lines.contains { $0.contains("\"type\":\"end\"") })
        #expect(!lines.contains { $0.contains("\"seq\":3,") })
    }

    @Test("base64 round-trips every length and refuses what is not canonical", arguments: [
        ("", true), ("AA==", true), ("AAA=", true), ("AAAA", true), ("AB==", false), ("AAB=", false), ("A===", false),
        ("AA=A", false), ("AAA", false), ("AA\n==", false), ("A*==", false),
    ])
    func base64(_ text: String, _ canonical: Bool) {
        #expect((Base64.decode(text) != nil) == canonical, "\(text)")
        for count in 0..<7 {
            let bytes = (0..<count).map { UInt8(truncatingIfNeeded: $0 * 77 + 200) }
            #expect(Base64.decode(Base64.encode(bytes)) == bytes)
        }
    }

    // MARK: the CLI on PostgreSQL

    /// The `stockade` binary built beside this test binary (every `swift test` builds it), nil when absent.
    static let stockadeBinary: String? = {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        var directory = String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        while let slash = directory.lastIndex(of: "/"), slash != directory.startIndex {
            directory = String(directory[..<slash])
            if access(directory + "/stockade", X_OK) == 0 { return directory + "/stockade" }
        }
        return nil
    }()

    static let cliUnavailable: String? = PostgresTestServer.unavailableReason
        ?? (stockadeBinary == nil ? "the stockade binary is not built beside the tests (swift build --product stockade)" : nil)

    /// `stockade ARGS` with stdin from `stdin` (else /dev/null); its exit status, stdout and stderr.
    static func stockade(_ arguments: [String], stdin: String = "/dev/null") throws -> (status: Int32, stdout: String, stderr: String) {
        let binary = try #require(stockadeBinary)
        let directory = makeScratchDirectory("cli")
        defer { removeTree(directory) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, stdin, O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, directory + "/out", O_WRONLY | O_CREAT, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, directory + "/err", O_WRONLY | O_CREAT, 0o600)
        let argv = ([binary] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        try #require(posix_spawn(&pid, binary, &actions, nil, argv, environ) == 0)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0, errno == EINTR {}
        let read = { (name: String) -> String in
            let fd = open(directory + "/" + name, O_RDONLY)
            defer { close(fd) }
            var bytes: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 1 << 16)
            while true {
                let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
                if n <= 0 { break }
                bytes += chunk[..<n]
            }
            return String(decoding: bytes, as: UTF8.self)
        }
        return (status & 0x7F == 0 ? (status >> 8) & 0xFF : 128 + (status & 0x7F), read("out"), read("err"))
    }

    @Test("the CLI imports an export into PostgreSQL and exports it back line for line; a second import and a backup are refused",
          .disabled(if: cliUnavailable != nil, Comment(rawValue: cliUnavailable ?? "")))
    func cliOnPostgres() throws {
        let source = TempDatabase()
        let store = try Self.sqliteStore(source)
        try Self.populate(store)
        let lines = try Self.export(store)
        let file = source.directory + "/trail.jsonl"
        try write(lines.joined(separator: "\n") + "\n", to: file, mode: 0o600)
        let url = try PostgresTestServer.createDatabase()
        defer { PostgresTestServer.dropDatabase(url) }
        let target = PostgresTestServer.connectableText(url)

        let imported = try Self.stockade(["audit", "import", "-", "--store", target, "--json"], stdin: file)
        #expect(imported.status == 0, "\(imported.stderr)")
        let events = try store.verifyChain().eventsChecked
        #expect(imported.stdout.contains("\"events\":\(events),"), "\(imported.stdout)")
        let exported = try Self.stockade(["audit", "export", "--store", target])
        #expect(exported.status == 0, "\(exported.stderr)")
        #expect(Array(exported.stdout.split(separator: "\n").map(String.init).dropFirst()) == Array(lines.dropFirst()))
        try expectIntact(Self.postgresStore(url).verifyChain(), events: events)

        let again = try Self.stockade(["audit", "import", file, "--store", target])
        #expect(again.status == 1)
        #expect(again.stderr.contains("the store already holds"), "\(again.stderr)")
        let backup = try Self.stockade(["audit", "backup", source.directory + "/pg.dump", "--store", target])
        #expect(backup.status == 1)
        #expect(backup.stderr.contains("pg_dump --format=custom --no-owner --file='\(source.directory)/pg.dump' --dbname='host="), "\(backup.stderr)")
    }

    // MARK: backup

    static let childDatabase = "STOCKADE_AUDIT_BACKUP_CHILD_DB"

    /// The last seq, read on a connection of its own (what other processes have committed).
    static func lastSeq(_ path: String) -> Int64 {
        RawSQL.scalar(path, "SELECT coalesce(max(seq), 0) FROM events").flatMap { Int64($0) } ?? 0
    }

    /// Appends to run "r" of `path` until the file `path.stop` exists (at most a minute).
    static func appendUntilStopped(_ path: String) throws {
        let writer = try SQLiteAuditStore(path: path, supervisorPid: getpid(), supervisorStart: ProcessIdentity.currentStartTime, hostId: "host-a")
        let deadline = ContinuousClock.now + .seconds(60)
        var n = 0
        while access(path + ".stop", F_OK) != 0, ContinuousClock.now < deadline {
            try writer.record(runId: "r", kind: "during", detail: .object(["n": .number(n), "pid": .number(getpid())]))
            n += 1
        }
    }

    @Test("a backup taken while another thread or process keeps appending is the snapshot it began with; it restores and verifies",
          arguments: ["thread", "process"])
    func backupWhileWriting(_ writerKind: String) throws {
        let database = TempDatabase()
        let store = try Self.sqliteStore(database)
        try store.beginRun(runId: "r", profile: "p", profileDigest: "d", command: [], detail: .null)
        // Enough pages that the copy takes many steps.
        try store.recordMany((0..<300).map { (runId: "r", kind: "fill", detail: .object(["i": .number($0), "pad": .str(String(repeating: "x", count: 2000))])) })
        let failures = FailureLog()
        let path = database.path
        var thread: TestThread?
        var child: pid_t = 0
        if writerKind == "thread" {
            thread = TestThread {
                do { try Self.appendUntilStopped(path) } catch { failures.add("\(error)") }
            }
            thread?.start()
        } else {
            child = try TestChild.spawn("AuditTransferTests/childAppender", [Self.childDatabase: path])
        }
        let destination = database.directory + "/backup.sqlite"
        var steps = 0
        var waitsTimedOut = 0
        var progress: [(remaining: Int32, total: Int32)] = []
        let summary: SQLiteBackupSummary
        do {
            defer {
                let fd = open(path + ".stop", O_WRONLY | O_CREAT, 0o600)
                close(fd)
                thread?.join()
                if child > 0 {
                    var status: Int32 = 0
                    #expect(waitpid(child, &status, 0) == child)
                    #expect(status & 0x7F == 0 && (status >> 8) & 0xFF == 0, "the child writer exited with wait status \(status)")
                }
            }
            try PostgresTestServer.waitUntil("the \(writerKind) writer appends") { Self.lastSeq(path) > 301 }
            summary = try SQLiteBackup.copy(from: path, to: destination, pagesPerStep: 4) { remaining, total in
                progress.append((remaining, total))
                steps += 1
                guard steps <= 5 else { return }
                // The writer commits while the backup holds its snapshot: readers never block writers.
                let before = Self.lastSeq(path)
                var waited = 0
                while Self.lastSeq(path) == before, waited < 3000 {
                    usleep(10_000)
                    waited += 1
                }
                if waited == 3000 { waitsTimedOut += 1 }
            }
        }
        #expect(failures.all == [])
        #expect(waitsTimedOut == 0, "the writer made no progress while the backup held its snapshot")
        #expect(steps >= 5, "the copy took \(steps) steps")
        // From one snapshot: the page count never changes and the copy never starts over, though the
        // source grew at every one of the first steps.
        #expect(Set(progress.map(\.total)).count == 1, "page counts seen: \(Set(progress.map(\.total)).sorted())")
        #expect(zip(progress, progress.dropFirst()).allSatisfy { $1.remaining < $0.remaining },
                "the copy restarted: remaining pages \(progress.map(\.remaining))")
        let sourceEvents = try store.verifyChain().eventsChecked
        #expect(summary.counts.events > 301)
        #expect(summary.counts.events < sourceEvents, "events appended during the copy are not in it (a snapshot)")
        #expect(summary.counts.runs == 1)
        #expect(summary.head?.seq == summary.counts.events)
        var status = stat()
        #expect(stat(destination, &status) == 0 && Int64(status.st_size) == summary.bytes && status.st_mode & 0o777 == 0o600)
        // One self-contained file: no temporary, journal or WAL left beside it.
        #expect(Set(Self.listDirectory(database.directory).filter { !$0.hasPrefix("audit.sqlite") }) == ["backup.sqlite"])

        // Restored: copied to a new state directory's audit.sqlite, it opens, verifies, and takes new events.
        let restoredDirectory = makeScratchDirectory("restore", untilExit: true)
        let restored = restoredDirectory + "/audit.sqlite"
        try copyFile(destination, to: restored)
        let reopened = try SQLiteAuditStore(path: restored, supervisorPid: getpid(), supervisorStart: ProcessIdentity.currentStartTime, hostId: "host-a")
        try expectIntact(reopened.verifyChain(), events: summary.counts.events)
        try reopened.record(runId: "r", kind: "after-restore", detail: .null)
        try expectIntact(reopened.verifyChain(), events: summary.counts.events + 1)
    }

    @Test("child appender: writes until told to stop (runs only when spawned by the backup test)",
          .enabled(if: getenv(childDatabase) != nil, "runs only as a child process of the backup test"))
    func childAppender() throws {
        try Self.appendUntilStopped(String(cString: try #require(getenv(Self.childDatabase))))
    }

    @Test("a backup never replaces a file, and a missing source is named")
    func backupRefusals() throws {
        let database = TempDatabase()
        let store = try Self.sqliteStore(database)
        try store.record(runId: nil, kind: "verification", detail: .null)
        let destination = database.directory + "/exists.sqlite"
        let fd = open(destination, O_WRONLY | O_CREAT, 0o600)
        close(fd)
        #expect {
            _ = try SQLiteBackup.copy(from: database.path, to: destination)
        } throws: { error in
            (error as? AuditError)?.message.contains("already exists") == true
        }
        #expect {
            _ = try SQLiteBackup.copy(from: database.directory + "/none.sqlite", to: database.directory + "/b.sqlite")
        } throws: { error in
            (error as? AuditError)?.message.contains("there is no audit database here") == true
        }
        #expect(access(database.directory + "/b.sqlite", F_OK) != 0)
    }

    static func listDirectory(_ path: String) -> [String] {
        guard let dir = opendir(path) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != ".", name != ".." { names.append(name) }
        }
        return names
    }

    func copyFile(_ from: String, to: String) throws {
        let input = open(from, O_RDONLY)
        let output = open(to, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        defer { close(input); close(output) }
        try #require(input >= 0 && output >= 0)
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) }
            try #require(n >= 0)
            if n == 0 { return }
            try #require(buffer.withUnsafeBytes { write(output, $0.baseAddress, n) } == n)
        }
    }
}
