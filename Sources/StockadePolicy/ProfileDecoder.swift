/// Reads a profile document onto a base profile (the defaults, or the profile
/// it `extends`), collecting every problem with its field path. Unknown keys
/// are errors: a typo must not silently weaken a sandbox.
public struct ProfileDecoder {
    private var issues: [ProfileIssue] = []
    /// The document's file, against which relative paths in it resolve.
    private var source: String?

    public init() {}

    /// Applies `document` onto `base`. Throws every issue found.
    public static func decode(_ document: JSONValue, onto base: Profile, source: String?) throws(ProfileError) -> Profile {
        var decoder = ProfileDecoder()
        decoder.source = source
        var profile = base
        decoder.apply(document, to: &profile)
        if !decoder.issues.isEmpty { throw ProfileError(source: source, issues: decoder.issues) }
        return profile
    }

    /// The `extends` value of a document, if any.
    public static func extends(of document: JSONValue) -> String? {
        document.object?["extends"]?.string
    }

    private mutating func fail(_ field: String, _ reason: String) {
        issues.append(ProfileIssue(field, reason))
    }

    /// The object at `field`, with unknown keys reported.
    private mutating func object(_ value: JSONValue, _ field: String, keys: Set<String>) -> [String: JSONValue]? {
        guard let object = value.object else {
            fail(field, "expected an object, found \(value.typeName)")
            return nil
        }
        for key in object.keys.sorted() where !keys.contains(key) {
            let known = keys.sorted().joined(separator: ", ")
            fail(field.isEmpty ? key : "\(field).\(key)", "unknown key (known keys: \(known))")
        }
        return object
    }

    private static func join(_ parent: String, _ key: String) -> String {
        parent.isEmpty ? key : "\(parent).\(key)"
    }

    private mutating func string(_ value: JSONValue, _ field: String) -> String? {
        guard let text = value.string else {
            fail(field, "expected a string, found \(value.typeName)")
            return nil
        }
        return text
    }

    private mutating func bool(_ value: JSONValue, _ field: String) -> Bool? {
        guard let flag = value.bool else {
            fail(field, "expected true or false, found \(value.typeName)")
            return nil
        }
        return flag
    }

    private mutating func integer(_ value: JSONValue, _ field: String, in range: ClosedRange<Int64>) -> Int64? {
        guard let number = value.exactInt64 else {
            fail(field, "expected a whole number, found \(value.typeName == "number" ? "a fraction" : value.typeName)")
            return nil
        }
        guard range.contains(number) else {
            fail(field, "\(number) is out of range \(range.lowerBound)...\(range.upperBound)")
            return nil
        }
        return number
    }

    /// A size: a whole number of bytes or a string like "64m".
    private mutating func size(_ value: JSONValue, _ field: String, in range: ClosedRange<Int64>) -> Int64? {
        let bytes: Int64?
        switch value {
        case .number: bytes = value.exactInt64
        case .string(let text): bytes = ByteSize.parse(text)
        default: bytes = nil
        }
        guard let bytes else {
            fail(field, "expected a size: \(ByteSize.forms)")
            return nil
        }
        guard range.contains(bytes) else {
            fail(field, "\(ByteSize.format(bytes)) is out of range \(ByteSize.format(range.lowerBound))...\(ByteSize.format(range.upperBound))")
            return nil
        }
        return bytes
    }

    private mutating func strings(_ value: JSONValue, _ field: String) -> [String]? {
        guard let items = value.array else {
            fail(field, "expected an array of strings, found \(value.typeName)")
            return nil
        }
        var out: [String] = []
        for (index, item) in items.enumerated() {
            if let text = string(item, "\(field)[\(index)]") { out.append(text) }
        }
        return out
    }

