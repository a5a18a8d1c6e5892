import Crypto
import StockadePolicy
import Synchronization

/// The audit trail's rules over any `AuditBackend`: the hash chain (through `ChainAppender`), the run
/// and review state machines, redaction and capping of everything stored, and which runs a supervisor
/// may declare abandoned. The backend only stores and reads rows.
///
/// Every method that appends runs in one backend write transaction, so an event and the rows it
/// describes become visible together. Commits that close a story (a run's end, a diff, a review
/// decision, an application, an abandonment) are durable; the others may be lost by a power cut but
/// are made durable by the next durable one.
public final class AuditLedger<Backend: AuditBackend>: AuditStore, AuditWriteObserving {
    public let backend: Backend
    /// Stored on each run this ledger begins: a later supervisor on the same host judges by them
    /// whether the run's supervisor is still alive.
    public let supervisorPid: Int32
    public let supervisorStart: UInt64
    /// This host's identity (`HostIdentity`): stored on each run begun here, and the only host whose
    /// runs `markAbandoned` judges.
    public let hostId: String
    private let secrets = Mutex(DetailSanitizer())
    /// In a class, not as a bare closure: a closure kept in a `Mutex` is re-abstracted by every
    /// `withLock` (an `inout` access) and written back inside two more thunks, so each write's call
    /// went through a chain two thunks longer than the last (quadratic over a service's life).
    private final class WriteObserver: Sendable {
        let call: @Sendable (Duration) -> Void
        init(_ call: @escaping @Sendable (Duration) -> Void) { self.call = call }
    }
    private let writeObserver = Mutex<WriteObserver?>(nil)

    public init(backend: Backend, supervisorPid: Int32, supervisorStart: UInt64, hostId: String) {
        self.backend = backend
        self.supervisorPid = supervisorPid
        self.supervisorStart = supervisorStart
        self.hostId = hostId
    }

    public func addSecrets(_ values: [String]) {
        secrets.withLock { $0.addSecrets(values) }
    }

    public func observeWrites(_ observer: @escaping @Sendable (Duration) -> Void) {
        let boxed = WriteObserver(observer)
        writeObserver.withLock { $0 = boxed }
    }

    // MARK: runs

    public func beginRun(runId: String, profile: String, profileDigest: String, command: [String], detail: JSONValue) throws(AuditError) {
        try write { (tx, chain) throws(AuditError) in
            let now = AuditClock.now()
            let command = command.map(chain.sanitizer.sanitize)
            let profile = chain.sanitizer.sanitize(profile)
            if try tx.runState(runId: runId) != nil {
                throw AuditError(.duplicateRun, path: backend.location, "a run with id \(runId) is already recorded; run ids must be unique")
            }
            try tx.insertRun(AuditRunRecord(runId: runId, profile: profile, profileDigest: profileDigest, command: command,
                                            state: AuditRunState.running.rawValue, outcome: nil, exitStatus: nil, createdAt: now,
                                            endedAt: nil, supervisorPid: supervisorPid, supervisorStart: supervisorStart, hostId: hostId))
            try chain.append(runId: runId, kind: .runCreated, at: now,
                             detail: Self.merged(detail, ["profile": .string(profile), "profileDigest": .string(profileDigest),
                                                          "command": .array(command.map { .string($0) })]))
        }
    }

    public func finishRun(runId: String, outcome: String, exitStatus: Int32, detail: JSONValue,
                          after events: [(runId: String?, kind: String, detail: JSONValue)]) throws(AuditError) {
        try write(durable: true, grouped: true) { (tx, chain) throws(AuditError) in
            guard let current = try tx.runState(runId: runId) else { throw unknownRun(runId) }
            guard current == .running else {
                throw AuditError(.invalidState, path: backend.location, "run \(runId) is \(current.rawValue), not running: it cannot be finished again")
            }
            for event in events {
                try chain.append(runId: event.runId, kind: event.kind, at: AuditClock.now(), detail: event.detail)
            }
            let now = AuditClock.now()
            try tx.endRun(runId: runId, AuditRunEnding(state: .finished, outcome: outcome, exitStatus: exitStatus, endedAt: now))
            try chain.append(runId: runId, kind: .runFinished, at: now,
                             detail: Self.merged(detail, ["outcome": .string(outcome), "exitStatus": .number(exitStatus)]))
        }
    }

