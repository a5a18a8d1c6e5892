import Glibc
import Logging
import StockadePolicy

/// How the supervisor's log lines look on stderr: `text` (swift-log's stream format) or `json`
/// (one object a line: `at`, `level`, `label`, `message`, then the metadata's dotted keys),
/// for a collector. The level is `$STOCKADE_LOG` (default `warning`): warnings and errors only,
/// so a run prints its report and nothing else unless something needs an operator.
enum LogFormat: String {
    case text, json

    static func bootstrap(_ format: LogFormat, level: Logger.Level) {
        LoggingSystem.bootstrap { label in
            switch format {
            case .text:
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            case .json:
                return JSONLogHandler(label: label, logLevel: level)
            }
        }
    }
}

struct JSONLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var members: [String: JSONValue] = [
            "at": .string(Self.timestamp()), "level": .string(event.level.rawValue), "label": .string(label),
            "message": .string(event.message.description),
        ]
        for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) where members[key] == nil {
            members[key] = .string(value.description)
        }
        Console.error(JSONValue.object(members).serialized())
    }

    /// RFC 3339 UTC with milliseconds, as the audit trail writes times.
    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = tm()
        var seconds = ts.tv_sec
        gmtime_r(&seconds, &t)
        func pad(_ v: Int32, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(t.tm_year + 1900, 4))-\(pad(t.tm_mon + 1, 2))-\(pad(t.tm_mday, 2))T\(pad(t.tm_hour, 2)):\(pad(t.tm_min, 2)):\(pad(t.tm_sec, 2)).\(pad(Int32(ts.tv_nsec / 1_000_000), 3))Z"
    }
}
