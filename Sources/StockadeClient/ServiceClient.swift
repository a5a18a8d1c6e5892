import StockadePolicy

/// A client of `stockade serve`: where it listens and the bearer token to present. Each call is one
/// request on a connection of its own; answers are read with bounds (`ResponseReader`).
public struct ServiceClient: Sendable {
    public let address: ServiceAddress
    let token: String

    /// The variable that names the service when `--host` does not.
    public static let hostVariable = "STOCKADE_HOST"

    /// `--host` if given, else `$STOCKADE_HOST` (empty counts as unset); nil when neither names a
    /// service. The token is `$STOCKADE_TOKEN`, required then.
    public static func configured(host flag: String?, environment: [String: String]) throws(ClientError) -> ServiceClient? {
        let text: String, field: String
        if let flag {
            (text, field) = (flag, "--host")
        } else if let value = environment[hostVariable], !value.isEmpty {
            (text, field) = (value, "$STOCKADE_HOST")
        } else {
            return nil
        }
        let address = try ServiceAddress(parsing: text, field: field)
        guard let token = environment["STOCKADE_TOKEN"], !token.isEmpty else {
            throw ClientError(.usage, "\(field): $STOCKADE_TOKEN is not set: the service needs a bearer token (make one on the service's host with stockade token create --name NAME --scope SCOPES, then export STOCKADE_TOKEN)")
        }
        return try ServiceClient(address: address, token: token)
    }

    public init(address: ServiceAddress, token: String) throws(ClientError) {
        // It goes into a header line: no controls, no spaces, nothing beyond ASCII.
        guard token.utf8.count <= 4096, token.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw ClientError(.usage, "$STOCKADE_TOKEN: a bearer token is printable ASCII without spaces (as stockade token create prints it)")
        }
        self.address = address
        self.token = token
    }

    public struct Response: Sendable {
        public var head: ResponseHead
        public var body: [UInt8]
        public var status: Int { head.status }
    }

    /// Sends the request on `existing` (a new connection when nil); `keepAlive` leaves out `Connection: close`.
    fileprivate func open(_ method: String, _ path: String, body: [UInt8]?, headers: [(String, String)],
                          on existing: ServiceConnection? = nil, keepAlive: Bool = false) throws(ClientError) -> ResponseReader {
        let connection: ServiceConnection
        if let existing { connection = existing } else { connection = try ServiceConnection(address) }
        var head = "\(method) \(path) HTTP/1.1\r\nHost: stockade\r\n\(keepAlive ? "" : "Connection: close\r\n")Authorization: Bearer \(token)\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        if let body { head += "Content-Type: application/json\r\nContent-Length: \(body.count)\r\n" }
        try connection.send(Array((head + "\r\n").utf8) + (body ?? []))
        return ResponseReader(connection)
    }

    /// One request; the answer whatever its status, its body at most `limit` bytes.
    public func call(_ method: String, _ path: String, body: [UInt8]? = nil, headers: [(String, String)] = [],
                     limit: Int = 16 << 20) throws(ClientError) -> Response {
        var reader = try open(method, path, body: body, headers: headers)
        let head = try reader.head()
        let bytes = try reader.body(limit: limit)
        return Response(head: head, body: bytes)
    }

    /// One request whose 2xx answer's body (an event stream's, say) is not read: its head only.
    /// An error answer throws `ServiceRefusal`.
    public func head(_ method: String, _ path: String) throws -> ResponseHead {
        var reader = try open(method, path, body: nil, headers: [])
        let head = try reader.head()
        guard (200...299).contains(head.status) else { throw refusal(Response(head: head, body: try reader.body(limit: 1 << 20))) }
        return head
    }

    /// One request whose 2xx answer is a JSON document; an error answer throws `ServiceRefusal`.
    public func json(_ method: String, _ path: String, body: [UInt8]? = nil, headers: [(String, String)] = [],
                     limit: Int = 16 << 20) throws -> JSONValue {
        try json(call(method, path, body: body, headers: headers, limit: limit), method, path, limit: limit)
    }

    fileprivate func json(_ response: Response, _ method: String, _ path: String, limit: Int) throws -> JSONValue {
        guard (200...299).contains(response.status) else { throw refusal(response) }
        do {
            return try StrictJSON.parse(response.body, limits: .init(maxBytes: limit, maxDepth: 64))
        } catch {
            throw ClientError(.protocolViolation, "the service at \(address) answered \(method) \(path) with a body that is not JSON: \(error)")
        }
    }

    /// The service's error object as a refusal (or a plain description of an answer that has none).
    public func refusal(_ response: Response) -> ServiceRefusal {
        let retryAfter = response.head.field("retry-after").flatMap { Int($0) }.map { min(max($0, 0), 3600) }
        if let value = try? StrictJSON.parse(response.body, limits: .init(maxBytes: 1 << 20, maxDepth: 8)),
           let error = value.object?["error"]?.object, let code = error["code"]?.string, let message = error["message"]?.string {
            return ServiceRefusal(status: response.status, code: code, message: message, field: error["field"]?.string, retryAfter: retryAfter)
        }
        let text = ResponseReader.printable(Array(response.body.prefix(200)))
        return ServiceRefusal(status: response.status, code: "http-\(response.status)",
                              message: "the service at \(address) answered HTTP \(response.status)\(text.isEmpty ? "" : ": " + text)",
                              field: nil, retryAfter: retryAfter)
    }

    /// `GET path` as an event stream: `onEvent` for each event until it returns false or the
    /// stream ends. An error answer throws `ServiceRefusal`.
    public func events(_ path: String, headers: [(String, String)] = [], maxEventBytes: Int = 8 << 20,
                       onEvent: (ServerSentEvent) throws -> Bool) throws {
        var reader = try open("GET", path, body: nil, headers: headers + [("Accept", "text/event-stream")])
        let head = try reader.head()
        guard (200...299).contains(head.status) else {
            throw refusal(Response(head: head, body: try reader.body(limit: 1 << 20)))
        }
        var parser = ServerSentEventParser(maxEventBytes: maxEventBytes)
        reader.streaming = true
        while let bytes = try reader.bodyBytes() {
            for event in try parser.feed(bytes) {
                guard try onEvent(event) else { return }
            }
        }
    }
}