    /// Judges only the runs begun on this host (and those written before runs recorded a host, which
    /// a store shared by several hosts cannot have): a pid says nothing about another host's processes.
    public func markAbandoned(isAlive: (Int32, UInt64) -> Bool) throws(AuditError) -> [String] {
        try write(durable: true) { (tx, chain) throws(AuditError) -> [String] in
            var abandoned: [String] = []
            for run in try tx.runningRuns() where isOwnedHere(run) && !isAlive(run.supervisorPid, run.supervisorStart) {
                let now = AuditClock.now()
                try tx.endRun(runId: run.runId, AuditRunEnding(state: .abandoned, outcome: nil, exitStatus: nil, endedAt: now))
                try chain.append(runId: run.runId, kind: .runAbandoned, at: now,
                                 detail: .object(["supervisorPid": .number(run.supervisorPid), "supervisorStart": .number(run.supervisorStart),
                                                  "markedBy": .number(supervisorPid)]))
                abandoned.append(run.runId)
            }
            return abandoned
        }
    }

    /// Records runs a run queue's reaper took from a node that stopped heartbeating, in one durable
    /// transaction together with whatever `select` writes through the same backend transaction (the
    /// queue's own rows), so the queue and the trail change together or not at all. `select` returns
    /// the runs it took. For each: `run.abandoned` when the trail has it `running` (a node may die before
    /// `run.created`: then only the queue records it); `run.retried` when a new attempt was queued, on
    /// the run when the trail has it, else as an event of no run. `markedByNode` is the reaper's node.
    /// Returns the ids of the runs it recorded `run.abandoned` for.
    public func abandonRuns(markedByNode: String,
                            _ select: (Backend.Transaction) throws(AuditError) -> [RunAbandonment]) throws(AuditError) -> Set<String> {
        try write(durable: true) { (tx, chain) throws(AuditError) -> Set<String> in
            let taken = try select(tx)
            guard !taken.isEmpty else { return [] }
            let owners = Dictionary(try tx.runningRuns().map { ($0.runId, $0) }, uniquingKeysWith: { first, _ in first })
            var audited: Set<String> = []
            for run in taken {
                let now = AuditClock.now()
                let state = try tx.runState(runId: run.runId)
                let retry: JSONValue = run.retryRunId.map { .string($0) } ?? .null
                if state == .running {
                    let owner = owners[run.runId]
                    try tx.endRun(runId: run.runId, AuditRunEnding(state: .abandoned, outcome: nil, exitStatus: nil, endedAt: now))
                    try chain.append(runId: run.runId, kind: .runAbandoned, at: now, detail: .object([
                        "supervisorPid": owner.map { .number($0.supervisorPid) } ?? .null,
                        "supervisorStart": owner.map { .number($0.supervisorStart) } ?? .null,
                        "markedBy": .number(supervisorPid), "markedByNode": .string(markedByNode),
                        "node": .string(run.node), "reason": .string(run.reason), "attempt": .number(run.attempt), "retryRunId": retry,
                    ]))
                    audited.insert(run.runId)
                }
                if let retryRunId = run.retryRunId {
                    try chain.append(runId: state == nil ? nil : run.runId, kind: .runRetried, at: now, detail: .object([
                        "runId": .string(run.runId), "retryRunId": .string(retryRunId), "attempt": .number(run.attempt + 1),
                        "retries": .number(run.retries), "node": .string(run.node), "reason": .string(run.reason),
                        "markedByNode": .string(markedByNode),
                    ]))
                }
            }
            return audited
        }
    }

