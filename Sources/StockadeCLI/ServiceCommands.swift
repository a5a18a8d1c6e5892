import ArgumentParser
import FoundationEssentials
import Glibc
import Synchronization
import StockadeAudit
import StockadeClient
import StockadeLinux
import StockadePolicy
import StockadeSupervisor

// The commands as clients of `stockade serve` (`--host` / `$STOCKADE_HOST`): each prints what the
// local command prints, from the objects the API answers, and exits as it does.

/// Bodies the CLI may take from the service: reports carry up to two captured streams and their
/// base64 (the logs route reads up to 64 MiB a stream).
private let maxReportBytes = 512 << 20

/// The client's working directory, to make a relative path absolute before it reaches the service
/// (whose working directory is not this one).
private func absolute(_ path: String) -> String {
    if path.hasPrefix("/") { return path }
    var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
    guard getcwd(&buffer, buffer.count) != nil else { return path }
    let cwd = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return (cwd == "/" ? "" : cwd) + "/" + (path.hasPrefix("./") ? String(path.dropFirst(2)) : path)
}

/// A random Idempotency-Key: a retried submission (429, a lost answer) never starts a second run.
private func idempotencyKey() -> String {
    var generator = SystemRandomNumberGenerator()
    let digits = Array("0123456789abcdef")
    return "stockade-cli-" + String((0..<32).map { _ in digits[Int(generator.next() % 16)] })
}

/// A string-valued JSON object from `KEY=VALUE` pairs; a later pair wins, as it does locally.
private func object(_ pairs: [(String, String)]) -> JSONValue {
    var members: [String: JSONValue] = [:]
    for (k, v) in pairs { members[k] = .string(v) }
    return .object(members)
}

/// A submission an interrupt ended before the service admitted anything.
struct SubmissionStopped: Error {}

enum ServiceRuns {
    /// `POST /v1/runs` until admitted: a full queue or a token over its call rate (429) is waited out
    /// for its Retry-After. On the session's connection, which `wait` then takes on.
    /// A stalled answer is asked for again once, on a new connection, with the same key: the service
    /// answers a submission it had admitted with the same run, never a second one.
    static func submit(_ client: ServiceSession, _ bytes: [UInt8], stop: () -> Bool = { false }) throws -> String {
        let key = idempotencyKey()
        var stalls = 0
        while true {
            // `stop` (an interrupt) ends the submission while nothing can have been admitted: before the
            // first attempt and after each refusal; after a stalled answer the run may have been, and the
            // same key is sent again to learn its id.
            if stalls == 0, stop() { throw SubmissionStopped() }
            do {
                let answer = try client.json("POST", "/v1/runs", body: bytes, headers: [("Idempotency-Key", key)])
                guard let id = answer.object?["id"]?.string, id.utf8.count == 26,
                      id.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) }) else {
                    throw ClientError(.protocolViolation, "the service answered POST /v1/runs without a run id: \(answer.serialized().prefix(200))")
                }
                return id
            } catch let refusal as ServiceRefusal where refusal.status == 429 && (refusal.code == "queue-full" || refusal.code == "rate-limited") {
                // Neither started anything: the same key is sent again.
                sleep(UInt32(max(1, refusal.retryAfter ?? 5)))
            } catch let error as ClientError where error.code == .stalled {
                stalls += 1
                if stalls > 1 { throw ClientError(.stalled, error.message + "; twice, the second time with the same Idempotency-Key") }
            }
        }
    }

    /// `GET /v1/runs/{id}/wait`: the run's report object as the service sent it. A token over its call
    /// rate (429 `rate-limited`) waits out the Retry-After. A connection the service closed before
    /// answering (a long run) is asked again, and so, once, is an answer that stalled: the run goes on
    /// in the service whatever its client's connection does.
    static func wait(_ client: ServiceSession, _ id: String) throws -> JSONValue {
        var attempts = 0
        var stalls = 0
        while true {
            do {
                let answer = try client.json("GET", "/v1/runs/\(id)/wait", limit: maxReportBytes)
                guard let report = answer.object?["report"], report.object != nil else {
                    throw ClientError(.protocolViolation, "the service answered GET /v1/runs/\(id)/wait without a report")
                }
                return report
            } catch let error as ClientError where error.code == .protocolViolation && attempts < 3 {
                attempts += 1
            } catch let error as ClientError where error.code == .stalled {
                stalls += 1
                if stalls > 1 { throw ClientError(.stalled, error.message + "; twice (run \(id) may still be running there; its events: stockade audit events --host … --run \(id))") }
            } catch let refusal as ServiceRefusal where refusal.status == 429 && refusal.code == "rate-limited" {
                sleep(UInt32(max(1, refusal.retryAfter ?? 1)))
            } catch let refusal as ServiceRefusal where refusal.status == 409 && refusal.code == "not-waitable" {
                // The service forgets a finished run and reads its report from its run directory; a run
                // refused before it had one (an unknown profile, say) leaves no report to read. A node
                // of a shared queue says why itself (abandoned by a node that died, cancelled while queued).
                throw ClientError(.protocolViolation, "run \(id) ended on the service without a report it can give (\(refusal.message)); its events: stockade audit events --host … --run \(id)")
            }
        }
    }

    /// `POST /v1/runs/{id}/cancel` for an interrupt: a token over its call rate (429 `rate-limited`)
    /// waits the Retry-After out (1 to 10 s) and asks again (a cancel is idempotent), up to 10 times;
    /// a cancel the service refuses otherwise, or cannot be sent, is said on stderr, since the run
    /// goes on there.
    static func cancel(_ client: ServiceClient, _ id: String) {
        for attempt in 1...10 {
            do {
                _ = try client.json("POST", "/v1/runs/\(id)/cancel", body: [])
                return
            } catch let refusal as ServiceRefusal where refusal.status == 429 && refusal.code == "rate-limited" && attempt < 10 {
                sleep(UInt32(min(10, max(1, refusal.retryAfter ?? 1))))
            } catch let refusal as ServiceRefusal where refusal.status == 409 && refusal.code == "not-cancellable" {
                return  // it ended meanwhile: its report comes
            } catch {
                Console.error("stockade: run \(id) may still be running on the service: its cancel failed: \(error)")
                return
            }
        }
    }

    /// The report as the CLI's type: for its exit status and its summary line.
    static func decode(_ report: JSONValue) throws -> RunReport {
        do {
            return try RunReport(json: report)
        } catch {
            throw ClientError(.protocolViolation, "the service's report is not a run report: \(error)")
        }
    }

    /// A captured stream's bytes: `stdoutBase64` when they are not UTF-8, else the text.
    static func captured(_ report: JSONValue, _ stream: String) -> [UInt8] {
        let o = report.object ?? [:]
        if let base64 = o[stream + "Base64"]?.string, let data = Data(base64Encoded: base64) { return Array(data) }
        return Array((o[stream]?.string ?? "").utf8)
    }
}

