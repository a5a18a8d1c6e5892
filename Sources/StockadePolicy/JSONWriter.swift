extension JSONValue {
    /// JSON text: keys sorted (so equal values give equal bytes, for digests), compact or indented.
    public func serialized(pretty: Bool = false) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        write(into: &out, pretty: pretty, indent: 0)
        return String(decoding: out, as: UTF8.self)
    }

    /// Written as UTF-8 bytes: the audit store serialises every event's detail,
    /// and appending to a String scalar by scalar cost more than the SQL.
    private func write(into out: inout [UInt8], pretty: Bool, indent: Int) {
        switch self {
        case .null: out += "null".utf8
        case .bool(let b): out += (b ? "true" : "false").utf8
        case .number(let text): out += text.utf8
        case .string(let s): JSONValue.quote(s, into: &out)
        case .array(let items):
            if items.isEmpty { out += "[]".utf8; return }
            out.append(UInt8(ascii: "["))
            for (i, item) in items.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                if pretty { Self.newline(&out, indent + 1) }
                item.write(into: &out, pretty: pretty, indent: indent + 1)
            }
            if pretty { Self.newline(&out, indent) }
            out.append(UInt8(ascii: "]"))
        case .object(let members):
            if members.isEmpty { out += "{}".utf8; return }
            out.append(UInt8(ascii: "{"))
            for (i, member) in members.sorted(by: { $0.key < $1.key }).enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                if pretty { Self.newline(&out, indent + 1) }
                JSONValue.quote(member.key, into: &out)
                out += (pretty ? ": " : ":").utf8
                member.value.write(into: &out, pretty: pretty, indent: indent + 1)
            }
            if pretty { Self.newline(&out, indent) }
            out.append(UInt8(ascii: "}"))
        }
    }

    private static func newline(_ out: inout [UInt8], _ indent: Int) {
        out.append(UInt8(ascii: "\n"))
        for _ in 0..<(2 * indent) { out.append(UInt8(ascii: " ")) }
    }

    /// Appends `s` as a JSON string literal, escaping quotes, backslashes and every control character.
    public static func quote(_ s: String, into out: inout String) {
        var bytes: [UInt8] = []
        quote(s, into: &bytes)
        out += String(decoding: bytes, as: UTF8.self)
    }

    /// Appends `s` as a JSON string literal in UTF-8: quotes, backslashes, C0 and C1 controls,
    /// DEL and U+2028/U+2029 escaped (`\u` with four lower-case hex digits), everything else as is.
    public static func quote(_ s: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        var s = s
        s.withUTF8 { utf8 in
            let n = utf8.count
            var i = 0
            var run = 0  // start of the bytes not yet copied
            while i < n {
                let b = utf8[i]
                var escape: UInt32? = nil
                var width = 1
                if b >= 0x20 && b < 0x7F && b != 0x22 && b != 0x5C {
                    i += 1
                    continue
                } else if b < 0x80 {
                    escape = UInt32(b)
                } else if b == 0xC2, i + 1 < n, utf8[i + 1] >= 0x80, utf8[i + 1] <= 0x9F {
                    escape = UInt32(utf8[i + 1])
                    width = 2
                } else if b == 0xE2, i + 2 < n, utf8[i + 1] == 0x80, utf8[i + 2] == 0xA8 || utf8[i + 2] == 0xA9 {
                    escape = 0x2000 | UInt32(utf8[i + 2] - 0x80)
                    width = 3
                } else {
                    i += 1
                    continue
                }
                out.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[run..<i]))
                if let value = escape {
                    switch value {
                    case 0x22: out += "\\\"".utf8
                    case 0x5C: out += "\\\\".utf8
                    case 0x0A: out += "\\n".utf8
                    case 0x0D: out += "\\r".utf8
                    case 0x09: out += "\\t".utf8
                    default:
                        let digits: [UInt8] = Array("0123456789abcdef".utf8)
                        out += "\\u".utf8
                        out.append(digits[Int(value >> 12) & 0xF])
                        out.append(digits[Int(value >> 8) & 0xF])
                        out.append(digits[Int(value >> 4) & 0xF])
                        out.append(digits[Int(value) & 0xF])
                    }
                }
                i += width
                run = i
            }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[run..<n]))
        }
        out.append(UInt8(ascii: "\""))
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
        var object: [String: JSONValue] = [
            "name": .string(name), "description": .string(description),
            "user": .object(["uid": .number(user.uid), "gid": .number(user.gid)]),
            "hostname": .string(hostname),
            "limits": .object(limits),
            "network": .object(["mode": .string(network.mode.rawValue),
                                "publish": .array(network.publish.map { .string("\($0.hostPort):\($0.workerPort)") }),
                                "egress": .object(["allow": .array(network.egress.allow.map { .string($0.description) }),
                                                   "deny": .array(network.egress.deny.map { .string($0.description) }),
                                                   "allowPrivate": .bool(network.egress.allowPrivate),
                                                   "maxConnections": .number(network.egress.maxConnections),
                                                   "maxBytes": size(network.egress.maxBytes),
                                                   "resolver": network.egress.resolver.map { .string($0) } ?? .null]),
                                "hosts": .object(network.hosts.mapValues { .string($0) })]),
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
            "review": .object(["autoAcceptDiffs": .bool(review.autoAcceptDiffs), "allowSelfApproval": .bool(review.allowSelfApproval)]),
        ]
        switch root {
        case .host: break
        case .image(let name): object["root"] = .object(["image": .string(name)])
        case .rootfs(let dir): object["root"] = .object(["rootfs": .string(dir)])
        }
        return .object(object)
    }
}
