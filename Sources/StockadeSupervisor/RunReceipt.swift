import Crypto
import FoundationEssentials
import Glibc
import StockadeAudit
import StockadePolicy

/// A signed receipt for a finished run: what ran (profile and its digest, the seccomp program's
/// hash, limits, network and egress rules, image, command), how it ended, the SHA-256 of what it
/// left (the logged stdout and stderr, the result bundle's manifest, the diff) and the audit `seq`
/// range of its events, signed with the Ed25519 key that signs audit checkpoints.
///
/// The signature covers exactly the bytes of `receipt` serialised by `JSONValue.serialized()`
/// (keys sorted, compact). The document is `{"receipt": {...}, "signature": BASE64, "keyId": HEX,
/// "publicKey": HEX}`; like a checkpoint, the key it carries identifies the signer and is never
/// trusted by itself: `verify` takes the trusted key from the caller.
public enum RunReceipt {
    public static let format = "stockade-run-receipt"
    public static let version: Int64 = 1
    /// A receipt is a few kilobytes (the command and egress rules are the variable parts).
    public static let maxBytes = 1 << 20

    /// The keys of the signed body, every one required (null where the run has no such value).
    public static let receiptKeys: Set<String> = [
        "format", "version", "runId", "profile", "profileDigest", "seccompSha256", "limits", "network", "egress",
        "imageDigest", "command", "outcome", "exitStatus", "stdoutSha256", "stderrSha256", "resultBundleSha256",
        "diffSha256", "auditSeq", "createdAt", "endedAt", "issuedAt",
    ]
    public static let documentKeys: Set<String> = ["receipt", "signature", "keyId", "publicKey"]

    public struct Failure: Error, CustomStringConvertible {
        public enum Kind: Sendable { case notFound, notFinished, unavailable }
        public let kind: Kind
        public let description: String
    }

    /// The receipt body of `runId`, from the audit trail and the run directory under `stateDirectory`.
    public static func body(audit: any AuditStore, stateDirectory: String, runId: String, issuedAt: String? = nil) throws(Failure) -> JSONValue {
        var record: AuditRunRecord?
        var created: [String: JSONValue]?
        var seccomp: JSONValue = .null
        var result: JSONValue = .null
        var first: Int64?
        var last: Int64?
        do {
            try audit.runs { if $0.runId == runId { record = $0 } }
            guard record != nil else { throw Failure(kind: .notFound, description: "no run \(runId)") }
            try audit.events(runId: runId, since: nil, kind: nil) { event in
                if first == nil { first = event.seq }
                last = event.seq
                let detail = event.detailValue?.object
                switch event.kind {
                case "run.created": created = detail
                case "worker.started": seccomp = detail?["seccompSha256"]?.string.map { .string($0) } ?? .null
                case "bundle.accepted" where detail?["role"]?.string == "result":
                    result = detail?["manifestSha256"]?.string.map { .string($0) } ?? .null
                default: break
                }
            }
        } catch let failure as Failure {
            throw failure
        } catch {
            throw Failure(kind: .unavailable, description: "cannot read run \(runId) from the audit trail: \(error)")
        }
        guard let record else { throw Failure(kind: .notFound, description: "no run \(runId)") }
        guard record.state == "finished" else {
            throw Failure(kind: .notFinished, description: "run \(runId) is \(record.state): a receipt is issued once it has finished")
        }
        guard let created, let first, let last else {
            throw Failure(kind: .unavailable, description: "run \(runId) has no run.created event in the audit trail")
        }
        let diffs: [DiffRecord]
        do {
            diffs = try audit.diffs(runId: runId)
        } catch {
            throw Failure(kind: .unavailable, description: "cannot read the diffs of run \(runId): \(error)")
        }
        let logs = stateDirectory + "/runs/" + runId + "/logs/"
        func logHash(_ stream: String) throws(Failure) -> JSONValue {
            do {
                return try sha256(ofFile: logs + stream + ".log").map { .string($0) } ?? .null
            } catch {
                throw Failure(kind: .unavailable, description: "cannot hash the \(stream) log of run \(runId): \(error)")
            }
        }
        return .object([
            "format": .string(format), "version": .number(version),
            "runId": .string(runId), "profile": .string(record.profile), "profileDigest": .string(record.profileDigest),
            "seccompSha256": seccomp,
            "limits": created["limits"] ?? .null, "network": created["network"] ?? .null, "egress": created["egress"] ?? .null,
            "imageDigest": created["image"]?.object?["digest"] ?? .null,
            "command": .array(record.command.map { .string($0) }),
            "outcome": record.outcome.map { .string($0) } ?? .null,
            "exitStatus": record.exitStatus.map { .number($0) } ?? .null,
            "stdoutSha256": try logHash("stdout"), "stderrSha256": try logHash("stderr"),
            "resultBundleSha256": result,
            "diffSha256": diffs.last.map { .string($0.sha256) } ?? .null,
            "auditSeq": .object(["first": .number(first), "last": .number(last)]),
            "createdAt": .string(record.createdAt), "endedAt": record.endedAt.map { .string($0) } ?? .null,
            "issuedAt": .string(issuedAt ?? AuditClock.now()),
        ])
    }

    /// The signed document for `body`.
    public static func sign(_ body: JSONValue, with key: Curve25519.Signing.PrivateKey) throws -> JSONValue {
        let signature = try key.signature(for: Array(body.serialized().utf8))
        return .object([
            "receipt": body, "signature": .string(Data(signature).base64EncodedString()),
            "keyId": .string(AuditCheckpoint.keyId(of: key.publicKey)),
            "publicKey": .string(Hex.lowercase(key.publicKey.rawRepresentation)),
        ])
    }