    private mutating func apply(_ document: JSONValue, to profile: inout Profile) {
        let keys: Set = ["name", "description", "extends", "user", "hostname", "limits", "network", "volumes",
                         "allowedVolumeRoots", "tmpfs", "environment", "secrets", "seccomp", "bundles", "review", "root"]
        guard let root = object(document, "", keys: keys) else { return }
        if let v = root["name"], let name = string(v, "name") {
            if ProfileDecoder.isValidName(name) { profile.name = name } else {
                fail("name", "must be 1-64 characters of a-z, 0-9, '-', '_' and '.'")
            }
        }
        if let v = root["description"], let text = string(v, "description") { profile.description = text }
        if let v = root["extends"] { _ = string(v, "extends") }
        if let v = root["hostname"], let text = string(v, "hostname") {
            if text.isEmpty || text.utf8.count > 64 || !text.utf8.allSatisfy({ $0 == 45 || (48...57).contains($0) || (97...122).contains($0) }) {
                fail("hostname", "must be 1-64 characters of a-z, 0-9 and '-'")
            } else {
                profile.hostname = text
            }
        }
        if let v = root["user"] { applyUser(v, to: &profile.user) }
        if let v = root["root"] { applyRoot(v, to: &profile.root) }
        if let v = root["limits"] { applyLimits(v, to: &profile.limits) }
        if let v = root["network"] { applyNetwork(v, to: &profile.network) }
        if let v = root["volumes"] { profile.volumes = decodeVolumes(v) }
        if let v = root["allowedVolumeRoots"], let roots = strings(v, "allowedVolumeRoots") {
            for (index, path) in roots.enumerated() where !path.hasPrefix("/") {
                fail("allowedVolumeRoots[\(index)]", "must be an absolute path")
            }
            profile.allowedVolumeRoots = roots
        }
        if let v = root["tmpfs"] { profile.tmpfs = decodeTmpfs(v) }
        if let v = root["environment"] { applyEnvironment(v, to: &profile.environment) }
        if let v = root["secrets"] { profile.secrets = decodeSecrets(v) }
        if let v = root["seccomp"] { applySeccomp(v, to: &profile.seccomp) }
        if let v = root["bundles"] { applyBundles(v, to: &profile.bundles) }
        if let v = root["review"], let review = object(v, "review", keys: ["autoAcceptDiffs", "allowSelfApproval"]) {
            if let flag = review["autoAcceptDiffs"], let accept = bool(flag, "review.autoAcceptDiffs") {
                profile.review.autoAcceptDiffs = accept
            }
            if let flag = review["allowSelfApproval"], let allow = bool(flag, "review.allowSelfApproval") {
                profile.review.allowSelfApproval = allow
            }
        }
    }

    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 64 && !name.hasPrefix(".") && name.utf8.allSatisfy {
            $0 == 45 || $0 == 46 || $0 == 95 || (48...57).contains($0) || (97...122).contains($0)
        }
    }

    /// `{"image": "NAME[:TAG]"}` or `{"rootfs": "/absolute/dir"}`, exactly one.
    private mutating func applyRoot(_ value: JSONValue, to root: inout Profile.Root) {
        guard let o = object(value, "root", keys: ["image", "rootfs"]) else { return }
        guard o.count == 1 else { return fail("root", "give exactly one of \"image\" and \"rootfs\"") }
        if let v = o["image"], let name = string(v, "root.image") {
            if name.isEmpty { fail("root.image", "must name an imported image (stockade image list)") } else { root = .image(name) }
        }
        if let v = o["rootfs"], let dir = string(v, "root.rootfs") {
            if dir.hasPrefix("/") { root = .rootfs(dir) } else { fail("root.rootfs", "must be an absolute path") }
        }
    }

    private mutating func applyUser(_ value: JSONValue, to user: inout Profile.User) {
        guard let o = object(value, "user", keys: ["uid", "gid"]) else { return }
        if let v = o["uid"], let uid = integer(v, "user.uid", in: 0...65535) { user.uid = UInt32(uid) }
        if let v = o["gid"], let gid = integer(v, "user.gid", in: 0...65535) { user.gid = UInt32(gid) }
    }

    private mutating func applyLimits(_ value: JSONValue, to limits: inout Profile.Limits) {
        let keys: Set = ["memory", "cpus", "pids", "timeout", "stdoutBytes", "stderrBytes", "tmpSize",
                         "workspaceSize", "resultSize", "resultInodes", "rlimits"]
        guard let o = object(value, "limits", keys: keys) else { return }
        if let v = o["memory"], let b = size(v, "limits.memory", in: Profile.Limits.minimumMemoryBytes...(1 << 40)) { limits.memoryBytes = b }
        if let v = o["cpus"] {
            if let cpus = v.double, cpus >= 0.01, cpus <= 1024 { limits.cpus = cpus } else {
                fail("limits.cpus", "expected a number of CPUs from 0.01 to 1024")
            }
        }
        if let v = o["pids"], let n = integer(v, "limits.pids", in: 1...65536) { limits.pids = Int(n) }
        if let v = o["timeout"] {
            if let t = v.double ?? v.string.flatMap(DurationText.parse), t > 0, t <= 86_400 { limits.timeoutSeconds = t } else {
                fail("limits.timeout", "expected a duration from 0 (exclusive) to 24h: \(DurationText.forms)")
            }
        }
        if let v = o["stdoutBytes"], let b = size(v, "limits.stdoutBytes", in: 0...(1 << 30)) { limits.stdoutBytes = Int(b) }
        if let v = o["stderrBytes"], let b = size(v, "limits.stderrBytes", in: 0...(1 << 30)) { limits.stderrBytes = Int(b) }
        if let v = o["tmpSize"], let b = size(v, "limits.tmpSize", in: (64 << 10)...(1 << 40)) { limits.tmpBytes = b }
        if let v = o["workspaceSize"], let b = size(v, "limits.workspaceSize", in: (64 << 10)...(1 << 40)) { limits.workspaceBytes = b }
        if let v = o["resultSize"], let b = size(v, "limits.resultSize", in: (64 << 10)...(1 << 40)) { limits.resultBytes = b }
        if let v = o["resultInodes"], let n = integer(v, "limits.resultInodes", in: 16...(1 << 24)) { limits.resultInodes = n }
        if let v = o["rlimits"], let r = object(v, "limits.rlimits", keys: ["nofile", "fsize", "core", "stack"]) {
            if let v = r["nofile"], let n = integer(v, "limits.rlimits.nofile", in: 16...(1 << 20)) { limits.rlimits.nofile = UInt64(n) }
            if let v = r["fsize"], let n = size(v, "limits.rlimits.fsize", in: 0...(1 << 40)) { limits.rlimits.fsize = UInt64(n) }
            if let v = r["core"], let n = size(v, "limits.rlimits.core", in: 0...0) { limits.rlimits.core = UInt64(n) }
            if let v = r["stack"], let n = size(v, "limits.rlimits.stack", in: (128 << 10)...(1 << 30)) { limits.rlimits.stack = UInt64(n) }
        }
    }

    private mutating func applyNetwork(_ value: JSONValue, to network: inout Profile.Network) {
        guard let o = object(value, "network", keys: ["mode", "publish", "egress", "hosts"]) else { return }
        if let v = o["mode"], let text = string(v, "network.mode") {
            if let mode = Profile.NetworkMode(rawValue: text) { network.mode = mode } else {
                fail("network.mode", "expected one of none, loopback, proxy; found \(text)")
            }
        }
        if let v = o["egress"] { applyEgress(v, to: &network.egress) }
        if let v = o["hosts"] {
            if let pairs = v.object {
                network.hosts = [:]
                for (name, item) in pairs.sorted(by: { $0.key < $1.key }) {
                    let field = "network.hosts.\(name)"
                    guard let address = string(item, field) else { continue }
                    guard case .name(let normalized)? = EgressHost.parse(name) else {
                        fail(field, "not a host name (1-253 characters of dot-separated labels of a-z, 0-9 and '-')")
                        continue
                    }
                    guard IPAddress.parse(address) != nil else {
                        fail(field, "expected an IPv4 or IPv6 address, found \(address)")
                        continue
                    }
                    network.hosts[normalized] = address
                }
            } else {
                fail("network.hosts", "expected an object of host names to addresses, found \(v.typeName)")
            }
        }
        if let v = o["publish"], let items = strings(v, "network.publish") {
            network.publish = []
            for (index, item) in items.enumerated() {
                if let mapping = ProfileDecoder.parsePublish(item) { network.publish.append(mapping) } else {
                    fail("network.publish[\(index)]", "expected HOSTPORT:WORKERPORT with ports 1-65535, found \(item)")
                }
            }
        }
    }

    private mutating func applyEgress(_ value: JSONValue, to egress: inout Profile.Egress) {
        guard let o = object(value, "network.egress", keys: ["allow", "deny", "allowPrivate", "maxConnections", "maxBytes", "resolver"]) else { return }
        for key in ["allow", "deny"] {
            guard let v = o[key], let items = strings(v, "network.egress.\(key)") else { continue }
            var rules: [EgressRule] = []
            for (index, item) in items.enumerated() {
                if let rule = EgressRule.parse(item) { rules.append(rule) } else {
                    fail("network.egress.\(key)[\(index)]",
                         "expected NAME, *.SUFFIX or an IP address, with an optional :PORT (IPv6 in brackets), found \(item)")
                }
            }
            if key == "allow" { egress.allow = rules } else { egress.deny = rules }
        }
        if let v = o["allowPrivate"], let flag = bool(v, "network.egress.allowPrivate") { egress.allowPrivate = flag }
        if let v = o["maxConnections"], let n = integer(v, "network.egress.maxConnections", in: 1...100_000) { egress.maxConnections = Int(n) }
        if let v = o["maxBytes"], let n = size(v, "network.egress.maxBytes", in: 0...(1 << 40)) { egress.maxBytes = n }
        if let v = o["resolver"], let text = string(v, "network.egress.resolver") {
            if ProfileDecoder.parseResolver(text) != nil { egress.resolver = text } else {
                fail("network.egress.resolver", "expected IPV4:PORT of a DNS server, found \(text)")
            }
        }
    }

    /// Parses `IPV4:PORT` (a DNS server for the egress proxy).
    public static func parseResolver(_ text: String) -> (address: [UInt8], port: UInt16)? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let address = IPAddress.parse(String(parts[0])), address.count == 4,
              let port = UInt16(parts[1]), port > 0 else { return nil }
        return (address, port)
    }

    /// Parses `HOSTPORT:WORKERPORT`.
    public static func parsePublish(_ text: String) -> Profile.PortMapping? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let host = UInt16(parts[0]), let worker = UInt16(parts[1]), host > 0, worker > 0 else { return nil }
        return Profile.PortMapping(hostPort: host, workerPort: worker)
    }

    /// Parses `HOSTPATH:WORKERPATH[:ro|rw]` (read-only when omitted).
    public static func parseVolume(_ text: String) -> Profile.Volume? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2 || parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty else { return nil }
        var readOnly = true
        if parts.count == 3 {
            switch parts[2] {
            case "ro": readOnly = true
            case "rw": readOnly = false
            default: return nil
            }
        }
        return Profile.Volume(source: parts[0], target: parts[1], readOnly: readOnly)
    }

    private mutating func decodeVolumes(_ value: JSONValue) -> [Profile.Volume] {
        guard let items = value.array else {
            fail("volumes", "expected an array, found \(value.typeName)")
            return []
        }
        var volumes: [Profile.Volume] = []
        for (index, item) in items.enumerated() {
            let field = "volumes[\(index)]"
            guard let o = object(item, field, keys: ["source", "target", "mode"]) else { continue }
            guard let s = o["source"], let source = string(s, "\(field).source") else {
                if o["source"] == nil { fail("\(field).source", "is required") }
                continue
            }
            guard let t = o["target"], let target = string(t, "\(field).target") else {
                if o["target"] == nil { fail("\(field).target", "is required") }
                continue
            }
            var readOnly = true
            if let m = o["mode"], let mode = string(m, "\(field).mode") {
                switch mode {
                case "ro": readOnly = true
                case "rw": readOnly = false
                default: fail("\(field).mode", "expected ro or rw, found \(mode)")
                }
            }
            volumes.append(Profile.Volume(source: source, target: target, readOnly: readOnly))
        }
        return volumes
    }

    private mutating func decodeTmpfs(_ value: JSONValue) -> [Profile.Tmpfs] {
        guard let items = value.array else {
            fail("tmpfs", "expected an array, found \(value.typeName)")
            return []
        }
        var mounts: [Profile.Tmpfs] = []
        for (index, item) in items.enumerated() {
            let field = "tmpfs[\(index)]"
            guard let o = object(item, field, keys: ["target", "size"]) else { continue }
            guard let t = o["target"], let target = string(t, "\(field).target") else {
                if o["target"] == nil { fail("\(field).target", "is required") }
                continue
            }
            guard let s = o["size"], let bytes = size(s, "\(field).size", in: (4 << 10)...(1 << 40)) else {
                if o["size"] == nil { fail("\(field).size", "is required (a tmpfs is always bounded)") }
                continue
            }
            mounts.append(Profile.Tmpfs(target: target, sizeBytes: bytes))
        }
        return mounts
    }

    private mutating func applyEnvironment(_ value: JSONValue, to env: inout Profile.Environment) {
        guard let o = object(value, "environment", keys: ["pass", "set", "secret"]) else { return }
        if let v = o["secret"], let names = strings(v, "environment.secret") {
            for (index, name) in names.enumerated() where !ProfileDecoder.isValidEnvName(name) {
                fail("environment.secret[\(index)]", "not a valid variable name: \(name)")
            }
            env.secret = names
        }
        if let v = o["pass"], let names = strings(v, "environment.pass") {
            for (index, name) in names.enumerated() where !ProfileDecoder.isValidEnvName(name) {
                fail("environment.pass[\(index)]", "not a valid variable name: \(name)")
            }
            env.pass = names
        }
        if let v = o["set"] {
            guard let values = v.object else {
                fail("environment.set", "expected an object of strings, found \(v.typeName)")
                return
            }
            for (key, item) in values.sorted(by: { $0.key < $1.key }) {
                guard ProfileDecoder.isValidEnvName(key) else {
                    fail("environment.set.\(key)", "not a valid variable name")
                    continue
                }
                if let text = string(item, "environment.set.\(key)") {
                    if text.utf8.contains(0) { fail("environment.set.\(key)", "contains a NUL byte") } else { env.set[key] = text }
                }
            }
        }
    }

    public static func isValidEnvName(_ name: String) -> Bool {
        guard let first = name.utf8.first, !(48...57).contains(first), name.utf8.count <= 256 else { return false }
        return name.utf8.allSatisfy { $0 == 95 || (48...57).contains($0) || (65...90).contains($0) || (97...122).contains($0) }
    }

    private mutating func decodeSecrets(_ value: JSONValue) -> [Profile.Secret] {
        guard let items = value.array else {
            fail("secrets", "expected an array, found \(value.typeName)")
            return []
        }
        var secrets: [Profile.Secret] = []
        for (index, item) in items.enumerated() {
            let field = "secrets[\(index)]"
            guard let o = object(item, field, keys: ["env", "file", "fromEnv"]) else { continue }
            guard let e = o["env"], let env = string(e, "\(field).env") else {
                if o["env"] == nil { fail("\(field).env", "is required: the variable the worker sees") }
                continue
            }
            if !ProfileDecoder.isValidEnvName(env) { fail("\(field).env", "not a valid variable name: \(env)") }
            switch (o["file"], o["fromEnv"]) {
            case (let f?, nil):
                if let path = string(f, "\(field).file") {
                    if path.hasPrefix("/") { secrets.append(Profile.Secret(env: env, source: .file(path))) } else {
                        fail("\(field).file", "must be an absolute path")
                    }
                }
            case (nil, let h?):
                if let name = string(h, "\(field).fromEnv") { secrets.append(Profile.Secret(env: env, source: .environment(name))) }
            default:
                fail(field, "needs exactly one of file or fromEnv")
            }
        }
        return secrets
    }

    private mutating func applySeccomp(_ value: JSONValue, to seccomp: inout Profile.Seccomp) {
        guard let o = object(value, "seccomp", keys: ["base", "dockerProfile", "allow", "deny", "onViolation"]) else { return }
        if let v = o["base"], let base = string(v, "seccomp.base") {
            switch base {
            case "stockade": seccomp.base = .stockade
            case "docker":
                guard let p = o["dockerProfile"], let path = string(p, "seccomp.dockerProfile") else {
                    fail("seccomp.dockerProfile", "is required when base is docker")
                    break
                }
                if let resolved = resolveRelative(path, "seccomp.dockerProfile") { seccomp.base = .docker(path: resolved) }
            default: fail("seccomp.base", "expected stockade or docker, found \(base)")
            }
        } else if o["dockerProfile"] != nil {
            fail("seccomp.dockerProfile", "only allowed with \"base\": \"docker\"")
        }
        if let v = o["allow"], let names = strings(v, "seccomp.allow") { seccomp.allow = names }
        if let v = o["deny"], let names = strings(v, "seccomp.deny") { seccomp.deny = names }
        if let v = o["onViolation"], let text = string(v, "seccomp.onViolation") {
            if let action = Profile.ViolationAction(rawValue: text) { seccomp.onViolation = action } else {
                fail("seccomp.onViolation", "expected errno or kill, found \(text)")
            }
        }
    }

    /// `path` as given when absolute; else relative to the directory of the
    /// profile file that names it (`builtin:` profiles have no directory).
    private mutating func resolveRelative(_ path: String, _ field: String) -> String? {
        if path.isEmpty || path.utf8.contains(0) {
            fail(field, "expected a file path")
            return nil
        }
        if path.hasPrefix("/") { return path }
        guard let source, !source.hasPrefix("builtin:") else {
            fail(field, "must be an absolute path: this profile has no file for a relative path to start from")
            return nil
        }
        guard let slash = source.lastIndex(of: "/") else { return path }
        let directory = source[..<slash]
        return directory.isEmpty ? "/" + path : "\(directory)/\(path)"
    }

    private mutating func applyBundles(_ value: JSONValue, to bounds: inout BundleBounds) {
        let keys: Set = ["manifestBytes", "jsonDepth", "maxFiles", "maxFileBytes", "maxTotalBytes", "maxPathLength", "maxPathDepth", "maxPatches"]
        guard let o = object(value, "bundles", keys: keys) else { return }
        if let v = o["manifestBytes"], let n = size(v, "bundles.manifestBytes", in: 64...(64 << 20)) { bounds.manifestBytes = n }
        if let v = o["jsonDepth"], let n = integer(v, "bundles.jsonDepth", in: 2...256) { bounds.jsonDepth = Int(n) }
        if let v = o["maxFiles"], let n = integer(v, "bundles.maxFiles", in: 0...1_000_000) { bounds.maxFiles = Int(n) }
        if let v = o["maxFileBytes"], let n = size(v, "bundles.maxFileBytes", in: 0...(1 << 40)) { bounds.maxFileBytes = n }
        if let v = o["maxTotalBytes"], let n = size(v, "bundles.maxTotalBytes", in: 0...(1 << 40)) { bounds.maxTotalBytes = n }
        if let v = o["maxPathLength"], let n = integer(v, "bundles.maxPathLength", in: 1...4096) { bounds.maxPathLength = Int(n) }
        if let v = o["maxPathDepth"], let n = integer(v, "bundles.maxPathDepth", in: 1...256) { bounds.maxPathDepth = Int(n) }
        if let v = o["maxPatches"], let n = integer(v, "bundles.maxPatches", in: 0...10_000) { bounds.maxPatches = Int(n) }
    }
}
