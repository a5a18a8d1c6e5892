import Crypto
import StockadePolicy

/// The text of `stockade audit export` (and what `import` reads): JSON lines, one object a line, keys
/// sorted. A header names the format and version; then every run, bundle, diff and event as its row
/// holds it (each with `"type"`), in that order; then an end line with the counts and the chain head,
/// so a truncated file is noticed. Event details are the stored text exactly (the string the hash
/// covers), diff content is base64 with its SHA-256.
public enum AuditExportFormat {
    public static let name = "stockade-audit"
    public static let version: Int64 = 1
    /// The longest line `import` accepts: a diff's content in base64 with its row.
    public static let maxLineBytes = 256 << 20

    static let headerKeys: Set<String> = ["format", "version", "source", "exportedAt"]
    static let runKeys: Set<String> = ["type", "runId", "profile", "profileDigest", "command", "state", "outcome", "exitStatus",
                                       "createdAt", "endedAt", "supervisorPid", "supervisorStart", "hostId"]
    static let bundleKeys: Set<String> = ["type", "id", "runId", "role", "status", "reason", "files", "bytes", "manifestSha256", "createdAt"]
    static let diffKeys: Set<String> = ["type", "id", "runId", "sha256", "bytes", "content", "verdict", "reason", "state", "decidedBy",
                                        "note", "decidedAt", "appliedAt", "createdAt", "conflictFile", "conflictHunk", "conflictReason"]
    static let eventKeys: Set<String> = ["type", "seq", "runId", "runSeq", "kind", "at", "detail", "prevHash", "hash"]
    static let endKeys: Set<String> = ["type", "runs", "bundles", "diffs", "events", "headSeq", "headHash"]

    /// The first line. `source` names the exported store (never with a password).
    public static func headerLine(source: String, exportedAt: String) -> String {
        JSONValue.object(["format": .string(name), "version": .number(version), "source": .string(source),
                          "exportedAt": .string(exportedAt)]).serialized()
    }

    /// The last line: what a complete file holds.
    public static func endLine(counts: AuditRowCounts, head: AuditChainHead) -> String {
        JSONValue.object(["type": .string("end"), "runs": .number(counts.runs), "bundles": .number(counts.bundles),
                          "diffs": .number(counts.diffs), "events": .number(counts.events), "headSeq": .number(head.seq),
                          "headHash": .string(head.hash)]).serialized()
    }

    /// One row's line.
    public static func line(_ row: AuditRow) -> String {
        switch row {
        case .run(let run):
            JSONValue.object([
                "type": .string("run"), "runId": .string(run.runId), "profile": .string(run.profile), "profileDigest": .string(run.profileDigest),
                "command": .array(run.command.map { .string($0) }), "state": .string(run.state), "outcome": optional(run.outcome),
                "exitStatus": run.exitStatus.map { .number($0) } ?? .null, "createdAt": .string(run.createdAt), "endedAt": optional(run.endedAt),
                "supervisorPid": .number(run.supervisorPid), "supervisorStart": .number(run.supervisorStart), "hostId": optional(run.hostId),
            ]).serialized()
        case .bundle(let bundle):
            JSONValue.object([
                "type": .string("bundle"), "id": .number(bundle.id), "runId": .string(bundle.runId), "role": .string(bundle.role),
                "status": .string(bundle.status), "reason": optional(bundle.reason), "files": .number(bundle.files),
                "bytes": .number(bundle.bytes), "manifestSha256": optional(bundle.manifestSha256), "createdAt": .string(bundle.createdAt),
            ]).serialized()
        case .diff(let diff):
            JSONValue.object([
                "type": .string("diff"), "id": .number(diff.id), "runId": .string(diff.runId), "sha256": .string(diff.sha256),
                "bytes": .number(diff.bytes), "content": .string(Base64.encode(diff.content)), "verdict": .string(diff.verdict),
                "reason": optional(diff.reason), "state": .string(diff.state), "decidedBy": optional(diff.decidedBy), "note": optional(diff.note),
                "decidedAt": optional(diff.decidedAt), "appliedAt": optional(diff.appliedAt), "createdAt": .string(diff.createdAt),
                "conflictFile": optional(diff.conflict?.file), "conflictHunk": optional(diff.conflict?.hunk),
                "conflictReason": optional(diff.conflict?.reason),
            ]).serialized()
        case .event(let event):
            JSONValue.object([
                "type": .string("event"), "seq": .number(event.seq), "runId": optional(event.runId), "runSeq": .number(event.runSeq),
                "kind": .string(event.kind), "at": .string(event.at), "detail": .string(event.detail), "prevHash": .string(event.prevHash),
                "hash": .string(event.hash),
            ]).serialized()
        }
    }

