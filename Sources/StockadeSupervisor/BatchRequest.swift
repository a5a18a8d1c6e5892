import StockadeAudit
import StockadePolicy

/// One line of `stockade batch` input: the same choices as `stockade run`'s
/// flags, as JSON keys (DESIGN.md, "Commands"). Unknown keys are errors.
public struct BatchRequest: Sendable {
    public var id: String?
    public var options: RunOptions
    /// `nodeLabels`: labels the node that runs it must carry (`stockade serve --node` only).
    public var nodeLabels: [String: String] = [:]
    /// `retries`: further attempts when its node dies under it, 0 to 10 (`stockade serve --node` only).
    public var retries: Int = 0

    public struct Failure: Error, Sendable, CustomStringConvertible {
        public let id: String?
        public let description: String

        public init(id: String?, description: String) {
            self.id = id
            self.description = description
        }
    }

    static let keys: Set = ["id", "command", "profile", "memory", "cpus", "pids", "timeout", "network", "publish", "allowHosts",
                            "env", "volumes", "workspace", "request", "labels", "name", "image", "rootfs", "nodeLabels", "retries"]

    /// Why this request cannot run where there are no nodes (`stockade batch`, `stockade serve` without
    /// `--node`): it asks for node labels or retries, which only a node of a shared queue honours. Nil
    /// when it asks for neither.
    public func withoutNodesProblem(_ `where`: String) -> Failure? {
        if !nodeLabels.isEmpty {
            return Failure(id: id, description: "nodeLabels: only `stockade serve --node` places runs on nodes by label; \(`where`) runs it here, where nothing checks the labels: drop the key or submit it to a node")
        }
        if retries > 0 {
            return Failure(id: id, description: "retries: only `stockade serve --node` retries a run whose node died; \(`where`) does not: drop the key or submit it to a node")
        }
        return nil
    }

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
        func check<T>(_ body: () throws(RunValues.Invalid) -> T) throws(Failure) -> T {
            do {
                return try body()
            } catch {
                throw Failure(id: id, description: error.description)
            }
        }
        if let v = object["memory"] {
            if let bytes = v.exactInt64 {
                options.memoryBytes = try check { () throws(RunValues.Invalid) in try RunValues.memory(bytes, field: "memory") }
            } else if let text = v.string {
                options.memoryBytes = try check { () throws(RunValues.Invalid) in try RunValues.memory(text, field: "memory") }
            } else {
                throw fail("memory", "must be bytes or a size such as \"64m\"")
            }
        }
        if let v = object["cpus"] {
            guard let cpus = v.double else { throw fail("cpus", "must be a number of CPUs") }
            options.cpus = try check { () throws(RunValues.Invalid) in try RunValues.cpus(cpus, field: "cpus") }
        }
        if let v = object["pids"] {
            guard let n = v.exactInt64 else { throw fail("pids", "must be a whole number from 1 to 65536") }
            options.pids = try check { () throws(RunValues.Invalid) in try RunValues.pids(n, field: "pids") }
        }
        if let v = object["timeout"] {
            if let t = v.double {
                options.timeoutSeconds = try check { () throws(RunValues.Invalid) in try RunValues.timeout(t, field: "timeout") }
            } else if let text = v.string {
                options.timeoutSeconds = try check { () throws(RunValues.Invalid) in try RunValues.timeout(text, field: "timeout") }
            } else {
                throw fail("timeout", "must be seconds or a duration such as \"10s\"")
            }
        }
        if let v = object["network"] {
            guard let s = v.string, let mode = Profile.NetworkMode(rawValue: s) else { throw fail("network", "must be none, loopback or proxy") }
            options.network = mode
        }
        if let v = object["publish"] {
            guard let items = v.array else { throw fail("publish", "must be an array of \"HOSTPORT:WORKERPORT\"") }
            for (i, item) in items.enumerated() {
                guard let s = item.string else { throw fail("publish[\(i)]", "must be \"HOSTPORT:WORKERPORT\"") }
                options.publish.append(try check { () throws(RunValues.Invalid) in try RunValues.publish(s, field: "publish[\(i)]") })
            }
        }
        try check { () throws(RunValues.Invalid) in
            try RunValues.network(options.network, publishing: !options.publish.isEmpty, fields: ("network", "publish"))
        }
        if let v = object["allowHosts"] {
            guard let items = v.array else { throw fail("allowHosts", "must be an array of \"NAME[:PORT]\"") }
            for (i, item) in items.enumerated() {
                guard let s = item.string else { throw fail("allowHosts[\(i)]", "must be a string \"NAME[:PORT]\"") }
                options.allowHosts.append(try check { () throws(RunValues.Invalid) in try RunValues.allowHost(s, field: "allowHosts[\(i)]") })
            }
            try check { () throws(RunValues.Invalid) in
                try RunValues.allowHosts(options.network, count: options.allowHosts.count, fields: ("network", "allowHosts"))
            }
        }
        if let v = object["labels"] {
            guard let labels = v.object else { throw fail("labels", "must be an object of strings") }
            for (key, item) in labels.sorted(by: { $0.key < $1.key }) {
                guard let value = item.string else { throw fail("labels.\(key)", "must be a string") }
                try check { () throws(RunValues.Invalid) in try RunValues.label(key: key, value: value, field: "labels.\(key)") }
                options.labels[key] = value
            }
        }
        if let v = object["name"] {
            guard let s = v.string else { throw fail("name", "must be a string") }
            options.name = try check { () throws(RunValues.Invalid) in try RunValues.name(s, field: "name") }
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
        if let v = object["image"] {
            guard let s = v.string, !s.isEmpty, !s.utf8.contains(0) else { throw fail("image", "expected an imported image's name") }
            options.image = s
        }
        if let v = object["rootfs"] {
            guard let s = v.string, s.hasPrefix("/") else { throw fail("rootfs", "expected an absolute path") }
            guard options.image == nil else { throw fail("rootfs", "give image or rootfs, not both") }
            options.rootfs = s
        }
        var nodeLabels: [String: String] = [:]
        if let v = object["nodeLabels"] {
            guard let labels = v.object else { throw fail("nodeLabels", "must be an object of strings") }
            guard labels.count <= NodeLabels.maxCount else { throw fail("nodeLabels", "at most \(NodeLabels.maxCount) labels, found \(labels.count)") }
            for (key, item) in labels.sorted(by: { $0.key < $1.key }) {
                if let problem = NodeLabels.keyProblem(key) { throw fail("nodeLabels.\(key)", "the key \(problem)") }
                guard let value = item.string else { throw fail("nodeLabels.\(key)", "must be a string") }
                if let problem = NodeLabels.valueProblem(value) { throw fail("nodeLabels.\(key)", "the value \(problem)") }
                nodeLabels[key] = value
            }
        }
        var retries = 0
        if let v = object["retries"] {
            guard let n = v.exactInt64, (0...10).contains(n) else { throw fail("retries", "must be a whole number from 0 to 10") }
            retries = Int(n)
        }
        if options.command == nil && options.request == nil && options.image == nil {
            throw fail("command", "is required (or a request bundle whose manifest names one, or an image whose config does)")
        }
        var request = BatchRequest(id: id, options: options)
        request.nodeLabels = nodeLabels
        request.retries = retries
        return request
    }
}
