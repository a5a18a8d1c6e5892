import FoundationEssentials
import StockadeAudit
import StockadePolicy

// Typed query results that render their own JSON: the CLI's `--json`, the service's API and any
// other client print the same objects (docs/CONTRACT.md), and only choose how to format them.

extension AuditEvent {
    /// One event as `audit events --json` prints it (and the service's event stream sends it).
    public var jsonValue: JSONValue {
        .object([
            "seq": .number(seq), "runId": runId.map { .string($0) } ?? .null,
            "runSeq": .number(runSeq), "kind": .string(kind), "at": .string(at),
            "detail": detailValue ?? .string(detail), "hash": .string(hash),
        ])
    }
}

/// A run as `audit runs` lists it: its record, and the name and labels its `run.created` carries.
public struct RunSummary: Sendable {
    public var record: AuditRunRecord
    public var name: String?
    public var labels: [String: String]

    public var jsonValue: JSONValue {
        .object([
            "runId": .string(record.runId), "profile": .string(record.profile), "profileDigest": .string(record.profileDigest),
            "command": .array(record.command.map { .string($0) }), "state": .string(record.state),
            "outcome": record.outcome.map { .string($0) } ?? .null,
            "exitStatus": record.exitStatus.map { .number($0) } ?? .null,
            "createdAt": .string(record.createdAt), "endedAt": record.endedAt.map { .string($0) } ?? .null,
            "hostId": record.hostId.map { .string($0) } ?? .null,
            "name": name.map { .string($0) } ?? .null,
            "labels": .object(labels.mapValues { .string($0) }),
        ])
    }
}

extension DiffRecord {
    /// A diff's record as `review list --json` prints it; with `content`, the diff itself
    /// (and `contentBase64` when its bytes are not valid UTF-8).
    public func jsonValue(content withContent: Bool = false) -> JSONValue {
        var members: [String: JSONValue] = [
            "id": .number(id), "runId": .string(runId), "state": .string(state), "verdict": .string(verdict),
            "reason": reason.map { .string($0) } ?? .null, "bytes": .number(bytes), "sha256": .string(sha256),
            "createdAt": .string(createdAt), "decidedBy": decidedBy.map { .string($0) } ?? .null,
            "note": note.map { .string($0) } ?? .null, "decidedAt": decidedAt.map { .string($0) } ?? .null,
            "appliedAt": appliedAt.map { .string($0) } ?? .null,
            "conflict": conflict.map { c in
                .object(["file": c.file.map { .string($0) } ?? .null, "hunk": c.hunk.map { .string($0) } ?? .null,
                         "reason": .string(c.reason)])
            } ?? .null,
        ]
        if withContent {
            members["content"] = .string(String(decoding: content, as: UTF8.self))
            if let base64 = RunReport.base64IfNotUTF8(content) { members["contentBase64"] = .string(base64) }
        }
        return .object(members)
    }
}

extension ChainVerification {
    /// `audit verify --json` for an intact chain, with the signed checkpoints it holds.
    public func jsonValue(checkpoints: [(file: String, head: AuditChainHead, at: String, keyId: String)]) -> JSONValue {
        .object([
            "valid": .bool(true), "eventsChecked": .number(eventsChecked),
            "head": head.map { .object(["seq": .number($0.seq), "hash": .string($0.hash)]) } ?? .null,
            "checkpoints": .array(checkpoints.map { c in
                .object(["file": .string(c.file), "seq": .number(c.head.seq), "hash": .string(c.head.hash),
                         "at": .string(c.at), "keyId": .string(c.keyId)])
            }),
            "firstBrokenSeq": .null, "reason": .null,
        ])
    }

    /// `audit verify --json` for a chain that does not verify (or could not be read).
    public static func failureJSON(firstBrokenSeq: Int64?, reason: String, eventsChecked: Int64?) -> JSONValue {
        .object([
            "valid": .bool(false), "eventsChecked": eventsChecked.map { .number($0) } ?? .null,
            "firstBrokenSeq": firstBrokenSeq.map { .number($0) } ?? .null, "reason": .string(reason),
        ])
    }
}

extension Supervisor {
    /// Every run, oldest first, with the name and labels of its `run.created`, to `body`; only runs
    /// carrying every one of `labels` (KEY, VALUE) when given.
    public func runSummaries(labels wanted: [(String, String)] = [], _ body: (RunSummary) throws -> Void) throws {
        var tags: [String: (name: String?, labels: [String: String])] = [:]
        try audit.events(runId: nil, since: nil, kind: "run.created") { event in
            guard let runId = event.runId, let detail = event.detailValue?.object else { return }
            var labels: [String: String] = [:]
            for (k, v) in detail["labels"]?.object ?? [:] { if let s = v.string { labels[k] = s } }
            tags[runId] = (detail["name"]?.string, labels)
        }
        try audit.runs { run in
            let tag = tags[run.runId] ?? (nil, [:])
            guard wanted.allSatisfy({ tag.labels[$0.0] == $0.1 }) else { return }
            try body(RunSummary(record: run, name: tag.name, labels: tag.labels))
        }
    }
}

