import Crypto
import Glibc
import StockadePolicy

/// A signed statement that the audit chain had reached `head` (its seq and that event's hash) at
/// time `at`. The chain makes every event depend on all before it, so a checkpoint vouches for
/// the whole trail up to its seq: a later `verifyChain(anchors:)` fails if any of it was changed,
/// or if the tail was cut off and the chain head rewritten, which the chain alone cannot show.
///
/// The document is a small JSON object (`serialized()`), carrying the public key it was signed
/// with so an operator can copy that key somewhere safe. `verify(trusting:)` never trusts that
/// embedded key: anyone who can edit the database can also make a key pair and sign a checkpoint
/// of the truncated chain. Only a key the verifier already holds, kept apart from the database,
/// makes the signature evidence.
public struct AuditCheckpoint: Sendable, Equatable {
    /// The `format` field: says what the document is, so a checkpoint is never read as anything else.
    public static let format = "stockade-audit-checkpoint"
    public static let version: Int64 = 1
    /// The first line of the signed bytes: a signature over them means this and nothing else.
    static let context = "stockade audit checkpoint v1"
    /// Far above a checkpoint's size (about 400 bytes), far below anything worth reading.
    public static let maxBytes = 4096

    public let head: AuditChainHead
    /// RFC 3339, UTC, milliseconds: when the checkpoint was signed.
    public let at: String
    /// Lowercase hex SHA-256 of the raw 32-byte public key.
    public let keyId: String
    /// The raw 32-byte Ed25519 public key that signed it (an identification, never trusted by itself).
    public let publicKey: [UInt8]
    /// The 64-byte Ed25519 signature over `signedBytes`.
    public let signature: [UInt8]

    /// The bytes the signature covers: the context line, then seq, hash, time and key id, one a line.
    public var signedBytes: [UInt8] {
        Self.signedBytes(head: head, at: at, keyId: keyId)
    }

    static func signedBytes(head: AuditChainHead, at: String, keyId: String) -> [UInt8] {
        Array([context, String(head.seq), head.hash, at, keyId].joined(separator: "\n").utf8)
    }

    /// The key id of a public key: lowercase hex SHA-256 of its raw representation.
    public static func keyId(of key: Curve25519.Signing.PublicKey) -> String {
        Hex.lowercase(SHA256.hash(data: Array(key.rawRepresentation)))
    }

    /// Signs `head` at time `at` (default: now).
    public static func sign(_ head: AuditChainHead, at: String? = nil, with key: Curve25519.Signing.PrivateKey) throws(AuditError) -> AuditCheckpoint {
        guard head.seq >= 1, isHex(head.hash, bytes: 32) else {
            throw AuditError(.invalidArgument, "a checkpoint signs an event: seq must be 1 or more and hash 64 lowercase hex digits")
        }
        let time = at ?? AuditClock.now()
        let id = Self.keyId(of: key.publicKey)
        let signature: [UInt8]
        do {
            signature = try Array(key.signature(for: signedBytes(head: head, at: time, keyId: id)))
        } catch {
            throw AuditError(.badSignature, "cannot sign the checkpoint of seq \(head.seq): \(error)")
        }
        return AuditCheckpoint(head: head, at: time, keyId: id, publicKey: Array(key.publicKey.rawRepresentation), signature: signature)
    }

    /// Succeeds only when `trusted` signed this checkpoint: its key id names `trusted` and the
    /// signature verifies with `trusted` over this checkpoint's seq, hash, time and key id.
    public func verify(trusting trusted: Curve25519.Signing.PublicKey) throws(AuditError) {
        let trustedId = Self.keyId(of: trusted)
        guard keyId == trustedId, publicKey == Array(trusted.rawRepresentation) else {
            throw AuditError(.badSignature, "the checkpoint of seq \(head.seq) was signed by key \(keyId), not by the trusted key \(trustedId): it was forged, or the trusted key is not the one that signs this store's checkpoints")
        }
        guard trusted.isValidSignature(signature, for: signedBytes) else {
            throw AuditError(.badSignature, "the signature of the checkpoint of seq \(head.seq) does not verify with the trusted key \(trustedId): the checkpoint was altered or forged")
        }
    }

    /// The document: one JSON object, keys sorted.
    public var json: JSONValue {
        .object([
            "format": .string(Self.format), "version": .number(Self.version),
            "seq": .number(head.seq), "hash": .string(head.hash), "at": .string(at),
            "keyId": .string(keyId), "publicKey": .string(Hex.lowercase(publicKey)), "signature": .string(Hex.lowercase(signature)),
        ])
    }

    public func serialized() -> String { json.serialized() }