extension RunFlags {
    /// The run's flags as a `POST /v1/runs` body (a batch request line's keys). Values were checked
    /// by `options(readingFiles:)`; relative paths are made absolute here.
    func requestBody(_ options: RunOptions) -> JSONValue {
        var o: [String: JSONValue] = ["profile": .string(profile)]
        if let command = options.command { o["command"] = .array(command.map { .string($0) }) }
        if let memory { o["memory"] = .string(memory) }
        if let cpus { o["cpus"] = .number(cpus) }
        if let pids { o["pids"] = .number(pids) }
        if let timeout { o["timeout"] = .string(timeout) }
        if let network { o["network"] = .string(network) }
        if !allowHost.isEmpty { o["allowHosts"] = .array(allowHost.map { .string($0) }) }
        if !publish.isEmpty { o["publish"] = .array(publish.map { .string($0) }) }
        if !volume.isEmpty {
            o["volumes"] = .array(volume.map { v in
                guard !v.hasPrefix("/"), let colon = v.firstIndex(of: ":") else { return .string(v) }
                return .string(absolute(String(v[..<colon])) + v[colon...])
            })
        }
        if !options.environment.isEmpty { o["env"] = object(options.environment) }
        if !options.labels.isEmpty { o["labels"] = object(options.labels.map { ($0.key, $0.value) }) }
        if let name { o["name"] = .string(name) }
        if let workspace { o["workspace"] = .string(absolute(workspace)) }
        if let request { o["request"] = .string(absolute(request)) }
        if let image { o["image"] = .string(image) }
        if let rootfs { o["rootfs"] = .string(rootfs) }
        return .object(o)
    }

