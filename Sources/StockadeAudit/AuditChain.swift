import Crypto

/// The event hash chain. Each event's hash covers the previous hash and every column of the event,
/// so editing, deleting, inserting or reordering a row breaks the chain at that row.
package enum AuditChain {
    /// The `prevHash` of the first event.
    package static let genesisHash = String(repeating: "0", count: 64)

    package static func hash(prevHash: String, seq: Int64, runId: String?, runSeq: Int64, kind: String, at: String, detail: String) -> String {
        hex(SHA256.hash(data: Array("\(prevHash)\n\(seq)\n\(runId ?? "")\n\(runSeq)\n\(kind)\n\(at)\n\(detail)".utf8)))
    }

    package static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        let digits: [UInt8] = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(64)
        for byte in digest {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
