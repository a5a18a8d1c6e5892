import Crypto
import StockadePolicy

/// The event hash chain. Each event's hash covers the previous hash and every column of the event,
/// so editing, deleting, inserting or reordering a row breaks the chain at that row.
package enum AuditChain {
    /// The `prevHash` of the first event.
    package static let genesisHash = String(repeating: "0", count: 64)

    /// SHA-256 of `prevHash \n seq \n runId \n runSeq \n kind \n at \n detail` (runId empty when
    /// absent), fed piece by piece rather than through one concatenated string.
    package static func hash(prevHash: String, seq: Int64, runId: String?, runSeq: Int64, kind: String, at: String, detail: String) -> String {
        var hasher = SHA256()
        func feed(_ text: String) {
            var text = text
            text.withUTF8 { hasher.update(bufferPointer: UnsafeRawBufferPointer($0)) }
        }
        let newline: [UInt8] = [0x0A]
        for (i, piece) in [prevHash, String(seq), runId ?? "", String(runSeq), kind, at, detail].enumerated() {
            if i > 0 { hasher.update(data: newline) }
            feed(piece)
        }
        return hex(hasher.finalize())
    }

    package static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        Hex.lowercase(digest)
    }
}
