import Crypto

/// A `sha256:` content digest, checked to be exactly 64 lowercase hex digits, so that a
/// descriptor can only ever name a file directly under `blobs/sha256/`.
public struct Digest: Hashable, Sendable, CustomStringConvertible {
    /// The 64 hex digits.
    public let hex: String

    public init?(_ text: String) {
        guard text.hasPrefix("sha256:") else { return nil }
        let hex = text.dropFirst("sha256:".count)
        guard hex.utf8.count == 64, hex.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) else { return nil }
        self.hex = String(hex)
    }

    public init?(hex: String) { self.init("sha256:" + hex) }

    static func parse(_ text: String) -> Digest? { Digest(text) }

    public var description: String { "sha256:" + hex }

    public static func of(_ bytes: [UInt8]) -> Digest {
        Digest(hex: SHA256.hash(data: bytes).map { byte in
            let s = String(byte, radix: 16)
            return s.count == 1 ? "0" + s : s
        }.joined())!
    }
}

/// SHA-256 over a stream, for blobs too large to hold.
struct StreamDigest {
    private var hasher = SHA256()
    private(set) var count: Int64 = 0

    mutating func update(_ buffer: UnsafeRawBufferPointer) {
        hasher.update(bufferPointer: buffer)
        count += Int64(buffer.count)
    }

    func finish() -> Digest {
        Digest(hex: hasher.finalize().map { byte in
            let s = String(byte, radix: 16)
            return s.count == 1 ? "0" + s : s
        }.joined())!
    }
}