/// Requests made one after another on one connection (HTTP/1.1 keep-alive), as `run --host` submits
/// a run and then waits for it: the second request saves the service a connection's set-up (its
/// CPU per run 7.0 → 6.6 ms, measured alternated). An answer that asks for the connection's end, is
/// framed by it, is not HTTP/1.1 or has more than one framing header ends it. A kept connection the
/// service closed since (its idle timeout, while a full queue's Retry-After was waited out) is
/// replaced once when not one byte of an answer came on it: the service never read the request
/// (a submission carries its Idempotency-Key in any case). Not for concurrent use.
public final class ServiceSession {
    public let client: ServiceClient
    private var kept: ServiceConnection?

    public init(_ client: ServiceClient) {
        self.client = client
    }

    /// As `ServiceClient.json`, on the kept connection when there is one.
    public func json(_ method: String, _ path: String, body: [UInt8]? = nil, headers: [(String, String)] = [],
                     limit: Int = 16 << 20) throws -> JSONValue {
        try client.json(call(method, path, body: body, headers: headers, limit: limit), method, path, limit: limit)
    }

    /// As `ServiceClient.call`, on the kept connection when there is one.
    public func call(_ method: String, _ path: String, body: [UInt8]? = nil, headers: [(String, String)] = [],
                     limit: Int = 16 << 20) throws(ClientError) -> ServiceClient.Response {
        if let connection = kept {
            kept = nil
            var answered = false
            do {
                var reader = try client.open(method, path, body: body, headers: headers, on: connection, keepAlive: true)
                defer { answered = reader.receivedAny }
                return try finish(&reader, limit: limit)
            } catch {
                // Closed before it answered anything: sent again below, on a new connection.
                if answered { throw error }
            }
        }
        var reader = try client.open(method, path, body: body, headers: headers, keepAlive: true)
        return try finish(&reader, limit: limit)
    }

    private func finish(_ reader: inout ResponseReader, limit: Int) throws(ClientError) -> ServiceClient.Response {
        let head = try reader.head()
        let bytes = try reader.body(limit: limit)
        if reader.reusable { kept = reader.kept }
        return ServiceClient.Response(head: head, body: bytes)
    }
}