    /// `stockade run --host`: submit, wait, then print what a local run prints and exit with its status.
    func run(through client: ServiceClient) throws {
        let options: RunOptions
        do {
            options = try self.options(readingFiles: true)
        } catch {
            Console.error("stockade run: \(error)")
            throw ExitCode(125)
        }
        let report: JSONValue, decoded: RunReport
        do {
            let session = ServiceSession(client)
            // An interrupt cancels the run on the service, as it cancels a local one; one that comes
            // while the submission is under way cancels the run as soon as its id is known. The cancel
            // on a thread of its own: a cancel waiting out a refusal must not hold back a second
            // interrupt, which ends this process at once.
            let pending = Mutex<(interrupted: Bool, id: String?)>((false, nil))
            let cancel: @Sendable (String) -> Void = { id in
                if !DetachedThread.start({ ServiceRuns.cancel(client, id) }) { ServiceRuns.cancel(client, id) }
            }
            Interrupts.install(first: {
                let known = pending.withLock { p -> String? in
                    p.interrupted = true
                    return p.id
                }
                if let known { cancel(known) }
            }, forced: {})
            let id = try ServiceRuns.submit(session, Array(requestBody(options).serialized().utf8),
                                            stop: { pending.withLock { $0.interrupted } })
            let interrupted = pending.withLock { p -> Bool in
                p.id = id
                return p.interrupted
            }
            if interrupted { cancel(id) }
            report = try ServiceRuns.wait(session, id)
            decoded = try ServiceRuns.decode(report)
        } catch is SubmissionStopped {
            Console.error("stockade: interrupted before the service admitted the run: nothing ran")
            throw ExitCode(130)
        } catch {
            throw ServiceFailure.exit(error, usage: 125, failure: 125)
        }
        if json {
            print(report.serialized())
        } else {
            TerminalOutput.write(ServiceRuns.captured(report, "stdout"), to: 1)
            TerminalOutput.write(ServiceRuns.captured(report, "stderr"), to: 2)
            Console.error(decoded.summary)
        }
        throw ExitCode(decoded.exitStatus)
    }
}

extension Batch {
    /// `stockade batch --host`: each line submitted (after the local checks of the line), at most
    /// `--parallel` runs of this batch under way at once; a report line printed as each finishes.
    func run(through client: ServiceClient) async throws {
        let fd: Int32 = file == "-" ? 0 : open(file, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            Console.error("stockade: cannot open \(file): \(String(cString: strerror(errno)))")
            throw ExitCode(1)
        }
        defer { if fd != 0 { close(fd) } }
        let lines = LineReader(fd: fd, maxLine: 1 << 20)
        let outcome = await withTaskGroup(of: LineResult.self) { group in
            var invalid = 0
            var failure: String?
            var lineNumber = 0
            var running = 0
            var seen: [String: Int] = [:]
            func reject(_ reason: String, id: String?, line: Int) {
                var report = Supervisor.rejectedRequest(reason: "line \(line): \(reason)")
                report.requestId = id
                report.line = line
                Console.out(report.json())
                invalid += 1
            }
            func take(_ result: LineResult) {
                running -= 1
                switch result {
                case .reported: break
                case .refused: invalid += 1
                case .failed(let message): if failure == nil { failure = message }
                }
            }
            while failure == nil, let line = lines.next() {
                lineNumber += 1
                if line.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) { continue }
                let number = lineNumber
                guard line.count <= (1 << 20) else {
                    reject("longer than 1 MiB", id: nil, line: number)
                    continue
                }
                let request: BatchRequest
                do throws(BatchRequest.Failure) {
                    request = try BatchRequest.parse(line)
                } catch {
                    reject(error.description, id: error.id, line: number)
                    continue
                }
                if let id = request.id {
                    if let first = seen[id] {
                        reject("id: \"\(id)\" was already used on line \(first): ids must be unique", id: id, line: number)
                        continue
                    }
                    seen[id] = number
                }
                while running >= parallel, let result = await group.next() { take(result) }
                if failure != nil { break }
                running += 1
                let body = line
                group.addTask {
                    await Blocking.run { () -> LineResult in
                        do {
                            let session = ServiceSession(client)
                            let id = try ServiceRuns.submit(session, body)
                            guard var report = try ServiceRuns.wait(session, id).object else { return .reported }
                            if let requestId = request.id { report["id"] = .string(requestId) }
                            report["line"] = .number(number)
                            Console.out(JSONValue.object(report).serialized())
                            return .reported
                        } catch let refusal as ServiceRefusal where refusal.status == 400 {
                            // The service's own checks of the line: refused as a local batch refuses it.
                            var report = Supervisor.rejectedRequest(reason: "line \(number): \(refusal.message)")
                            report.requestId = request.id
                            report.line = number
                            Console.out(report.json())
                            return .refused
                        } catch let error as ClientError where error.code == .protocolViolation || error.code == .stalled {
                            // This line's run only: the batch goes on, and exits 1.
                            Console.error("stockade: line \(number): \(error.message)")
                            return .refused
                        } catch {
                            return .failed(ServiceFailure.message(error))
                        }
                    }
                }
            }
            for await result in group { take(result) }
            return (invalid, failure)
        }
        if let failure = outcome.1 {
            Console.error("stockade: \(failure)")
            throw ExitCode(1)
        }
        if outcome.0 > 0 { throw ExitCode(1) }
    }

    /// What became of one submitted line.
    enum LineResult: Sendable {
        case reported
        /// The service refused the line (400): a `request-line` report was printed.
        case refused
        /// The service could not be used: the batch stops.
        case failed(String)
    }
}


