import StockadePolicy

/// The one place events are appended: inside a write transaction it numbers each event (`seq` after
/// the chain head, `runSeq` after its run's last), sanitizes and serializes its detail, chains its hash
/// to the previous one and stores it. One appender serves a whole transaction, whether it appends one
/// event or a thousand: the head and each run's last `runSeq` are read once, on first need, and carried
/// along; `finish` writes the new head once.
struct ChainAppender<Transaction: AuditTransaction> {
    private let tx: Transaction
    let sanitizer: DetailSanitizer
    private let location: String
    /// nil until the first append reads it.
    private var head: AuditChainHead?
    /// The last runSeq of each run appended to in this transaction (the nil key: events of no run).
    private var runSeqs: [String?: Int64] = [:]

    init(_ tx: Transaction, sanitizer: DetailSanitizer, location: String) {
        self.tx = tx
        self.sanitizer = sanitizer
        self.location = location
    }

    /// Appends one event; returns its `seq`. A `runId` must name a recorded run.
    @discardableResult
    mutating func append(runId: String?, kind: String, at: String, detail: JSONValue) throws(AuditError) -> Int64 {
        let previous = try currentHead()
        let lastRunSeq: Int64
        if let known = runSeqs[runId] {
            lastRunSeq = known
        } else {
            if let runId, try tx.runState(runId: runId) == nil {
                throw AuditError(.unknownRun, path: location, "no run with id \(runId) is recorded; begin the run before recording its events")
            }
            lastRunSeq = try tx.lastRunSeq(runId: runId)
        }
        let seq = previous.seq + 1
        let runSeq = lastRunSeq + 1
        let text = sanitizer.sanitize(detail).serialized()
        let hash = AuditChain.hash(prevHash: previous.hash, seq: seq, runId: runId, runSeq: runSeq, kind: kind, at: at, detail: text)
        try tx.insertEvent(AuditEvent(seq: seq, runId: runId, runSeq: runSeq, kind: kind, at: at, detail: text,
                                      prevHash: previous.hash, hash: hash))
        head = AuditChainHead(seq: seq, hash: hash)
        runSeqs[runId] = runSeq
        return seq
    }

    mutating func append(runId: String?, kind: AuditEventKind, at: String, detail: JSONValue) throws(AuditError) {
        try append(runId: runId, kind: kind.rawValue, at: at, detail: detail)
    }

    /// Advances the chain head row to the last event appended, if any. The ledger calls it once, after
    /// the transaction's body, before the commit.
    func finish() throws(AuditError) {
        if let head { try tx.setChainHead(head) }
    }

    private mutating func currentHead() throws(AuditError) -> AuditChainHead {
        if let head { return head }
        guard let stored = try tx.chainHead() else {
            throw AuditError(.corruptRow, path: location, "the chain head row is missing: the database was edited by hand; run `stockade audit verify`")
        }
        head = stored
        return stored
    }
}
