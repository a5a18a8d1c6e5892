/// Walks events in `seq` order and reports the first one at which the chain does not hold: a missing
/// or extra `seq`, a `prevHash` that is not the previous row's hash, a hash that does not match the
/// row's content, or a `runSeq` that is not the run's next number. With anchors (the heads of
/// verified checkpoints) also an event at an anchor's seq with another hash, and a chain that ends
/// before an anchor: the one change a chain alone cannot show, a truncated and re-headed tail.
package struct ChainVerifier {
    private var checked: Int64 = 0
    private var lastSeq: Int64 = 0
    private var lastHash = AuditChain.genesisHash
    /// The last runSeq per run ("" stands for events without a run, which have their own numbering).
    private var runSeqs: [String?: Int64] = [:]
    /// The hashes signed for each anchored seq (two checkpoints may name the same seq).
    private let anchors: [Int64: [String]]

    package init(anchors: [AuditChainHead] = []) {
        var bySeq: [Int64: [String]] = [:]
        for anchor in anchors { bySeq[anchor.seq, default: []].append(anchor.hash) }
        self.anchors = bySeq
    }

    package mutating func check(_ event: AuditEvent) -> ChainVerification? {
        let expectedSeq = lastSeq + 1
        if event.seq != expectedSeq {
            return broken(at: expectedSeq, "event seq \(expectedSeq) is missing: the event after seq \(lastSeq) has seq \(event.seq) (a row was deleted or renumbered)")
        }
        if event.prevHash != lastHash {
            return broken(at: event.seq, "prevHash of seq \(event.seq) is not the hash of seq \(lastSeq) (a row was inserted, deleted or reordered)")
        }
        let recomputed = AuditChain.hash(prevHash: event.prevHash, seq: event.seq, runId: event.runId, runSeq: event.runSeq,
                                         kind: event.kind, at: event.at, detail: event.detail)
        if recomputed != event.hash {
            return broken(at: event.seq, "the hash of seq \(event.seq) does not match its content (the row was edited)")
        }
        let expectedRunSeq = (runSeqs[event.runId] ?? 0) + 1
        if event.runSeq != expectedRunSeq {
            return broken(at: event.seq, "seq \(event.seq) has runSeq \(event.runSeq) for run \(event.runId ?? "(none)"), expected \(expectedRunSeq)")
        }
        if let signed = anchors[event.seq]?.first(where: { $0 != event.hash }) {
            return broken(at: event.seq, "the hash of seq \(event.seq) is not the one a checkpoint signed (\(signed)): the event was changed, or the chain was rewritten from there")
        }
        runSeqs[event.runId] = event.runSeq
        lastSeq = event.seq
        lastHash = event.hash
        checked += 1
        return nil
    }

    /// Compares the last event with the chain head the store advances on every append.
    package func finish(head: (seq: Int64, hash: String)?) -> ChainVerification {
        guard let head else {
            return broken(at: lastSeq + 1, "the chain head row is missing (the database was edited by hand)")
        }
        if head.seq > lastSeq {
            return broken(at: lastSeq + 1, "events after seq \(lastSeq) are missing: the chain head records seq \(head.seq)")
        }
        if head.seq < lastSeq {
            return broken(at: head.seq + 1, "events after seq \(head.seq) were added outside the store: the chain head records seq \(head.seq)")
        }
        if head.hash != lastHash {
            return broken(at: lastSeq, "the hash of seq \(lastSeq) is not the one the chain head records")
        }
        if let signed = anchors.keys.filter({ $0 > lastSeq }).max() {
            return broken(at: lastSeq + 1, "the chain ends at seq \(lastSeq) but a checkpoint signed seq \(signed): \(lastSeq + 1 == signed ? "event \(signed) was" : "events \(lastSeq + 1) to \(signed) were") removed (the tail was truncated)")
        }
        return ChainVerification(eventsChecked: checked, firstBrokenSeq: nil, reason: nil,
                                 head: lastSeq > 0 ? AuditChainHead(seq: lastSeq, hash: lastHash) : nil)
    }

    private func broken(at seq: Int64, _ reason: String) -> ChainVerification {
        ChainVerification(eventsChecked: checked, firstBrokenSeq: seq, reason: reason)
    }
}
