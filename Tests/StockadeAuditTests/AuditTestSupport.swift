import CSQLite
import Glibc
import StockadePolicy
import Synchronization
import StockadeTestSupport
import Testing
@testable import StockadeAudit
@testable import StockadeAuditSQLite

/// A fresh directory under /tmp holding one audit database path, removed when the tests exit (a
/// store opened on it outlives this value).
struct TempDatabase {
    let directory: String
    let path: String

    init() {
        directory = makeScratchDirectory("audit", untilExit: true)
        path = directory + "/audit.sqlite"
    }

    func store(pid: Int32 = getpid(), start: UInt64 = ProcessIdentity.currentStartTime) throws -> SQLiteAuditStore {
        try SQLiteAuditStore(path: path, supervisorPid: pid, supervisorStart: start)
    }

    func write(_ bytes: [UInt8]) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        precondition(fd >= 0)
        _ = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }
}

/// Raw SQL on the database file, bypassing the store: the tamperer's view.
enum RawSQL {
    static func execute(_ path: String, _ sql: String) {
        var db: OpaquePointer?
        #expect(sqlite3_open(path, &db) == SQLITE_OK)
        defer { sqlite3_close(db) }
        sqlite3_busy_timeout(db, 10_000)
        var message: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(db, sql, nil, nil, &message)
        #expect(rc == SQLITE_OK, "\(sql): \(message.map { String(cString: $0) } ?? "")")
        sqlite3_free(message)
    }

    /// Every row of a query, each column as text ("NULL" for NULL).
    static func rows(_ path: String, _ sql: String) -> [[String]] {
        var db: OpaquePointer?
        #expect(sqlite3_open(path, &db) == SQLITE_OK)
        defer { sqlite3_close(db) }
        var statement: OpaquePointer?
        #expect(sqlite3_prepare_v2(db, sql, -1, &statement, nil) == SQLITE_OK, "\(sql)")
        defer { sqlite3_finalize(statement) }
        var out: [[String]] = []
        while sqlite3_step(statement) == SQLITE_ROW {
            var row: [String] = []
            for column in 0..<sqlite3_column_count(statement) {
                if sqlite3_column_type(statement, column) == SQLITE_NULL {
                    row.append("NULL")
                } else {
                    let count = Int(sqlite3_column_bytes(statement, column))
                    let base = sqlite3_column_text(statement, column)!
                    row.append(String(decoding: UnsafeBufferPointer(start: base, count: count), as: UTF8.self))
                }
            }
            out.append(row)
        }
        return out
    }

    static func scalar(_ path: String, _ sql: String) -> String? { rows(path, sql).first?.first }
}

extension AuditStore {
    func allEvents(runId: String? = nil, since: Int64? = nil, kind: String? = nil) throws -> [AuditEvent] {
        var out: [AuditEvent] = []
        try events(runId: runId, since: since, kind: kind) { out.append($0) }
        return out
    }

    func allRuns() throws -> [AuditRunRecord] {
        var out: [AuditRunRecord] = []
        try runs { out.append($0) }
        return out
    }
}

/// Asserts that seq is 1...n without gaps and that runSeq is 1...k without gaps within each run.
func expectGapFree(_ events: [AuditEvent], sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(events.map(\.seq) == Array(1...Int64(events.count)), sourceLocation: sourceLocation)
    var perRun: [String?: [Int64]] = [:]
    for event in events { perRun[event.runId, default: []].append(event.runSeq) }
    for (run, seqs) in perRun {
        #expect(seqs == Array(1...Int64(seqs.count)), "runSeq of \(run ?? "(none)")", sourceLocation: sourceLocation)
    }
}

/// The chain holds: `events` events checked, none broken, the reported head at the last one.
func expectIntact(_ result: ChainVerification, events: Int64, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(result.eventsChecked == events && result.firstBrokenSeq == nil && result.reason == nil, "\(result)", sourceLocation: sourceLocation)
    #expect(result.head?.seq == (events == 0 ? nil : events), "\(result)", sourceLocation: sourceLocation)
}

extension JSONValue {
    static func str(_ s: String) -> JSONValue { .string(s) }
}

/// A plain pthread: the tests need real parallel writers, not a cooperative pool of two.
final class TestThread: @unchecked Sendable {
    private var handle = pthread_t()
    private let body: @Sendable () -> Void
    private let finished = Mutex(false)

    init(_ body: @escaping @Sendable () -> Void) { self.body = body }

    func start() {
        let rc = pthread_create(&handle, nil, { argument in
            let thread = Unmanaged<TestThread>.fromOpaque(argument!).takeRetainedValue()
            thread.body()
            thread.finished.withLock { $0 = true }
            return nil
        }, Unmanaged.passRetained(self).toOpaque())
        precondition(rc == 0, "pthread_create failed")
    }

    var isDone: Bool { finished.withLock { $0 } }

    func join() { pthread_join(handle, nil) }
}

/// Errors collected from test threads.
final class FailureLog: Sendable {
    private let entries = Mutex<[String]>([])
    func add(_ entry: String) { entries.withLock { $0.append(entry) } }
    var all: [String] { entries.withLock { $0 } }
}

/// This test binary started again, running only `filter` (`Suite/test`), with this process's
/// environment plus (or overridden by) `variables`; its output goes to /dev/null (its exit status says
/// whether it passed).
enum TestChild {
    static func spawn(_ filter: String, _ variables: [String: String]) throws -> pid_t {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        try #require(n > 0, "readlink /proc/self/exe: \(errno)")
        let executable = String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let arguments = [executable, "--testing-library", "swift-testing", "--filter", filter]
        var environment: [String] = []
        var entry = environ
        while let pointer = entry.pointee {
            let text = String(cString: pointer)
            if let eq = text.firstIndex(of: "="), variables[String(text[..<eq])] == nil { environment.append(text) }
            entry += 1
        }
        environment += variables.map { "\($0.key)=\($0.value)" }
        let argv = arguments.map { strdup($0) } + [nil]
        let envp = environment.map { strdup($0) } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &actions, nil, argv, envp)
        try #require(rc == 0, "posix_spawn of \(executable) failed: \(rc)")
        return pid
    }
}