/// `profile check`'s answer: the profile loaded and passed this machine's checks, or the errors
/// (each naming its field).
public struct ProfileCheckResult: Sendable {
    public var source: String?
    public var name: String?
    public var digest: String?
    public var errors: [(field: String, message: String)]

    public var valid: Bool { errors.isEmpty }

    public static func passed(_ loaded: LoadedProfile) -> ProfileCheckResult {
        ProfileCheckResult(source: loaded.source, name: loaded.profile.name, digest: loaded.digest, errors: [])
    }

    public static func failed(_ error: ProfileError) -> ProfileCheckResult {
        ProfileCheckResult(source: error.source, name: nil, digest: nil, errors: error.issues.map { ($0.field, $0.reason) })
    }

    public static func failed(_ error: any Error) -> ProfileCheckResult {
        ProfileCheckResult(source: nil, name: nil, digest: nil, errors: [("", "\(error)")])
    }

    public var jsonValue: JSONValue {
        .object([
            "valid": .bool(valid), "source": source.map { .string($0) } ?? .null, "name": name.map { .string($0) } ?? .null,
            "digest": digest.map { .string($0) } ?? .null,
            "errors": .array(errors.map { .object(["field": .string($0.field), "message": .string($0.message)]) }),
        ])
    }
}

/// What `gc` removed: finished run directories past the age, and image layers no image names
/// (none while an import or a run holds the image cache: `layersBusy`).
public struct GarbageCollection: Sendable {
    public var removed: [String]
    public var layers: [String]
    public var layersBusy: Bool

    public init(removed: [String], layers: [String], layersBusy: Bool) {
        self.removed = removed
        self.layers = layers
        self.layersBusy = layersBusy
    }

    public var jsonValue: JSONValue {
        .object(["removed": .array(removed.map { .string($0) }), "layers": .array(layers.map { .string($0) }),
                 "layersBusy": .bool(layersBusy)])
    }
}

// The inverses, for a client of the service (`stockade … --host`): the objects the API sends back
// as the values the CLI prints. Nil when a required key is missing or of the wrong type.

extension AuditEvent {
    /// An event from the object `jsonValue` writes; `prevHash` is not sent and is left empty.
    public init?(json: JSONValue) {
        guard let o = json.object, let seq = o["seq"]?.exactInt64, let runSeq = o["runSeq"]?.exactInt64,
              let kind = o["kind"]?.string, let at = o["at"]?.string, let hash = o["hash"]?.string, let detail = o["detail"] else { return nil }
        let runId: String?
        switch o["runId"] {
        case .string(let s)?: runId = s
        case .null?: runId = nil
        default: return nil
        }
        // A detail that was not JSON in the store travels as a string: shown as it was stored.
        let text = detail.string ?? detail.serialized()
        self.init(seq: seq, runId: runId, runSeq: runSeq, kind: kind, at: at, detail: text, prevHash: "", hash: hash)
    }
}

extension DiffRecord {
    /// A diff's record from the object `jsonValue(content:)` writes (`content`, or `contentBase64`
    /// when its bytes are not UTF-8; empty when neither is present).
    public init?(json: JSONValue) {
        guard let o = json.object, let id = o["id"]?.exactInt64, let runId = o["runId"]?.string, let state = o["state"]?.string,
              let verdict = o["verdict"]?.string, let bytes = o["bytes"]?.exactInt64, let sha256 = o["sha256"]?.string,
              let createdAt = o["createdAt"]?.string else { return nil }
        func text(_ key: String) -> String? { o[key]?.string }
        var content: [UInt8] = []
        if let base64 = text("contentBase64") {
            guard let data = Data(base64Encoded: base64) else { return nil }
            content = Array(data)
        } else if let s = text("content") {
            content = Array(s.utf8)
        }
        var conflict: DiffConflict?
        if let c = o["conflict"]?.object {
            guard let reason = c["reason"]?.string else { return nil }
            conflict = DiffConflict(file: c["file"]?.string, hunk: c["hunk"]?.string, reason: reason)
        }
        self.init(id: id, runId: runId, sha256: sha256, bytes: bytes, content: content, verdict: verdict, reason: text("reason"),
                  state: state, decidedBy: text("decidedBy"), note: text("note"), decidedAt: text("decidedAt"),
                  appliedAt: text("appliedAt"), createdAt: createdAt, conflict: conflict)
    }
}