    private static func optional(_ value: String?) -> JSONValue { value.map { .string($0) } ?? .null }
}

/// What an export wrote or an import stored.
public struct AuditTransferSummary: Sendable, Equatable {
    public let counts: AuditRowCounts
    /// The chain head: the last event (seq 0 and the genesis hash for an empty trail).
    public let head: AuditChainHead

    public init(counts: AuditRowCounts, head: AuditChainHead) {
        self.counts = counts
        self.head = head
    }
}

/// Reads an export line by line and turns each into the row to store, checking as it goes everything
/// a store would otherwise take on trust: the header's format and version, every key (none missing,
/// none unknown) and its type, the order (runs, bundles, diffs, events, end), references to runs, ids
/// that only grow, each diff's SHA-256 and size, and the hash chain (recomputed by `ChainVerifier`,
/// the verifier `verifyChain` uses). `finish` compares the counts and the head with the end line.
/// Errors name the line number and the key.
struct AuditImportReader {
    private enum Phase: Int, Comparable {
        case header, runs, bundles, diffs, events, end
        static func < (a: Phase, b: Phase) -> Bool { a.rawValue < b.rawValue }
        var name: String {
            switch self {
            case .header: "the header"
            case .runs: "a run"
            case .bundles: "a bundle"
            case .diffs: "a diff"
            case .events: "an event"
            case .end: "the end line"
            }
        }
    }

    private let source: String
    private var phase = Phase.header
    private(set) var lineNumber = 0
    private var counts = AuditRowCounts()
    private var runIds: Set<String> = []
    private var lastBundleId: Int64 = 0
    private var lastDiffId: Int64 = 0
    private var verifier = ChainVerifier()
    private var end: (counts: AuditRowCounts, head: AuditChainHead)?

    /// `source` names the file in error messages.
    init(source: String) {
        self.source = source
    }

    /// The row line `bytes` (without its newline) holds; nil for the header and the end line.
    mutating func read(_ bytes: [UInt8]) throws(AuditError) -> AuditRow? {
        lineNumber += 1
        let value: JSONValue
        do {
            value = try StrictJSON.parse(bytes, limits: .init(maxBytes: AuditExportFormat.maxLineBytes, maxDepth: 8))
        } catch {
            throw fail("is not JSON: \(error.description)")
        }
        guard let members = value.object else { throw fail("is a JSON \(value.typeName), not an object") }
        var line = Fields(members: members, source: source, lineNumber: lineNumber)
        if phase == .header {
            try line.expectKeys(AuditExportFormat.headerKeys, of: "the header")
            let format = try line.string("format")
            guard format == AuditExportFormat.name else {
                throw fail("key \"format\": \"\(format)\" is not \"\(AuditExportFormat.name)\": this is not a Stockade audit export")
            }
            let version = try line.int64("version")
            guard version == AuditExportFormat.version else {
                throw fail("key \"version\": version \(version) is not one this Stockade reads (\(AuditExportFormat.version)); use the Stockade that wrote it")
            }
            _ = try line.string("source")
            _ = try line.string("exportedAt")
            phase = .runs
            return nil
        }
        let type = try line.string("type")
        let next: Phase
        switch type {
        case "run": next = .runs
        case "bundle": next = .bundles
        case "diff": next = .diffs
        case "event": next = .events
        case "end": next = .end
        default: throw fail("key \"type\": unknown row type \"\(type)\" (run, bundle, diff, event, end)")
        }
        if phase == .end { throw fail("comes after the end line: nothing may follow it") }
        guard next >= phase else {
            throw fail("\(next.name) after \(phase.name): an export lists runs, then bundles, diffs, events, and the end line")
        }
        phase = next
        switch next {
        case .runs: return .run(try run(&line))
        case .bundles: return .bundle(try bundle(&line))
        case .diffs: return .diff(try diff(&line))
        case .events: return .event(try event(&line))
        case .header, .end:
            try line.expectKeys(AuditExportFormat.endKeys, of: "the end line")
            let expected = AuditRowCounts(runs: try line.count("runs"), bundles: try line.count("bundles"), diffs: try line.count("diffs"),
                                          events: try line.count("events"))
            end = (expected, AuditChainHead(seq: try line.count("headSeq"), hash: try line.hash("headHash")))
            return nil
        }
    }

