import Crypto
import StockadePolicy

/// The event hash chain. Each event's hash covers the previous hash and every column of the event,
/// so editing, deleting, inserting or reordering a row breaks the chain at that row.
package enum AuditChain {
    /// The `prevHash` of the first event.
    package static let genesisHash = String(repeating: "0", count: 64)

    /// SHA-256 of `prevHash \n seq \n runId \n runSeq \n kind \n at \n detail` (runId empty when
    /// absent), assembled in one buffer and hashed in one call.
    package static func hash(prevHash: String, seq: Int64, runId: String?, runSeq: Int64, kind: String, at: String, detail: String) -> String {
        var input: [UInt8] = []
        input.reserveCapacity(prevHash.utf8.count + detail.utf8.count + kind.utf8.count + at.utf8.count + 80)
        var first = true
        for piece in [prevHash, String(seq), runId ?? "", String(runSeq), kind, at, detail] {
            if !first { input.append(0x0A) }
            first = false
            input.append(contentsOf: piece.utf8)
        }
        return hex(SHA256.hash(data: input))
    }

    package static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        Hex.lowercase(digest)
    }
}
