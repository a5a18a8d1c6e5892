import Foundation
import Hummingbird
import StockadeAudit
import StockadePolicy
import StockadeSupervisor

/// The routes' answers in node mode (`stockade serve --node`): any node answers for any run of the
/// shared queue from the queue's row (its state, the node that holds it, and the report that node
/// recorded); what only the node that ran it has (logs, result, receipt) is refused elsewhere with
/// the name of that node, never answered wrongly.
extension API {
    /// The queue's row of run `id`; nil without `--node` or for a run the queue never had.
    func queuedRun(_ id: String) throws -> QueuedRun? {
        guard let node = registry.node else { return nil }
        do {
            return try node.queue.run(id: id)
        } catch {
            throw queueUnavailable(error)
        }
    }

    func queueUnavailable(_ error: AuditError) -> APIError {
        failed("queue-unavailable", "cannot read the shared run queue", error)
    }

    /// The API's state of a queue row: `claimed` is `running`.
    static func state(_ row: QueuedRun) -> String {
        row.state == .claimed ? "running" : row.state.rawValue
    }

    /// `node`, `attempt`, `retryOf`, `retriedBy`: where a run of the queue ran and how it was retried.
    static func placement(_ row: QueuedRun) -> [String: JSONValue] {
        ["node": row.node.map { .string($0) } ?? .null, "attempt": .number(row.attempt),
         "retryOf": row.retryOf.map { .string($0) } ?? .null, "retriedBy": row.retriedBy.map { .string($0) } ?? .null]
    }

    /// `answer` with the run's `placement` when it is a run of the queue (node mode).
    func withPlacement(_ answer: [String: JSONValue], _ id: String) throws -> [String: JSONValue] {
        guard let row = try queuedRun(id) else { return answer }
        return answer.merging(API.placement(row)) { ours, _ in ours }
    }

    /// The report its node recorded in the queue, once finished.
    static func report(_ row: QueuedRun) -> JSONValue? {
        guard row.state == .finished, let text = row.report,
              let report = try? StrictJSON.parse(Array(text.utf8), limits: .init(maxBytes: 64 << 20, maxDepth: 16)) else { return nil }
        return forCaller(report)
    }

    /// `wait` on a run of the queue this node does not hold: the row is polled until the run ends,
    /// first after 5 ms and then twice as long each time up to 200 ms; a run this node claims
    /// meanwhile is awaited through its own handle, so its report comes as soon as it exists.
    func waitInQueue(_ id: String) async throws -> Reply {
        var delay = 5
        while true {
            if let submitted = await registry.submitted(id) {
                let report = await submitted.handle.report()
                return Reply(response: API.json(.object(try withPlacement(["id": .string(id), "state": .string("finished"),
                                                                           "report": API.forCaller(report.jsonValue)], id))),
                             runId: id)
            }
            guard let row = try queuedRun(id) else { throw APIError(.notFound, "not-found", "no run \(id)", field: "id") }
            switch row.state {
            case .finished:
                guard let report = API.report(row) else {
                    throw APIError(.conflict, "not-waitable",
                                   "run \(id) finished on node \(row.node ?? "?"), which stopped before recording its report (\(row.endReason ?? "no report")): the trail (`stockade audit events --run \(id)`) has its end")
                }
                var answer = API.placement(row)
                answer["id"] = .string(id)
                answer["state"] = .string("finished")
                answer["report"] = report
                return Reply(response: API.json(.object(answer)), runId: id)
            case .abandoned:
                let retried = row.retriedBy.map { "; it was retried as run \($0)" } ?? "; it was not retried (its request allowed \(row.retries) retries)"
                throw APIError(.conflict, "not-waitable",
                               "run \(id) was abandoned: node \(row.node ?? "?") stopped heartbeating (\(row.endReason ?? "?"))\(retried)")
            case .cancelled:
                throw APIError(.conflict, "not-waitable", "run \(id) was cancelled before any node started it: it has no report")
            case .queued, .claimed:
                if shutdown.isSet || Task.isCancelled {
                    throw APIError(.serviceUnavailable, "shutting-down", "the service is shutting down; wait for run \(id) on another node")
                }
                try await Task.sleep(for: .milliseconds(delay))
                delay = min(delay * 2, 200)
            }
        }
    }

    /// Refuses a route that needs the run's files on a node that did not run it: 409
    /// `run-on-other-node` with the node that did.
    func requireRunHere(_ id: String, what: String = "its logs, result and receipt are on that node") async throws {
        guard let node = registry.node, await registry.submitted(id) == nil, let row = try queuedRun(id),
              let owner = row.node, owner != node.name else { return }
        var error = APIError(.conflict, "run-on-other-node",
                             "run \(id) \(row.state == .claimed ? "runs" : "ran") on node \(owner): \(what); ask it")
        error.node = owner
        throw error
    }

    /// `GET /v1/runs` in node mode: the runs of the shared queue, every node's, in run-id order.
    func listQueue(_ node: NodeQueue, after: String, limit: Int, state: String?, label: (String, String)?) throws -> Reply {
        let wanted: QueuedRunState? = switch state {
        case "running": .claimed
        case let state?: QueuedRunState(rawValue: state)
        case nil: nil
        }
        var items: [JSONValue] = []
        var cursor: String? = after.isEmpty ? nil : after
        var more = false
        // Pages of the queue until `limit` rows pass the label filter, and one more tells of a next page.
        pages: while true {
            let rows: [QueuedRun]
            do {
                rows = try node.queue.runs(after: cursor, limit: 1000, state: wanted)
            } catch {
                throw queueUnavailable(error)
            }
            for row in rows {
                let request = (try? StrictJSON.parse(Array(row.request.utf8), limits: .init(maxBytes: 1 << 20, maxDepth: 8)))?.object ?? [:]
                var labels: [String: String] = [:]
                for (key, value) in request["labels"]?.object ?? [:] { if let text = value.string { labels[key] = text } }
                cursor = row.runId
                if let label, labels[label.0] != label.1 { continue }
                if items.count == limit {
                    more = true
                    break pages
                }
                let parsed = API.report(row)
                let report = parsed?.object
                var item = API.placement(row)
                item["id"] = .string(row.runId)
                item["state"] = .string(API.state(row))
                item["outcome"] = report?["outcome"] ?? .null
                let decoded = parsed.flatMap { try? RunReport(json: $0) }
                item["exitStatus"] = decoded.map { .number($0.exitStatus) } ?? .null
                item["name"] = request["name"].flatMap { $0.string.map { .string($0) } } ?? .null
                item["labels"] = .object(labels.mapValues { .string($0) })
                item["createdAt"] = row.claimedAt.map { .string($0) } ?? .null
                items.append(.object(item))
            }
            if rows.count < 1000 { break }
        }
        let next: JSONValue = more ? (items.last.flatMap { $0.object?["id"] } ?? .null) : .null
        return Reply(response: API.json(.object(["runs": .array(items), "next": next])), runId: nil)
    }
}
