import StockadePolicy

/// One line of `stockade batch` input: the same choices as `stockade run`'s
/// flags, as JSON keys (DESIGN.md, "Commands"). Unknown keys are errors.
public struct BatchRequest: Sendable {
    public var id: String?
    public var options: RunOptions

    public struct Failure: Error, Sendable, CustomStringConvertible {
        public let id: String?
        public let description: String
    }

    static let keys: Set = ["id", "command", "profile", "memory", "cpus", "pids", "timeout", "network", "publish",
                            "env", "volumes", "workspace", "request"]

    /// Parses one request line; the error names the offending key.
    public static func parse(_ line: [UInt8]) throws(Failure) -> BatchRequest {
        let value: JSONValue
        do {
            value = try StrictJSON.parse(line, limits: .init(maxBytes: 1 << 20, maxDepth: 8))
        } catch {
            throw Failure(id: nil, description: "not valid JSON: \(error)")
        }
        guard let object = value.object else { throw Failure(id: nil, description: "expected a JSON object") }
        let id = object["id"]?.string
        func fail(_ key: String, _ reason: String) -> Failure { Failure(id: id, description: "\(key): \(reason)") }
        if let unknown = object.keys.sorted().first(where: { !keys.contains($0) }) {
            throw fail(unknown, "unknown key (known keys: \(keys.sorted().joined(separator: ", ")))")
        }
        if let v = object["id"], v.string == nil { throw fail("id", "expected a string") }

        var options = RunOptions()
        if let v = object["command"] {
            guard let items = v.array, !items.isEmpty else { throw fail("command", "expected a non-empty array of strings") }
            var command: [String] = []
            for (i, item) in items.enumerated() {
                guard let s = item.string else { throw fail("command[\(i)]", "expected a string") }
                command.append(s)
            }
            options.command = command
        }
        if let v = object["profile"] {
            guard let s = v.string else { throw fail("profile", "expected a string") }
            options.profile = s
        }
        if let v = object["memory"] {
            let bytes: Int64? = v.exactInt64 ?? v.string.flatMap(ByteSize.parse)
            guard let bytes, bytes > 0 else { throw fail("memory", "expected bytes or a size such as \"64m\"") }
            options.memoryBytes = bytes
        }
        if let v = object["cpus"] {
            guard let cpus = v.double, cpus >= 0.01, cpus <= 1024 else { throw fail("cpus", "expected a number from 0.01 to 1024") }
            options.cpus = cpus
        }
        if let v = object["pids"] {
            guard let n = v.exactInt64, (1...65536).contains(n) else { throw fail("pids", "expected a whole number from 1 to 65536") }
            options.pids = Int(n)
        }
        if let v = object["timeout"] {
            guard let t = v.double, t > 0, t <= 86_400 else { throw fail("timeout", "expected seconds from 0 (exclusive) to 86400") }
            options.timeoutSeconds = t
        }
        if let v = object["network"] {
            guard let s = v.string, let mode = Profile.NetworkMode(rawValue: s) else { throw fail("network", "expected none, loopback or proxy") }
            options.network = mode
        }
        if let v = object["publish"] {
            guard let items = v.array else { throw fail("publish", "expected an array of \"HOSTPORT:WORKERPORT\"") }
            for (i, item) in items.enumerated() {
                guard let s = item.string, let mapping = ProfileDecoder.parsePublish(s) else {
                    throw fail("publish[\(i)]", "expected \"HOSTPORT:WORKERPORT\"")
                }
                options.publish.append(mapping)
            }
        }
        if let v = object["volumes"] {
            guard let items = v.array else { throw fail("volumes", "expected an array of \"HOST:WORKER[:ro|rw]\"") }
            for (i, item) in items.enumerated() {
                guard let s = item.string, let volume = ProfileDecoder.parseVolume(s) else {
                    throw fail("volumes[\(i)]", "expected \"HOSTPATH:WORKERPATH[:ro|rw]\"")
                }
                options.volumes.append(volume)
            }
        }
        if let v = object["env"] {
            guard let env = v.object else { throw fail("env", "expected an object of strings") }
            for (key, item) in env.sorted(by: { $0.key < $1.key }) {
                guard ProfileDecoder.isValidEnvName(key) else { throw fail("env.\(key)", "not a valid variable name") }
                guard let s = item.string, !s.utf8.contains(0) else { throw fail("env.\(key)", "expected a string without NUL") }
                options.environment.append((key, s))
            }
        }
        for key in ["workspace", "request"] {
            guard let v = object[key] else { continue }
            guard let s = v.string, s.hasPrefix("/") else { throw fail(key, "expected an absolute path") }
            if key == "workspace" { options.workspace = s } else { options.request = s }
        }
        if options.command == nil && options.request == nil {
            throw fail("command", "is required (or a request bundle whose manifest names one)")
        }
        return BatchRequest(id: id, options: options)
    }
}