extension ReviewCommand.List {
    func run(through client: ServiceClient) throws {
        let records: [DiffRecord]
        do {
            let answer = try client.json("GET", "/v1/reviews" + (state.map { "?state=" + QueryValue.encode($0) } ?? ""), limit: 256 << 20)
            guard let items = answer.object?["reviews"]?.array else {
                throw ClientError(.protocolViolation, "the service answered GET /v1/reviews without a reviews array")
            }
            records = try items.map { item in
                guard let record = DiffRecord(json: item) else {
                    throw ClientError(.protocolViolation, "the service sent a review that is not a diff record: \(item.serialized().prefix(200))")
                }
                return record
            }
        } catch {
            throw ServiceFailure.exit(error, usage: 2, failure: 1)
        }
        ReviewCommand.List.show(records, json: json)
    }
}

extension ReviewCommand.Show {
    func run(through client: ServiceClient) throws {
        let record: DiffRecord
        do {
            let answer = try client.json("GET", "/v1/reviews/\(id)", limit: 256 << 20)
            guard let parsed = DiffRecord(json: answer) else {
                throw ClientError(.protocolViolation, "the service sent a review that is not a diff record")
            }
            record = parsed
        } catch let refusal as ServiceRefusal where refusal.status == 404 && refusal.code == "not-found" {
            Console.error("stockade: no diff with id \(id)")
            throw ExitCode(1)
        } catch {
            throw ServiceFailure.exit(error, usage: 2, failure: 1)
        }
        ReviewCommand.Show.show(record, json: json)
    }
}

extension ReviewCommand.Decision {
    /// `POST /v1/reviews/{id}/accept|reject` with the note; the actor is the token's name.
    func record(through client: ServiceClient, verb: String, done: String) throws {
        let body = note.map { JSONValue.object(["note": .string($0)]) } ?? .object([:])
        let decided: DiffRecord
        do {
            let answer = try client.json("POST", "/v1/reviews/\(id)/\(verb)", body: Array(body.serialized().utf8))
            guard let parsed = DiffRecord(json: answer) else {
                throw ClientError(.protocolViolation, "the service sent a decision that is not a diff record")
            }
            decided = parsed
        } catch {
            // Every refusal of a decision (unknown diff, decided already, conflict, self-approval)
            // exits 1 naming the reason, as the local command does.
            throw ServiceFailure.exit(error, usage: 1, failure: 1)
        }
        if json {
            Console.out(decided.jsonValue().serialized())
        } else {
            Console.out("diff \(id) \(done) by \(TerminalOutput.field(decided.decidedBy ?? "?"))")
        }
    }
}

extension AuditCommand.Events {
    /// `GET /v1/events`. Without `--follow` the stream is read up to the events that existed when
    /// the command began: the command first opens (and at once closes) a stream of a run id nobody
    /// has, whose `api.request` event marks that point, then reads every event before the marker,
    /// keeping those `--run` and `--kind` select. With `--follow` the service filters, and it goes on.
    func run(through client: ServiceClient) throws {
        do {
            if let runId {
                // An unknown run is an error, as locally (the event stream would just stay empty).
                do {
                    _ = try client.json("GET", "/v1/runs/\(QueryValue.encode(runId))")
                } catch let refusal as ServiceRefusal where refusal.status == 404 {
                    Console.error("stockade: --run: no run \(TerminalOutput.field(runId)) in the service's audit trail (see `stockade audit runs` on its host)")
                    throw ExitCode(1)
                }
            }
            var query = ["since=\(since ?? 0)"]
            var marker: String?
            if follow {
                if let runId { query.append("run=" + QueryValue.encode(runId)) }
                if let kind { query.append("kind=" + QueryValue.encode(kind)) }
            } else {
                let id = Supervisor.makeRunId()
                marker = id
                // Recorded (with this run id) before the service answers: the marker is in the trail.
                _ = try client.head("GET", "/v1/events?run=\(id)&since=\(Int64.max)")
            }
            try client.events("/v1/events?" + query.joined(separator: "&")) { message in
                guard let data = message.data.isEmpty ? nil : try? StrictJSON.parse(Array(message.data.utf8), limits: .init(maxBytes: 8 << 20, maxDepth: 64)),
                      let event = AuditEvent(json: data) else {
                    throw ClientError(.protocolViolation, "the service's event stream sent an event that is not an audit event: \(message.data.prefix(200))")
                }
                if let marker, event.kind == "api.request", let detail = event.detailValue?.object,
                   detail["runId"]?.string == marker, detail["route"]?.string == "/v1/events" {
                    return false
                }
                if !follow {
                    if let runId, event.runId != runId { return true }
                    if let kind, event.kind != kind { return true }
                }
                show(event)
                return true
            }
        } catch let exit as ExitCode {
            throw exit
        } catch {
            throw ServiceFailure.exit(error, usage: 2, failure: 1)
        }
    }
}