    /// Reads a checkpoint document. Every field is required, no other is allowed, and each must
    /// have its exact form; `source` (a path) names the document in errors. The signature is not
    /// checked here: that takes a trusted key (`verify(trusting:)`).
    public static func parse(_ bytes: [UInt8], source: String) throws(AuditError) -> AuditCheckpoint {
        func fail(_ message: String) -> AuditError { AuditError(.invalidCheckpoint, path: source, message) }
        guard bytes.count <= maxBytes else { throw fail("a checkpoint is at most \(maxBytes) bytes; this is \(bytes.count)") }
        let value: JSONValue
        do {
            value = try StrictJSON.parse(bytes, limits: .init(maxBytes: maxBytes, maxDepth: 2))
        } catch {
            throw fail("not a checkpoint: \(error)")
        }
        guard let object = value.object else { throw fail("a checkpoint is a JSON object, found \(value.typeName)") }
        let known = ["format", "version", "seq", "hash", "at", "keyId", "publicKey", "signature"]
        if let unknown = object.keys.filter({ !known.contains($0) }).sorted().first {
            throw fail("unknown field \(unknown): a checkpoint has exactly \(known.joined(separator: ", "))")
        }
        func string(_ key: String) throws(AuditError) -> String {
            guard let field = object[key] else { throw fail("field \(key) is missing") }
            guard let text = field.string else { throw fail("field \(key) must be a string, found \(field.typeName)") }
            return text
        }
        func integer(_ key: String) throws(AuditError) -> Int64 {
            guard let field = object[key] else { throw fail("field \(key) is missing") }
            guard let number = field.exactInt64 else { throw fail("field \(key) must be an integer, found \(field.typeName)") }
            return number
        }
        func hex(_ key: String, bytes count: Int) throws(AuditError) -> [UInt8] {
            let text = try string(key)
            guard let decoded = decodeHex(text), decoded.count == count else {
                throw fail("field \(key) must be \(count * 2) lowercase hex digits (\(count) bytes)")
            }
            return decoded
        }

        guard try string("format") == format else { throw fail("field format must be \(format)") }
        let version = try integer("version")
        guard version == Self.version else { throw fail("field version is \(version); this Stockade reads version \(Self.version)") }
        let seq = try integer("seq")
        guard seq >= 1 else { throw fail("field seq must be 1 or more, found \(seq)") }
        let hash = try Hex.lowercase(hex("hash", bytes: 32))
        let at = try string("at")
        guard isTimestamp(at) else { throw fail("field at must be an RFC 3339 UTC time such as 2026-01-02T03:04:05.678Z") }
        let keyId = try Hex.lowercase(hex("keyId", bytes: 32))
        let publicKey = try hex("publicKey", bytes: 32)
        let signature = try hex("signature", bytes: 64)
        let embedded: Curve25519.Signing.PublicKey
        do {
            embedded = try Curve25519.Signing.PublicKey(rawRepresentation: publicKey)
        } catch {
            throw fail("field publicKey is not an Ed25519 public key")
        }
        guard keyId == Self.keyId(of: embedded) else { throw fail("field keyId is not the SHA-256 of field publicKey") }
        return AuditCheckpoint(head: AuditChainHead(seq: seq, hash: hash), at: at, keyId: keyId, publicKey: publicKey, signature: signature)
    }

    /// Reads and parses the checkpoint document at `path` (a regular file, at most `maxBytes`).
    public static func read(path: String) throws(AuditError) -> AuditCheckpoint {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw AuditError(.invalidCheckpoint, path: path, errno: errno, "cannot open the checkpoint") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw AuditError(.invalidCheckpoint, path: path, "the checkpoint is not a regular file")
        }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: maxBytes + 1)
        while bytes.count <= maxBytes {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw AuditError(.invalidCheckpoint, path: path, errno: errno, "cannot read the checkpoint") }
            if n == 0 { break }
            bytes += buffer[0..<n]
        }
        // One trailing newline, as `stockade audit checkpoint` writes it.
        if bytes.last == 0x0A { bytes.removeLast() }
        return try parse(bytes, source: path)
    }

    /// Lowercase hex only: one spelling per value, so the text a checkpoint signs has one form.
    /// With `allowUppercase`, for keys a person types (`receipt verify --public-key`).
    public static func decodeHex(_ text: String, allowUppercase: Bool = false) -> [UInt8]? {
        let digits = Array(text.utf8)
        guard digits.count % 2 == 0 else { return nil }
        func nibble(_ d: UInt8) -> UInt8? {
            switch d {
            case 0x30...0x39: d - 0x30
            case 0x61...0x66: d - 0x57
            case 0x41...0x46 where allowUppercase: d - 0x37
            default: nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(digits.count / 2)
        var i = 0
        while i < digits.count {
            guard let high = nibble(digits[i]), let low = nibble(digits[i + 1]) else { return nil }
            out.append(high << 4 | low)
            i += 2
        }
        return out
    }

    static func isHex(_ text: String, bytes: Int) -> Bool {
        decodeHex(text)?.count == bytes
    }

    /// The shape `AuditClock` writes: `yyyy-mm-ddThh:mm:ss.mmmZ`.
    static func isTimestamp(_ text: String) -> Bool {
        let b = Array(text.utf8)
        guard b.count == 24 else { return false }
        for (i, c) in b.enumerated() {
            switch i {
            case 4, 7: if c != UInt8(ascii: "-") { return false }
            case 10: if c != UInt8(ascii: "T") { return false }
            case 13, 16: if c != UInt8(ascii: ":") { return false }
            case 19: if c != UInt8(ascii: ".") { return false }
            case 23: if c != UInt8(ascii: "Z") { return false }
            default: if !(0x30...0x39).contains(c) { return false }
            }
        }
        return true
    }
}
