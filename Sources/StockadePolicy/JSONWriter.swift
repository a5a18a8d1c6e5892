extension JSONValue {
    /// JSON text: keys sorted (so equal values give equal bytes, for digests), compact or indented.
    public func serialized(pretty: Bool = false) -> String {
        var out = ""
        write(into: &out, pretty: pretty, indent: 0)
        return out
    }

    private func write(into out: inout String, pretty: Bool, indent: Int) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .number(let text): out += text
        case .string(let s): JSONValue.quote(s, into: &out)
        case .array(let items):
            if items.isEmpty { out += "[]"; return }
            out += "["
            for (i, item) in items.enumerated() {
                if i > 0 { out += "," }
                if pretty { out += "\n" + String(repeating: "  ", count: indent + 1) }
                item.write(into: &out, pretty: pretty, indent: indent + 1)
            }
            if pretty { out += "\n" + String(repeating: "  ", count: indent) }
            out += "]"
        case .object(let members):
            if members.isEmpty { out += "{}"; return }
            out += "{"
            for (i, key) in members.keys.sorted().enumerated() {
                if i > 0 { out += "," }
                if pretty { out += "\n" + String(repeating: "  ", count: indent + 1) }
                JSONValue.quote(key, into: &out)
                out += pretty ? ": " : ":"
                members[key]?.write(into: &out, pretty: pretty, indent: indent + 1)
            }
            if pretty { out += "\n" + String(repeating: "  ", count: indent) }
            out += "}"
        }
    }

    /// Appends `s` as a JSON string literal, escaping quotes, backslashes and every control character.
    public static func quote(_ s: String, into out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F || (0x80...0x9F).contains(scalar.value)
                || scalar.value == 0x2028 || scalar.value == 0x2029:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }

    /// A number value from a Double, written exactly for whole numbers.
    public static func number(_ d: Double) -> JSONValue {
        if d == d.rounded(), abs(d) < 1e15 { return .number(String(Int64(d))) }
        return .number(String(d))
    }

    public static func number<I: BinaryInteger>(_ i: I) -> JSONValue { .number(String(i)) }
}

extension Profile {
    /// The resolved profile as JSON, in the profile file format (sizes in bytes).
    public var jsonValue: JSONValue {
        func size<I: BinaryInteger>(_ v: I) -> JSONValue { .string(ByteSize.format(Int64(v))) }
        let limits: [String: JSONValue] = [
            "memory": size(self.limits.memoryBytes), "cpus": .number(self.limits.cpus), "pids": .number(self.limits.pids),
            "timeout": .number(self.limits.timeoutSeconds), "stdoutBytes": size(self.limits.stdoutBytes),
            "stderrBytes": size(self.limits.stderrBytes), "tmpSize": size(self.limits.tmpBytes),
            "workspaceSize": size(self.limits.workspaceBytes), "resultSize": size(self.limits.resultBytes),
            "resultInodes": .number(self.limits.resultInodes),
            "rlimits": .object(["nofile": .number(self.limits.rlimits.nofile), "fsize": size(self.limits.rlimits.fsize),
                                "core": .number(self.limits.rlimits.core), "stack": size(self.limits.rlimits.stack)]),
        ]
        var seccomp: [String: JSONValue] = [
            "allow": .array(self.seccomp.allow.map { .string($0) }), "deny": .array(self.seccomp.deny.map { .string($0) }),
            "onViolation": .string(self.seccomp.onViolation.rawValue),
        ]
        switch self.seccomp.base {
        case .stockade: seccomp["base"] = .string("stockade")
        case .docker(let path):
            seccomp["base"] = .string("docker")
            seccomp["dockerProfile"] = .string(path)
        }
        let b = bundles
        return .object([
            "name": .string(name), "description": .string(description),
            "user": .object(["uid": .number(user.uid), "gid": .number(user.gid)]),
            "hostname": .string(hostname),
            "limits": .object(limits),
            "network": .object(["mode": .string(network.mode.rawValue),
                                "publish": .array(network.publish.map { .string("\($0.hostPort):\($0.workerPort)") })]),
            "volumes": .array(volumes.map { .object(["source": .string($0.source), "target": .string($0.target), "mode": .string($0.readOnly ? "ro" : "rw")]) }),
            "allowedVolumeRoots": .array(allowedVolumeRoots.map { .string($0) }),
            "tmpfs": .array(tmpfs.map { .object(["target": .string($0.target), "size": size($0.sizeBytes)]) }),
            "environment": .object(["pass": .array(environment.pass.map { .string($0) }),
                                    "secret": .array(environment.secret.map { .string($0) }),
                                    "set": .object(environment.set.mapValues { .string($0) })]),
            "secrets": .array(secrets.map { secret in
                switch secret.source {
                case .file(let path): .object(["env": .string(secret.env), "file": .string(path)])
                case .environment(let name): .object(["env": .string(secret.env), "fromEnv": .string(name)])
                }
            }),
            "seccomp": .object(seccomp),
            "bundles": .object(["manifestBytes": size(b.manifestBytes), "jsonDepth": .number(b.jsonDepth), "maxFiles": .number(b.maxFiles),
                                "maxFileBytes": size(b.maxFileBytes), "maxTotalBytes": size(b.maxTotalBytes),
                                "maxPathLength": .number(b.maxPathLength), "maxPathDepth": .number(b.maxPathDepth),
                                "maxPatches": .number(b.maxPatches)]),
            "review": .object(["autoAcceptDiffs": .bool(review.autoAcceptDiffs)]),
        ])
    }
}
