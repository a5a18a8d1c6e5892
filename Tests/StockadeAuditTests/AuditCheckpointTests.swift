import Crypto
import Glibc
import StockadePolicy
import Testing
@testable import StockadeAudit
@testable import StockadeAuditSQLite

/// A checkpoint as a tamperer would rewrite it: every field settable.
private func forged(_ c: AuditCheckpoint, seq: Int64? = nil, hash: String? = nil, at: String? = nil,
                    keyId: String? = nil, publicKey: [UInt8]? = nil, signature: [UInt8]? = nil) -> AuditCheckpoint {
    AuditCheckpoint(head: AuditChainHead(seq: seq ?? c.head.seq, hash: hash ?? c.head.hash), at: at ?? c.at,
                    keyId: keyId ?? c.keyId, publicKey: publicKey ?? c.publicKey, signature: signature ?? c.signature)
}

private let sampleHead = AuditChainHead(seq: 42, hash: String(repeating: "ab", count: 32))

@Suite("signed audit checkpoints: format, signature, trust")
struct AuditCheckpointFormatTests {
    @Test("the signed bytes are the context line, seq, hash, time and key id, one a line")
    func signedBytes() throws {
        let key = Curve25519.Signing.PrivateKey()
        let c = try AuditCheckpoint.sign(sampleHead, at: "2026-01-02T03:04:05.678Z", with: key)
        let expectedId = Hex.lowercase(SHA256.hash(data: Array(key.publicKey.rawRepresentation)))
        #expect(c.keyId == expectedId)
        #expect(String(decoding: c.signedBytes, as: UTF8.self)
                == "stockade audit checkpoint v1\n42\n\(sampleHead.hash)\n2026-01-02T03:04:05.678Z\n\(expectedId)")
        #expect(key.publicKey.isValidSignature(c.signature, for: c.signedBytes))
    }

    @Test("a checkpoint survives its JSON form and verifies with the key that signed it")
    func roundTrip() throws {
        let key = Curve25519.Signing.PrivateKey()
        let c = try AuditCheckpoint.sign(sampleHead, with: key)
        let parsed = try AuditCheckpoint.parse(Array(c.serialized().utf8), source: "cp.json")
        #expect(parsed == c)
        try parsed.verify(trusting: key.publicKey)
        let fields = try #require(c.json.object)
        #expect(Set(fields.keys) == ["format", "version", "seq", "hash", "at", "keyId", "publicKey", "signature"])
        #expect(fields["format"] == .string("stockade-audit-checkpoint") && fields["seq"] == .number("42"))
    }

    @Test("changing any signed field breaks the signature", arguments: ["seq", "hash", "at", "signature"])
    func tamperedField(field: String) throws {
        let key = Curve25519.Signing.PrivateKey()
        let c = try AuditCheckpoint.sign(sampleHead, at: "2026-01-02T03:04:05.678Z", with: key)
        var signature = c.signature
        signature[10] ^= 0x01
        let changed = switch field {
        case "seq": forged(c, seq: 43)
        case "hash": forged(c, hash: String(repeating: "cd", count: 32))
        case "at": forged(c, at: "2027-01-02T03:04:05.678Z")
        default: forged(c, signature: signature)
        }
        #expect(throws: AuditError.self) { try changed.verify(trusting: key.publicKey) }
        // Positive control: the untouched checkpoint verifies.
        try c.verify(trusting: key.publicKey)
    }

    @Test("a checkpoint another key signed is refused, although it verifies with the key it carries")
    func anotherKey() throws {
        let trusted = Curve25519.Signing.PrivateKey()
        let attacker = Curve25519.Signing.PrivateKey()
        let c = try AuditCheckpoint.sign(sampleHead, with: attacker)
        try c.verify(trusting: attacker.publicKey)
        let error = try #require(throws: AuditError.self) { try c.verify(trusting: trusted.publicKey) }
        #expect(error.code == .badSignature)
        #expect(error.message.contains(c.keyId) && error.message.contains(AuditCheckpoint.keyId(of: trusted.publicKey)), "\(error)")
        // Relabelled as the trusted key, the attacker's signature still does not verify.
        let relabelled = forged(c, keyId: AuditCheckpoint.keyId(of: trusted.publicKey), publicKey: Array(trusted.publicKey.rawRepresentation))
        let relabelError = try #require(throws: AuditError.self) { try relabelled.verify(trusting: trusted.publicKey) }
        #expect(relabelError.message.contains("does not verify"), "\(relabelError)")
    }

    @Test("a malformed checkpoint is refused naming the field", arguments: [
        ("seq", #""seq":"42""#, "field seq must be an integer"),
        ("seq", #""seq":0"#, "field seq must be 1 or more"),
        ("hash", #""hash":"\#(String(repeating: "AB", count: 32))""#, "field hash must be 64 lowercase hex"),
        ("hash", #""hash":"abc""#, "field hash must be 64 lowercase hex"),
        ("at", #""at":"yesterday""#, "field at must be an RFC 3339"),
        ("format", #""format":"something-else""#, "field format must be"),
        ("version", #""version":2"#, "field version is 2"),
        ("signature", #""signature":"00""#, "field signature must be 128"),
    ])
    func malformed(field: String, replacement: String, expected: String) throws {
        let c = try AuditCheckpoint.sign(sampleHead, at: "2026-01-02T03:04:05.678Z", with: Curve25519.Signing.PrivateKey())
        var fields = try #require(c.json.object)
        let good = JSONValue.object(fields).serialized()
        #expect(try AuditCheckpoint.parse(Array(good.utf8), source: "cp.json") == c)
        fields[field] = nil
        let withoutField = JSONValue.object(fields).serialized()
        let missing = try #require(throws: AuditError.self) { try AuditCheckpoint.parse(Array(withoutField.utf8), source: "cp.json") }
        #expect(missing.code == .invalidCheckpoint && missing.message.contains("field \(field) is missing"), "\(missing)")
        let text = "{" + replacement + "," + withoutField.dropFirst()
        let error = try #require(throws: AuditError.self) { try AuditCheckpoint.parse(Array(text.utf8), source: "cp.json") }
        #expect(error.code == .invalidCheckpoint && error.message.contains(expected) && error.path == "cp.json", "\(error)")
    }

    @Test("an unknown field, a key id that is not the public key's, and text that is not a checkpoint are refused")
    func otherMalformed() throws {
        let c = try AuditCheckpoint.sign(sampleHead, with: Curve25519.Signing.PrivateKey())
        var fields = try #require(c.json.object)
        fields["trusted"] = .bool(true)
        let unknown = try #require(throws: AuditError.self) { try AuditCheckpoint.parse(Array(JSONValue.object(fields).serialized().utf8), source: "x") }
        #expect(unknown.message.contains("unknown field trusted"))
        fields["trusted"] = nil
        fields["keyId"] = .string(String(repeating: "0", count: 64))
        let mismatch = try #require(throws: AuditError.self) { try AuditCheckpoint.parse(Array(JSONValue.object(fields).serialized().utf8), source: "x") }
        #expect(mismatch.message.contains("keyId"))
        #expect(throws: AuditError.self) { try AuditCheckpoint.parse(Array("[1]".utf8), source: "x") }
        #expect(throws: AuditError.self) { try AuditCheckpoint.parse(Array(repeating: 0x20, count: 5000), source: "x") }
    }

    @Test("only a chain head can be signed")
    func signRefusesNonHeads() {
        let key = Curve25519.Signing.PrivateKey()
        #expect(throws: AuditError.self) { try AuditCheckpoint.sign(AuditChainHead(seq: 0, hash: AuditChain.genesisHash), with: key) }
        #expect(throws: AuditError.self) { try AuditCheckpoint.sign(AuditChainHead(seq: 1, hash: "not hex"), with: key) }
    }
}

@Suite("the chain against checkpoints: what a hash chain alone cannot show")
struct AuditCheckpointChainTests {
    /// A store with `runs` runs of four events each; returns it and its verified head.
    private func filled(_ db: TempDatabase, runs: Int = 3) throws -> (SQLiteAuditStore, AuditChainHead) {
        let store = try db.store()
        for i in 0..<runs {
            let id = "run-\(i)"
            try store.beginRun(runId: id, profile: "default", profileDigest: "d", command: ["/bin/true"], detail: .object([:]))
            try store.record(runId: id, kind: "worker.started", detail: .object(["pid": .number("7")]))
            try store.record(runId: id, kind: "worker.exited", detail: .object(["outcome": .str("exited")]))
            try store.finishRun(runId: id, outcome: "exited", exitStatus: 0, detail: .object([:]))
        }
        let head = try #require(try store.verifyChain().head)
        return (store, head)
    }

    @Test("a truncated and re-headed tail passes the chain alone and fails against a checkpoint, naming the first missing seq")
    func truncatedTail() throws {
        let db = TempDatabase()
        let (store, head) = try filled(db)
        #expect(head.seq == 12)
        #expect(try store.verifyChain(anchors: [head]).isValid, "positive control: the untouched chain holds its checkpoint")
        RawSQL.execute(db.path, """
            DELETE FROM events WHERE seq > 9;
            UPDATE chain_head SET seq = 9, hash = (SELECT hash FROM events WHERE seq = 9);
            """)
        #expect(try store.verifyChain().isValid, "the chain alone cannot show a cut tail")
        let result = try store.verifyChain(anchors: [head])
        #expect(result.firstBrokenSeq == 10)
        #expect(result.reason?.contains("signed seq 12") == true && result.reason?.contains("truncated") == true, "\(result)")
        #expect(result.head == nil)
    }

    @Test("a chain rewritten from an edited event, hashes and head recomputed, fails at the checkpoint's seq")
    func rewrittenChain() throws {
        let db = TempDatabase()
        let (store, head) = try filled(db)
        RawSQL.execute(db.path, "UPDATE events SET detail = replace(detail, 'exited', 'signaled') WHERE seq = 3")
        #expect(try store.verifyChain().firstBrokenSeq == 3)
        // The tamperer recomputes every hash from the edited row on, as the store would.
        var prev = try #require(RawSQL.scalar(db.path, "SELECT hash FROM events WHERE seq = 2"))
        for row in RawSQL.rows(db.path, "SELECT seq, runId, runSeq, kind, at, detail FROM events WHERE seq >= 3 ORDER BY seq") {
            let seq = try #require(Int64(row[0]))
            let hash = AuditChain.hash(prevHash: prev, seq: seq, runId: row[1] == "NULL" ? nil : row[1], runSeq: try #require(Int64(row[2])),
                                       kind: row[3], at: row[4], detail: row[5])
            RawSQL.execute(db.path, "UPDATE events SET prevHash = '\(prev)', hash = '\(hash)' WHERE seq = \(seq)")
            prev = hash
        }
        RawSQL.execute(db.path, "UPDATE chain_head SET hash = '\(prev)' WHERE id = 1")
        #expect(try store.verifyChain().isValid, "the rewritten chain is consistent in itself")
        let result = try store.verifyChain(anchors: [head])
        #expect(result.firstBrokenSeq == 12, "\(result)")
        #expect(result.reason?.contains("not the one a checkpoint signed") == true)
        // An earlier checkpoint, before the edit, still holds.
        let early = try #require(RawSQL.scalar(db.path, "SELECT hash FROM events WHERE seq = 2"))
        #expect(try store.verifyChain(anchors: [AuditChainHead(seq: 2, hash: early)]).isValid)
    }

    @Test("events appended after a checkpoint keep it valid; the head moves on")
    func appendAfter() throws {
        let db = TempDatabase()
        let (store, head) = try filled(db, runs: 1)
        try store.record(runId: nil, kind: "verification", detail: .object([:]))
        let result = try store.verifyChain(anchors: [head])
        #expect(result.isValid && result.head?.seq == head.seq + 1)
    }
}

/// A private directory (0700) under /tmp for key files.
private struct KeyDirectory {
    let path: String
    init() {
        var template = Array("/tmp/stockade-keys-XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        precondition(made != nil, "mkdtemp failed")
        path = String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

@Suite("the checkpoint key file", .serialized)
struct CheckpointKeyFileTests {
    @Test("the key is made on first use, mode 0600 in a 0700 directory, with its public key beside it; later uses load it")
    func createdOnFirstUse() throws {
        let dir = KeyDirectory()
        let path = dir.path + "/keys/audit-checkpoint.ed25519"
        let (key, created) = try CheckpointKeyFile.loadOrCreate(path: path)
        #expect(created)
        var st = stat()
        #expect(stat(path, &st) == 0 && st.st_mode & 0o777 == 0o600)
        #expect(stat(dir.path + "/keys", &st) == 0 && st.st_mode & 0o777 == 0o700)
        let publicKey = try CheckpointKeyFile.loadPublicKey(path: CheckpointKeyFile.publicPath(of: path))
        #expect(publicKey.rawRepresentation == key.publicKey.rawRepresentation)
        let (again, createdAgain) = try CheckpointKeyFile.loadOrCreate(path: path)
        #expect(!createdAgain && again.rawRepresentation == key.rawRepresentation)
    }

    @Test("a key file others can read is refused, saying to chmod it; fixed, it loads")
    func groupReadable() throws {
        let path = KeyDirectory().path + "/key"
        _ = try CheckpointKeyFile.loadOrCreate(path: path)
        for mode: mode_t in [0o640, 0o604, 0o660] {
            chmod(path, mode)
            let error = try #require(throws: AuditError.self) { try CheckpointKeyFile.load(path: path) }
            #expect(error.code == .keyFile && error.message.contains("chmod 600") && error.path == path, "\(error)")
            #expect(throws: AuditError.self) { try CheckpointKeyFile.loadOrCreate(path: path) }
        }
        chmod(path, 0o600)
        _ = try CheckpointKeyFile.load(path: path)
    }

    @Test("a key file that is a symlink is refused, even to a good key")
    func symlink() throws {
        let dir = KeyDirectory().path
        _ = try CheckpointKeyFile.loadOrCreate(path: dir + "/real")
        #expect(Glibc.symlink(dir + "/real", dir + "/link") == 0)
        let error = try #require(throws: AuditError.self) { try CheckpointKeyFile.load(path: dir + "/link") }
        #expect(error.message.contains("symbolic link"), "\(error)")
        _ = try CheckpointKeyFile.load(path: dir + "/real")
    }

    @Test("a key file owned by another user is refused", .enabled(if: geteuid() == 0, "needs root to give a file to another user"))
    func otherOwner() throws {
        let path = KeyDirectory().path + "/key"
        _ = try CheckpointKeyFile.loadOrCreate(path: path)
        #expect(chown(path, 65534, 65534) == 0)
        let error = try #require(throws: AuditError.self) { try CheckpointKeyFile.load(path: path) }
        #expect(error.message.contains("owned by uid 65534"), "\(error)")
        #expect(chown(path, geteuid(), getegid()) == 0)
        _ = try CheckpointKeyFile.load(path: path)
    }

    @Test("a key in a directory others can write is refused")
    func writableDirectory() throws {
        let dir = KeyDirectory().path
        _ = try CheckpointKeyFile.loadOrCreate(path: dir + "/key")
        chmod(dir, 0o777)
        let error = try #require(throws: AuditError.self) { try CheckpointKeyFile.load(path: dir + "/key") }
        #expect(error.message.contains("chmod go-w") && error.path == dir, "\(error)")
        chmod(dir, 0o700)
        _ = try CheckpointKeyFile.load(path: dir + "/key")
    }

    @Test("a key file that does not hold a key is refused, and a missing one says how it is made")
    func malformedKey() throws {
        let dir = KeyDirectory().path
        let path = dir + "/key"
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        #expect(fd >= 0)
        _ = "not a key\n".withCString { write(fd, $0, 10) }
        close(fd)
        let error = try #require(throws: AuditError.self) { try CheckpointKeyFile.load(path: path) }
        #expect(error.message.contains("64 lowercase hex"), "\(error)")
        let missing = try #require(throws: AuditError.self) { try CheckpointKeyFile.load(path: dir + "/none") }
        #expect(missing.message.contains("creates it on first use"), "\(missing)")
    }
}