    private func isOwnedHere(_ run: AuditRunOwner) -> Bool {
        guard let owner = run.hostId, !owner.isEmpty else { return true }
        return owner == hostId
    }

    // MARK: events

    @discardableResult
    public func record(runId: String?, kind: String, detail: JSONValue) throws(AuditError) -> Int64 {
        try write { (_, chain) throws(AuditError) -> Int64 in
            try chain.append(runId: runId, kind: kind, at: AuditClock.now(), detail: detail)
        }
    }

    public func recordMany(_ events: [(runId: String?, kind: String, detail: JSONValue)]) throws(AuditError) {
        guard !events.isEmpty else { return }
        try write { (_, chain) throws(AuditError) in
            for event in events {
                try chain.append(runId: event.runId, kind: event.kind, at: AuditClock.now(), detail: event.detail)
            }
        }
    }

    // MARK: bundles and diffs

    public func recordBundle(runId: String, role: String, status: String, reason: String?, files: Int, bytes: Int64,
                             manifestSha256: String?) throws(AuditError) {
        let role = try parse(role, as: BundleRole.self, "bundle role")
        let status = try parse(status, as: BundleStatus.self, "bundle status")
        try write { (tx, chain) throws(AuditError) in
            let now = AuditClock.now()
            let reason = reason.map(chain.sanitizer.sanitize)
            try requireRun(tx, runId)
            let id = try tx.insertBundle(AuditBundleRow(runId: runId, role: role, status: status, reason: reason, files: Int64(files),
                                                        bytes: bytes, manifestSha256: manifestSha256, createdAt: now))
            try chain.append(runId: runId, kind: status.eventKind, at: now, detail: .object([
                "bundleId": .number(id), "role": .string(role.rawValue), "files": .number(files), "bytes": .number(bytes),
                "reason": reason.map { .string($0) } ?? .null, "manifestSha256": manifestSha256.map { .string($0) } ?? .null,
            ]))
        }
    }

    public func recordDiff(runId: String, content: [UInt8], verdict: String, reason: String?) throws(AuditError) -> Int64 {
        let verdict = try parse(verdict, as: DiffVerdict.self, "diff verdict")
        let sha256 = AuditChain.hex(SHA256.hash(data: content))
        return try write(durable: true) { (tx, chain) throws(AuditError) -> Int64 in
            let now = AuditClock.now()
            let reason = reason.map(chain.sanitizer.sanitize)
            // The guard's rejection is the diff's final decision, taken when it is recorded.
            let rejected = verdict == .rejected
            try requireRun(tx, runId)
            let id = try tx.insertDiff(AuditDiffRow(runId: runId, sha256: sha256, content: content, verdict: verdict, reason: reason,
                                                    state: rejected ? .rejected : .pending, decidedBy: rejected ? "guard" : nil,
                                                    decidedAt: rejected ? now : nil, createdAt: now))
            let reasonValue: JSONValue = reason.map { .string($0) } ?? .null
            try chain.append(runId: runId, kind: .diffRecorded, at: now, detail: .object([
                "diffId": .number(id), "sha256": .string(sha256), "bytes": .number(content.count),
                "verdict": .string(verdict.rawValue), "reason": reasonValue,
            ]))
            if rejected {
                try chain.append(runId: runId, kind: .diffRejected, at: now,
                                 detail: .object(["diffId": .number(id), "actor": .string("guard"), "reason": reasonValue]))
            }
            return id
        }
    }

