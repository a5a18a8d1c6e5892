/// Moving a trail between stores (`stockade audit export` and `import`), in `AuditExportFormat`.
/// Both check the hash chain with `ChainVerifier`, the one `verifyChain` uses: a broken trail is
/// neither exported whole nor imported at all. API tokens live beside the trail, not in it, and are
/// not moved.
extension AuditLedger {
    /// Writes the whole trail, one line at a time through `write`, from one read snapshot of the
    /// store: the header, every run, bundle, diff and event, and the end line. Fails with
    /// `.brokenChain` (before the end line, so the output is never taken for a whole export) when the
    /// chain does not hold.
    public func exportTrail(exportedAt: String? = nil, _ write: (String) throws -> Void) throws -> AuditTransferSummary {
        try write(AuditExportFormat.headerLine(source: backend.location, exportedAt: exportedAt ?? AuditClock.now()))
        var verifier = ChainVerifier()
        var counts = AuditRowCounts()
        let storedHead = try backend.allRows { row in
            switch row {
            case .run: counts.runs += 1
            case .bundle: counts.bundles += 1
            case .diff: counts.diffs += 1
            case .event(let event):
                if let broken = verifier.check(event) { throw brokenChain(broken) }
                counts.events += 1
            }
            try write(AuditExportFormat.line(row))
        }
        let verification = verifier.finish(head: storedHead.map { ($0.seq, $0.hash) })
        guard verification.isValid else { throw brokenChain(verification) }
        let head = verification.head ?? AuditChainHead(seq: 0, hash: AuditChain.genesisHash)
        try write(AuditExportFormat.endLine(counts: counts, head: head))
        return AuditTransferSummary(counts: counts, head: head)
    }

    /// Reads an export (`nextLine` returns each line without its newline, nil at the end) into this
    /// store, which must hold no row yet, in one durable write transaction: a line that fails a check
    /// (`AuditImportReader`) or a store that refuses a row leaves the store as it was. `source` names
    /// the file in error messages.
    public func importTrail(source: String, _ nextLine: () throws(AuditError) -> [UInt8]?) throws(AuditError) -> AuditTransferSummary {
        try backend.withTransaction(durable: true) { (tx) throws(AuditError) -> AuditTransferSummary in
            let existing = try tx.rowCounts()
            guard existing.isEmpty else {
                throw AuditError(.storeNotEmpty, path: backend.location,
                                 "the store already holds \(existing.events) events (\(existing.runs) runs, \(existing.bundles) bundles, \(existing.diffs) diffs): an import goes only into an empty store; name a new one with --store")
            }
            var reader = AuditImportReader(source: source)
            while let line = try nextLine() {
                switch try reader.read(line) {
                case .run(let run)?: try tx.insertRun(run)
                case .bundle(let bundle)?: try tx.insertBundle(record: bundle)
                case .diff(let diff)?: try tx.insertDiff(record: diff)
                case .event(let event)?: try tx.insertEvent(event)
                case nil: break
                }
            }
            let summary = try reader.finish()
            try tx.setChainHead(summary.head)
            return summary
        }
    }

    private func brokenChain(_ verification: ChainVerification) -> AuditError {
        AuditError(.brokenChain, path: backend.location,
                   "the audit chain is broken at seq \(verification.firstBrokenSeq ?? 0): \(verification.reason ?? "hash mismatch"); the export is incomplete (no end line): see `stockade audit verify`")
    }
}