    /// What `verify` found: every failure names the field it concerns.
    public struct Verification: Sendable {
        public var runId: String?
        public var keyId: String?
        public var logsChecked = false
        public var failures: [String] = []
        public var valid: Bool { failures.isEmpty }

        public init() {}

        public var jsonValue: JSONValue {
            .object([
                "valid": .bool(valid), "runId": runId.map { .string($0) } ?? .null, "keyId": keyId.map { .string($0) } ?? .null,
                "logsChecked": .bool(logsChecked), "failures": .array(failures.map { .string($0) }),
            ])
        }
    }

    /// Checks a receipt document: its shape, that `trusted` signed exactly its `receipt`, and, with
    /// `runDirectory`, that the run directory's logs still hash to what it says.
    public static func verify(_ bytes: [UInt8], trusting trusted: Curve25519.Signing.PublicKey, runDirectory: String? = nil) -> Verification {
        var result = Verification()
        var text = bytes
        if text.last == 0x0A { text.removeLast() }
        let value: JSONValue
        do {
            value = try StrictJSON.parse(text, limits: .init(maxBytes: maxBytes, maxDepth: 16))
        } catch {
            result.failures.append("document: not a receipt: \(error)")
            return result
        }
        guard let document = value.object else {
            result.failures.append("document: a receipt is a JSON object, found \(value.typeName)")
            return result
        }
        for key in Set(document.keys).subtracting(documentKeys).sorted() {
            result.failures.append("\(key): unknown field (a receipt document has exactly \(documentKeys.sorted().joined(separator: ", ")))")
        }
        for key in documentKeys.subtracting(document.keys).sorted() { result.failures.append("\(key): missing") }
        guard let receipt = document["receipt"]?.object else {
            if document["receipt"] != nil { result.failures.append("receipt: must be an object") }
            return result
        }
        for key in Set(receipt.keys).subtracting(receiptKeys).sorted() { result.failures.append("receipt.\(key): unknown field") }
        for key in receiptKeys.subtracting(receipt.keys).sorted() { result.failures.append("receipt.\(key): missing") }
        if let f = receipt["format"], f.string != format { result.failures.append("receipt.format: must be \(format)") }
        if let v = receipt["version"], v.exactInt64 != version { result.failures.append("receipt.version: this Stockade reads version \(version)") }
        result.runId = receipt["runId"]?.string
        if receipt["runId"] != nil && result.runId == nil { result.failures.append("receipt.runId: must be a string") }

        let trustedId = AuditCheckpoint.keyId(of: trusted)
        let keyId = document["keyId"]?.string
        result.keyId = keyId
        if document["keyId"] != nil && keyId == nil { result.failures.append("keyId: must be a string") }
        if let keyId, keyId != trustedId {
            result.failures.append("keyId: the receipt names key \(keyId), not the trusted key \(trustedId)")
        }
        if let publicKey = document["publicKey"] {
            if publicKey.string != Hex.lowercase(trusted.rawRepresentation) {
                result.failures.append("publicKey: the receipt carries another public key than the trusted one \(trustedId)")
            }
        }
        if let signatureField = document["signature"] {
            if let text = signatureField.string, let signature = Data(base64Encoded: text), signature.count == 64 {
                if !trusted.isValidSignature(signature, for: Array(JSONValue.object(receipt).serialized().utf8)) {
                    result.failures.append("signature: does not verify with the trusted key \(trustedId) over the receipt: the receipt was altered or forged")
                }
            } else {
                result.failures.append("signature: must be a base64 Ed25519 signature (64 bytes)")
            }
        }
        if let runDirectory {
            result.logsChecked = true
            for stream in ["stdout", "stderr"] {
                let field = "\(stream)Sha256"
                let path = runDirectory + "/logs/" + stream + ".log"
                let actual: String?
                do {
                    actual = try sha256(ofFile: path)
                } catch {
                    result.failures.append("receipt.\(field): cannot hash \(path): \(error)")
                    continue
                }
                let claimed = receipt[field]?.string
                if actual != claimed {
                    result.failures.append("receipt.\(field): \(path) \(actual.map { "has SHA-256 \($0)" } ?? "is missing"), the receipt says \(claimed ?? "null")")
                }
            }
        }
        return result
    }

    /// The receipt document at `path` (a regular file, at most `maxBytes`).
    public static func readDocument(path: String) throws -> [UInt8] {
        try FileReading.read(path, limit: maxBytes)
    }

    /// Lowercase hex SHA-256 of a regular file (no symlink followed at the last component), read
    /// in chunks; nil when it does not exist.
    static func sha256(ofFile path: String) throws(FileReading.Failure) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
        guard fd >= 0 else {
            if errno == ENOENT { return nil }
            throw FileReading.Failure(description: "cannot open \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG else {
            throw FileReading.Failure(description: "\(path) is not a regular file")
        }
        var hasher = SHA256()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw FileReading.Failure(description: "cannot read \(path): \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            hasher.update(data: buffer[0..<n])
        }
        return Hex.lowercase(hasher.finalize())
    }

    /// A trusted public key given on the command line: a file holding 64 hex digits (as the
    /// checkpoint key's `.pub`), or the key itself as 64 hex digits or base64 of its 32 bytes.
    public static func publicKey(_ argument: String) throws -> Curve25519.Signing.PublicKey {
        let inline: [UInt8]? = {
            if argument.utf8.count == 64, let raw = AuditCheckpoint.decodeHex(argument, allowUppercase: true) { return raw }
            if argument.utf8.count == 44, let data = Data(base64Encoded: argument), data.count == 32 { return Array(data) }
            return nil
        }()
        if let inline, access(argument, F_OK) != 0 {
            return try Curve25519.Signing.PublicKey(rawRepresentation: inline)
        }
        return try CheckpointKeyFile.loadPublicKey(path: argument)
    }
}