    public func decide(diffId: Int64, accept: Bool, actor: String, note: String?) throws(AuditError) -> DiffRecord {
        try write(durable: true) { (tx, chain) throws(AuditError) -> DiffRecord in
            let now = AuditClock.now()
            let decision: ReviewDecision = accept ? .accepted : .rejected
            let actor = chain.sanitizer.sanitize(actor)
            let note = note.map(chain.sanitizer.sanitize)
            // Read and written in one exclusive transaction: of two deciders, one wins and the other is told.
            let before = try existingDiff(tx, diffId)
            let from = try state(of: before)
            guard from.isDecidable else {
                throw AuditError(.invalidState, path: backend.location,
                                 "diff \(diffId) is already \(before.state) (by \(before.decidedBy ?? "?") at \(before.decidedAt ?? "?")): only a pending diff, or one in conflict, can be accepted or rejected")
            }
            try tx.updateDiff(before.with(state: decision.state, decidedBy: actor, note: note, decidedAt: now))
            let after = try existingDiff(tx, diffId)
            try chain.append(runId: after.runId, kind: .reviewDecided, at: now, detail: .object([
                "diffId": .number(diffId), "decision": .string(decision.rawValue), "actor": .string(actor),
                "note": note.map { .string($0) } ?? .null, "from": .string(from.rawValue),
            ]))
            return after
        }
    }

    public func markApplied(diffId: Int64, detail: JSONValue) throws(AuditError) {
        try write(durable: true) { (tx, chain) throws(AuditError) in
            let now = AuditClock.now()
            let diff = try existingDiff(tx, diffId)
            try requireApplicable(diff, "only an accepted diff is applied, once")
            try tx.updateDiff(diff.with(appliedAt: now, conflict: .some(nil)))
            try chain.append(runId: diff.runId, kind: .diffApplied, at: now, detail: Self.merged(detail, ["diffId": .number(diffId)]))
        }
    }

    public func markConflict(diffId: Int64, conflict: DiffConflict, detail: JSONValue) throws(AuditError) {
        try write(durable: true) { (tx, chain) throws(AuditError) in
            let now = AuditClock.now()
            let sanitized = DiffConflict(file: conflict.file.map(chain.sanitizer.sanitize), hunk: conflict.hunk.map(chain.sanitizer.sanitize),
                                         reason: chain.sanitizer.sanitize(conflict.reason))
            let diff = try existingDiff(tx, diffId)
            try requireApplicable(diff, "only an accepted, unapplied diff can be in conflict")
            try tx.updateDiff(diff.with(state: .conflict, conflict: sanitized))
            try chain.append(runId: diff.runId, kind: .diffConflict, at: now, detail: Self.merged(detail, [
                "diffId": .number(diffId), "file": sanitized.file.map { .string($0) } ?? .null,
                "hunk": sanitized.hunk.map { .string($0) } ?? .null, "reason": .string(sanitized.reason),
            ]))
        }
    }

    // MARK: reads

    public func diff(id: Int64) throws(AuditError) -> DiffRecord? {
        try backend.diff(id: id)
    }

    public func diffs(state wanted: String?) throws(AuditError) -> [DiffRecord] {
        try backend.diffs(state: wanted.map { (value) throws(AuditError) in try parse(value, as: DiffState.self, "review state") })
    }

    public func diffs(runId: String) throws(AuditError) -> [DiffRecord] {
        try backend.diffs(runId: runId)
    }

    public func events(runId: String?, since: Int64?, kind: String?, _ body: (AuditEvent) throws -> Void) throws {
        try backend.events(AuditEventQuery(runId: runId, since: since, kind: kind), body)
    }

    public func runs(_ body: (AuditRunRecord) throws -> Void) throws {
        try backend.runs(body)
    }

    public func verifyChain(anchors: [AuditChainHead]) throws(AuditError) -> ChainVerification {
        var verifier = ChainVerifier(anchors: anchors)
        var broken: ChainVerification?
        let head = try backend.scanChain { event in
            broken = verifier.check(event)
            return broken == nil
        }
        if let broken { return broken }
        return verifier.finish(head: head.map { ($0.seq, $0.hash) })
    }

    // MARK: internals