    /// After the last line: the end line was there, and the counts and chain head it records are
    /// those of the rows read.
    func finish() throws(AuditError) -> AuditTransferSummary {
        guard let end else {
            let what = phase == .header ? "no header line (the file is empty)" : "no end line after line \(lineNumber)"
            throw AuditError(.invalidExport, path: source, "\(what): the export is truncated (or not an export); nothing was imported")
        }
        for (name, expected, found) in [("runs", end.counts.runs, counts.runs), ("bundles", end.counts.bundles, counts.bundles),
                                        ("diffs", end.counts.diffs, counts.diffs), ("events", end.counts.events, counts.events)]
        where expected != found {
            throw AuditError(.invalidExport, path: source,
                             "the end line records \(expected) \(name) but the file holds \(found): lines were removed or added; nothing was imported")
        }
        let verification = verifier.finish(head: (end.head.seq, end.head.hash))
        if let reason = verification.reason {
            throw AuditError(.invalidExport, path: source, "the end line's chain head does not match the events: \(reason); nothing was imported")
        }
        return AuditTransferSummary(counts: counts, head: end.head)
    }

    // MARK: rows

    private mutating func run(_ line: inout Fields) throws(AuditError) -> AuditRunRecord {
        try line.expectKeys(AuditExportFormat.runKeys, of: "a run")
        let runId = try line.string("runId")
        guard !runIds.contains(runId) else { throw fail("key \"runId\": run \(runId) is listed twice") }
        let state = try line.string("state")
        guard AuditRunState(rawValue: state) != nil else { throw line.invalid("state", "\"\(state)\" is not one of \(AuditRunState.allCases.map(\.rawValue).joined(separator: ", "))") }
        let command = try line.stringArray("command")
        let exitStatus = try line.optionalInt64("exitStatus")
        if let exitStatus, Int32(exactly: exitStatus) == nil { throw line.invalid("exitStatus", "\(exitStatus) is not a 32-bit exit status") }
        let pid = try line.int64("supervisorPid")
        guard let supervisorPid = Int32(exactly: pid) else { throw line.invalid("supervisorPid", "\(pid) is not a 32-bit pid") }
        let record = AuditRunRecord(runId: runId, profile: try line.string("profile"), profileDigest: try line.string("profileDigest"),
                                    command: command, state: state, outcome: try line.optionalString("outcome"),
                                    exitStatus: exitStatus.map { Int32($0) }, createdAt: try line.string("createdAt"),
                                    endedAt: try line.optionalString("endedAt"), supervisorPid: supervisorPid,
                                    supervisorStart: try line.uint64("supervisorStart"), hostId: try line.optionalString("hostId"))
        runIds.insert(runId)
        counts.runs += 1
        return record
    }

    private mutating func bundle(_ line: inout Fields) throws(AuditError) -> AuditBundleRecord {
        try line.expectKeys(AuditExportFormat.bundleKeys, of: "a bundle")
        let id = try line.count("id")
        guard id > lastBundleId else { throw line.invalid("id", "bundle id \(id) is not greater than the previous one (\(lastBundleId))") }
        let role = try line.string("role")
        guard BundleRole(rawValue: role) != nil else { throw line.invalid("role", "\"\(role)\" is not request or result") }
        let status = try line.string("status")
        guard BundleStatus(rawValue: status) != nil else { throw line.invalid("status", "\"\(status)\" is not accepted or rejected") }
        let record = AuditBundleRecord(id: id, runId: try knownRun(&line), role: role, status: status, reason: try line.optionalString("reason"),
                                       files: try line.count("files"), bytes: try line.count("bytes"),
                                       manifestSha256: try line.optionalString("manifestSha256"), createdAt: try line.string("createdAt"))
        lastBundleId = id
        counts.bundles += 1
        return record
    }

