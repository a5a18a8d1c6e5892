/// One Server-Sent Event of `GET /v1/events`.
public struct ServerSentEvent: Sendable, Equatable {
    public var id: String?
    public var event: String?
    public var data: String
}

/// Splits a `text/event-stream` body into events (the WHATWG rules: lines end in LF, CRLF or CR;
/// `:` lines are comments; `data` lines join with LF; a blank line ends an event), with a bound
/// on one event's size so a hostile stream cannot grow memory without end.
struct ServerSentEventParser {
    let maxEventBytes: Int
    private var line: [UInt8] = []
    private var lastWasCR = false
    private var current = ServerSentEvent(id: nil, event: nil, data: "")
    private var dataLines: [String] = []
    private var size = 0

    init(maxEventBytes: Int) {
        self.maxEventBytes = maxEventBytes
    }

    /// Feeds body bytes; the events they complete.
    mutating func feed(_ bytes: ArraySlice<UInt8>) throws(ClientError) -> [ServerSentEvent] {
        var out: [ServerSentEvent] = []
        for b in bytes {
            if b == 0x0A && lastWasCR {
                lastWasCR = false
                continue
            }
            lastWasCR = b == 0x0D
            if b == 0x0A || b == 0x0D {
                if let event = try endLine() { out.append(event) }
                continue
            }
            line.append(b)
            size += 1
            guard size <= maxEventBytes else {
                throw ClientError(.protocolViolation, "the service's event stream sent an event longer than \(maxEventBytes) bytes")
            }
        }
        return out
    }

    private mutating func endLine() throws(ClientError) -> ServerSentEvent? {
        defer { line.removeAll(keepingCapacity: true) }
        if line.isEmpty {
            defer {
                current = ServerSentEvent(id: nil, event: nil, data: "")
                dataLines = []
                size = 0
            }
            guard current.id != nil || current.event != nil || !dataLines.isEmpty else { return nil }
            var event = current
            event.data = dataLines.joined(separator: "\n")
            return event
        }
        if line.first == 0x3A { return nil }
        let colon = line.firstIndex(of: 0x3A) ?? line.count
        let name = String(decoding: line[..<colon], as: UTF8.self)
        var value = colon < line.count ? line[(colon + 1)...] : []
        if value.first == 0x20 { value = value.dropFirst() }
        let text = String(decoding: value, as: UTF8.self)
        switch name {
        case "id": current.id = text
        case "event": current.event = text
        case "data": dataLines.append(text)
        default: break
        }
        return nil
    }
}