    /// Runs `body` in one backend write transaction with one `ChainAppender` for all its events, and
    /// advances the chain head before the commit. The secrets are those registered when it starts.
    /// `grouped`: a durable commit through `withGroupCommittedTransaction`.
    private func write<T: Sendable>(durable: Bool = false, grouped: Bool = false,
                                    _ body: (Backend.Transaction, inout ChainAppender<Backend.Transaction>) throws(AuditError) -> T) throws(AuditError) -> T {
        let sanitizer = secrets.withLock { $0 }
        let started = ContinuousClock.now
        defer {
            if let observer = writeObserver.withLock({ $0 }) { observer.call(ContinuousClock.now - started) }
        }
        let location = backend.location
        let transaction = { (tx: Backend.Transaction) throws(AuditError) -> T in
            var chain = ChainAppender(tx, sanitizer: sanitizer, location: location)
            let result = try body(tx, &chain)
            try chain.finish()
            return result
        }
        if durable && grouped { return try backend.withGroupCommittedTransaction(transaction) }
        return try backend.withTransaction(durable: durable, transaction)
    }

    private func requireRun(_ tx: Backend.Transaction, _ runId: String) throws(AuditError) {
        if try tx.runState(runId: runId) == nil { throw unknownRun(runId) }
    }

    private func existingDiff(_ tx: Backend.Transaction, _ id: Int64) throws(AuditError) -> DiffRecord {
        guard let diff = try tx.diff(id: id) else {
            throw AuditError(.unknownDiff, path: backend.location, "no diff with id \(id) is recorded; `stockade review list` shows the ids")
        }
        return diff
    }

    private func state(of diff: DiffRecord) throws(AuditError) -> DiffState {
        guard let state = DiffState(rawValue: diff.state) else {
            throw AuditError(.corruptRow, path: backend.location, "diff \(diff.id) has the unknown state \(diff.state); the row was edited by hand")
        }
        return state
    }

    private func requireApplicable(_ diff: DiffRecord, _ rule: String) throws(AuditError) {
        if try state(of: diff) == .accepted, diff.appliedAt == nil { return }
        let why = diff.state == DiffState.accepted.rawValue ? "was already applied at \(diff.appliedAt ?? "?")" : "is \(diff.state), not accepted"
        throw AuditError(.invalidState, path: backend.location, "diff \(diff.id) \(why): \(rule)")
    }

    private func unknownRun(_ runId: String) -> AuditError {
        AuditError(.unknownRun, path: backend.location, "no run with id \(runId) is recorded; begin the run before recording its events")
    }

    private func parse<Value: RawRepresentable & CaseIterable>(_ value: String, as type: Value.Type, _ what: String) throws(AuditError) -> Value
    where Value.RawValue == String {
        guard let parsed = Value(rawValue: value) else {
            throw AuditError(.invalidArgument, path: backend.location,
                             "\(what) \"\(value)\" is not one of \(Value.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        return parsed
    }

    /// `detail` with `extra` keys added (the ledger's keys win); a non-object detail is kept under "detail".
    static func merged(_ detail: JSONValue, _ extra: [String: JSONValue]) -> JSONValue {
        switch detail {
        case .object(let members): .object(members.merging(extra) { _, ours in ours })
        case .null: .object(extra)
        default: .object(extra.merging(["detail": detail]) { ours, _ in ours })
        }
    }
}

extension DiffRecord {
    /// This diff with its review columns changed (`conflict` is replaced only when given).
    func with(state: DiffState? = nil, decidedBy: String? = nil, note: String?? = nil, decidedAt: String? = nil,
              appliedAt: String? = nil, conflict: DiffConflict?? = nil) -> DiffRecord {
        DiffRecord(id: id, runId: runId, sha256: sha256, bytes: bytes, content: content, verdict: verdict, reason: reason,
                   state: state?.rawValue ?? self.state, decidedBy: decidedBy ?? self.decidedBy, note: note ?? self.note,
                   decidedAt: decidedAt ?? self.decidedAt, appliedAt: appliedAt ?? self.appliedAt, createdAt: createdAt,
                   conflict: conflict ?? self.conflict)
    }
}