    private mutating func diff(_ line: inout Fields) throws(AuditError) -> DiffRecord {
        try line.expectKeys(AuditExportFormat.diffKeys, of: "a diff")
        let id = try line.count("id")
        guard id > lastDiffId else { throw line.invalid("id", "diff id \(id) is not greater than the previous one (\(lastDiffId))") }
        let text = try line.string("content")
        guard let content = Base64.decode(text) else { throw line.invalid("content", "is not canonical base64") }
        let sha256 = try line.hash("sha256")
        guard AuditChain.hex(SHA256.hash(data: content)) == sha256 else {
            throw line.invalid("sha256", "is not the SHA-256 of the content: the content or its hash was changed")
        }
        let bytes = try line.count("bytes")
        guard bytes == Int64(content.count) else { throw line.invalid("bytes", "\(bytes) is not the content's size (\(content.count))") }
        let verdict = try line.string("verdict")
        guard DiffVerdict(rawValue: verdict) != nil else { throw line.invalid("verdict", "\"\(verdict)\" is not passed or rejected") }
        let state = try line.string("state")
        guard DiffState(rawValue: state) != nil else {
            throw line.invalid("state", "\"\(state)\" is not one of \(DiffState.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let conflictFile = try line.optionalString("conflictFile")
        let conflictHunk = try line.optionalString("conflictHunk")
        let conflictReason = try line.optionalString("conflictReason")
        if conflictReason == nil, conflictFile != nil || conflictHunk != nil {
            throw line.invalid("conflictReason", "is null while conflictFile or conflictHunk is set")
        }
        let record = DiffRecord(id: id, runId: try knownRun(&line), sha256: sha256, bytes: bytes, content: content, verdict: verdict,
                                reason: try line.optionalString("reason"), state: state, decidedBy: try line.optionalString("decidedBy"),
                                note: try line.optionalString("note"), decidedAt: try line.optionalString("decidedAt"),
                                appliedAt: try line.optionalString("appliedAt"), createdAt: try line.string("createdAt"),
                                conflict: conflictReason.map { DiffConflict(file: conflictFile, hunk: conflictHunk, reason: $0) })
        lastDiffId = id
        counts.diffs += 1
        return record
    }

    private mutating func event(_ line: inout Fields) throws(AuditError) -> AuditEvent {
        try line.expectKeys(AuditExportFormat.eventKeys, of: "an event")
        let runId = try line.optionalString("runId")
        if let runId, !runIds.contains(runId) { throw line.invalid("runId", "names run \(runId), which no run line before it lists") }
        let event = AuditEvent(seq: try line.count("seq"), runId: runId, runSeq: try line.count("runSeq"), kind: try line.string("kind"),
                               at: try line.string("at"), detail: try line.string("detail"), prevHash: try line.hash("prevHash"),
                               hash: try line.hash("hash"))
        if let broken = verifier.check(event) {
            throw fail("the hash chain does not hold: \(broken.reason ?? "seq \(event.seq) is broken")")
        }
        counts.events += 1
        return event
    }

    private func knownRun(_ line: inout Fields) throws(AuditError) -> String {
        let runId = try line.string("runId")
        guard runIds.contains(runId) else { throw line.invalid("runId", "names run \(runId), which no run line before it lists") }
        return runId
    }

    private func fail(_ why: String) -> AuditError {
        Self.failure(source, lineNumber, why)
    }

    fileprivate static func failure(_ source: String, _ lineNumber: Int, _ why: String) -> AuditError {
        AuditError(.invalidExport, path: source, "line \(lineNumber) \(why); nothing was imported")
    }

    /// One line's members, read by key: each accessor fails naming the line and the key.
    fileprivate struct Fields {
        let members: [String: JSONValue]
        let source: String
        let lineNumber: Int

        func expectKeys(_ keys: Set<String>, of what: String) throws(AuditError) {
            if let missing = keys.subtracting(members.keys).sorted().first {
                throw AuditImportReader.failure(source, lineNumber, "key \"\(missing)\" is missing (\(what))")
            }
            if let unknown = Set(members.keys).subtracting(keys).sorted().first {
                throw AuditImportReader.failure(source, lineNumber, "key \"\(unknown)\" is not a key of \(what)")
            }
        }

        func invalid(_ key: String, _ why: String) -> AuditError {
            AuditImportReader.failure(source, lineNumber, "key \"\(key)\": \(why)")
        }

        func string(_ key: String) throws(AuditError) -> String {
            guard let text = members[key]?.string else { throw invalid(key, "must be a string") }
            return text
        }

        func optionalString(_ key: String) throws(AuditError) -> String? {
            if members[key] == .null { return nil }
            guard let text = members[key]?.string else { throw invalid(key, "must be a string or null") }
            return text
        }

        func stringArray(_ key: String) throws(AuditError) -> [String] {
            guard let items = members[key]?.array else { throw invalid(key, "must be an array of strings") }
            var out: [String] = []
            for item in items {
                guard let text = item.string else { throw invalid(key, "must be an array of strings") }
                out.append(text)
            }
            return out
        }

        func int64(_ key: String) throws(AuditError) -> Int64 {
            guard let value = members[key]?.exactInt64 else { throw invalid(key, "must be an integer") }
            return value
        }

        /// A non-negative integer: an id, a sequence number, a count, a size.
        func count(_ key: String) throws(AuditError) -> Int64 {
            let value = try int64(key)
            guard value >= 0 else { throw invalid(key, "must not be negative (\(value))") }
            return value
        }

        func optionalInt64(_ key: String) throws(AuditError) -> Int64? {
            if members[key] == .null { return nil }
            return try int64(key)
        }

        func uint64(_ key: String) throws(AuditError) -> UInt64 {
            guard case .number(let text)? = members[key], let value = UInt64(text) else { throw invalid(key, "must be a non-negative integer") }
            return value
        }

        /// 64 lowercase hex digits.
        func hash(_ key: String) throws(AuditError) -> String {
            let text = try string(key)
            guard text.utf8.count == 64, text.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) else {
                throw invalid(key, "must be 64 lowercase hex digits")
            }
            return text
        }
    }
}
