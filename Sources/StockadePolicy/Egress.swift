/// Egress by name: which hosts a worker in `network.mode: "proxy"` may reach
/// through the supervisor's proxy, and the checks on the address a name
/// resolves to. Pure values: the proxy asks `EgressPolicy.decide` before any
/// resolver sees a name, so a name no rule admits is never looked up.
extension Profile {
    public struct Egress: Sendable, Equatable {
        public var allow: [EgressRule] = []
        /// Checked first: a deny rule wins over any allow rule.
        public var deny: [EgressRule] = []
        /// Loopback, private, CGNAT, multicast, reserved and unspecified addresses
        /// are refused unless this is set; link-local (cloud metadata) always is.
        public var allowPrivate = false
        /// Connections per run, refused or not; the next one is refused and recorded as `limit.hit`.
        public var maxConnections = 64
        /// Bytes relayed per run, both ways together; a connection that crosses it is closed.
        public var maxBytes: Int64 = 1 << 30
        /// `IPV4:PORT` of the DNS server that resolves admitted names (A records), instead of
        /// the host's resolver; nil: getaddrinfo.
        public var resolver: String?
        public init() {}
    }
}

/// One allow or deny entry: `NAME`, `*.SUFFIX` or an IP address, with an optional port
/// (`NAME:443`, `[2001:db8::1]:443`); without one it covers ports 80 and 443.
public struct EgressRule: Sendable, Equatable, CustomStringConvertible {
    public enum Host: Sendable, Equatable {
        /// An exact name, lower case, without a trailing dot.
        case name(String)
        /// `*.example.com`: any name ending in `.example.com` (not `example.com` itself).
        case suffix(String)
        /// An address literal: 4 or 16 bytes.
        case address([UInt8])
    }

    public var host: Host
    public var port: UInt16?

    public init(host: Host, port: UInt16? = nil) {
        self.host = host
        self.port = port
    }

    public static let defaultPorts: [UInt16] = [80, 443]

    /// The rule as it is written in a profile.
    public var description: String {
        let h: String
        switch host {
        case .name(let n): h = n
        case .suffix(let s): h = "*." + s
        case .address(let a): h = a.count == 16 ? "[\(IPAddress.format(a))]" : IPAddress.format(a)
        }
        return port.map { "\(h):\($0)" } ?? h
    }

    /// Parses `NAME[:PORT]`, `*.SUFFIX[:PORT]`, `A.B.C.D[:PORT]` or `[IPV6][:PORT]`; nil when malformed.
    public static func parse(_ text: String) -> EgressRule? {
        guard !text.isEmpty, text.utf8.count <= 300 else { return nil }
        var hostPart = Substring(text)
        var port: UInt16?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            hostPart = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":"), let p = parsePort(rest.dropFirst()) else { return nil }
                port = p
            }
            guard let address = IPAddress.parse(String(hostPart)), address.count == 16 else { return nil }
            return EgressRule(host: .address(address), port: port)
        }
        let colons = text.utf8.filter { $0 == UInt8(ascii: ":") }.count
        if colons > 1 { return nil }  // an IPv6 address needs brackets
        if colons == 1, let colon = text.firstIndex(of: ":") {
            hostPart = text[..<colon]
            guard let p = parsePort(text[text.index(after: colon)...]) else { return nil }
            port = p
        }
        let host = String(hostPart).lowercased()
        if let address = IPAddress.parse(host), address.count == 4 { return EgressRule(host: .address(address), port: port) }
        if host.hasPrefix("*.") {
            let suffix = String(host.dropFirst(2))
            guard HostName.isValid(suffix) else { return nil }
            return EgressRule(host: .suffix(suffix), port: port)
        }
        guard HostName.isValid(host) else { return nil }
        return EgressRule(host: .name(host), port: port)
    }

    static func parsePort(_ text: Substring) -> UInt16? {
        guard !text.isEmpty, text.utf8.count <= 5, text.utf8.allSatisfy({ (48...57).contains($0) }),
              let p = UInt16(text), p > 0 else { return nil }
        return p
    }

    /// Whether the rule covers `host` (a normalized name or address) on `port`.
    public func matches(_ host: EgressHost, port: UInt16) -> Bool {
        guard self.port.map({ $0 == port }) ?? EgressRule.defaultPorts.contains(port) else { return false }
        return matches(host)
    }

    /// Whether the rule names `host`, on whatever port.
    public func matches(_ host: EgressHost) -> Bool {
        switch (self.host, host) {
        case (.name(let n), .name(let h)): return n == h
        case (.suffix(let s), .name(let h)): return h.hasSuffix("." + s)
        case (.address(let a), .address(let b)): return a == b
        default: return false
        }
    }
}

/// A host as a client asked for it, after normalization.
public enum EgressHost: Sendable, Equatable, CustomStringConvertible {
    case name(String)
    case address([UInt8])

    /// A client's host: a valid DNS name (lower-cased, one trailing dot dropped), a dotted-quad IPv4
    /// address, or an IPv6 address (with or without brackets). Anything else, including the
    /// numeric forms resolvers also accept (`2130706433`, `0x7f.1`, `127.1`), is nil: refused
    /// before any resolver could read it as an address.
    public static func parse(_ text: String) -> EgressHost? {
        guard !text.isEmpty, text.utf8.count <= 255 else { return nil }
        var t = text.lowercased()
        if t.hasPrefix("[") && t.hasSuffix("]") { t = String(t.dropFirst().dropLast()) }
        if let a = IPAddress.parse(t) { return .address(a) }
        if t.hasSuffix(".") { t.removeLast() }
        guard HostName.isValid(t) else { return nil }
        // A last label of digits (or 0x…) is how inet_aton reads numbers: never a name.
        let last = t.split(separator: ".").last ?? ""
        if last.utf8.allSatisfy({ (48...57).contains($0) }) || last.hasPrefix("0x") { return nil }
        return .name(t)
    }

    public var description: String {
        switch self {
        case .name(let n): n
        case .address(let a): IPAddress.format(a)
        }
    }
}

public enum HostName {
    /// 1-253 characters of dot-separated labels, each 1-63 of a-z, 0-9 and '-', not starting or ending with '-'.
    public static func isValid(_ name: String) -> Bool {
        guard !name.isEmpty, name.utf8.count <= 253 else { return false }
        for label in name.split(separator: ".", omittingEmptySubsequences: false) {
            guard !label.isEmpty, label.utf8.count <= 63, label.first != "-", label.last != "-",
                  label.utf8.allSatisfy({ $0 == 45 || (48...57).contains($0) || (97...122).contains($0) }) else { return false }
        }
        return true
    }
}

/// What the policy says about a host and port, before any lookup.
public enum EgressDecision: Sendable, Equatable {
    /// Admitted by `rule`; `pinned` is the address from `network.hosts` or the literal itself (no lookup).
    case allow(rule: String, pinned: [UInt8]?)
    case deny(reason: String, rule: String?)
}

public struct EgressPolicy: Sendable, Equatable {
    public var egress: Profile.Egress
    /// Pinned names (`network.hosts`): name to 4- or 16-byte address.
    public var hosts: [String: [UInt8]]

    public init(egress: Profile.Egress, hosts: [String: String]) {
        self.egress = egress
        var pinned: [String: [UInt8]] = [:]
        for (name, address) in hosts {
            if let a = IPAddress.parse(address) { pinned[name.lowercased()] = a }
        }
        self.hosts = pinned
    }

    /// Deny rules first, then allow rules; no rule: denied. Never resolves anything.
    public func decide(host text: String, port: UInt16) -> EgressDecision {
        guard port > 0 else { return .deny(reason: "bad-port", rule: nil) }
        guard let host = EgressHost.parse(text) else { return .deny(reason: "bad-host", rule: nil) }
        if let rule = egress.deny.first(where: { $0.matches(host, port: port) }) {
            return .deny(reason: "denied-by-rule", rule: rule.description)
        }
        guard let rule = egress.allow.first(where: { $0.matches(host, port: port) }) else {
            if egress.allow.contains(where: { $0.matches(host) }) { return .deny(reason: "port-not-allowed", rule: nil) }
            if case .address = host { return .deny(reason: "ip-literal", rule: nil) }
            return .deny(reason: "not-allowed", rule: nil)
        }
        switch host {
        case .address(let a): return .allow(rule: rule.description, pinned: a)
        case .name(let n): return .allow(rule: rule.description, pinned: hosts[n])
        }
    }

    /// Why an address an admitted host resolved or was pinned to may not be connected to on `port`,
    /// with the deny rule that names it, or nil when it may:
    /// - a `deny` rule naming the address (an IPv4-mapped address as the IPv4 one): `denied-by-rule`,
    ///   as for the literal, so a name cannot carry a worker to an address the operator denied;
    /// - a special class (`IPAddress.specialKind`): link-local always, the others unless `allowPrivate`;
    /// - one of the host's own addresses (`local`, the supervisor's interfaces), or an IPv6 form
    ///   carrying one (mapped, NAT64, 6to4): its services listen there as on loopback, and the
    ///   connection is made from the host, so it is refused as loopback is (`local-address`, unless
    ///   `allowPrivate`).
    public func refusal(for address: [UInt8], port: UInt16, local: [[UInt8]] = []) -> (reason: String, rule: String?)? {
        let forms = IPAddress.forms(address)
        if let rule = egress.deny.first(where: { rule in
            guard case .address(let denied) = rule.host, rule.matches(.address(denied), port: port) else { return false }
            return !Set(IPAddress.forms(denied)).isDisjoint(with: forms)
        }) {
            return ("denied-by-rule", rule.description)
        }
        if let kind = IPAddress.specialKind(address) {
            // Link-local holds most clouds' metadata services, `metadata` the others: never reachable,
            // allowPrivate or not.
            return kind == "link-local" || kind == "metadata" || !egress.allowPrivate ? ("\(kind)-address", nil) : nil
        }
        // The address or the IPv4 address it carries (mapped, NAT64, 6to4: a translator here would
        // take it there) is one of the host's.
        if !egress.allowPrivate, local.contains(where: { forms.contains(IPAddress.unmapped($0)) }) { return ("local-address", nil) }
        return nil
    }
}

/// IPv4 and IPv6 addresses as bytes, parsed strictly (no inet_aton forms).
public enum IPAddress {
    public static func parse(_ text: String) -> [UInt8]? {
        if text.contains(":") { return parse6(text) }
        return parse4(Substring(text))
    }

    static func parse4(_ text: Substring) -> [UInt8]? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var out: [UInt8] = []
        for p in parts {
            guard !p.isEmpty, p.utf8.count <= 3, p.utf8.allSatisfy({ (48...57).contains($0) }),
                  !(p.utf8.count > 1 && p.first == "0"), let v = UInt8(p) else { return nil }
            out.append(v)
        }
        return out
    }

    static func parse6(_ text: String) -> [UInt8]? {
        guard text.utf8.count <= 45 else { return nil }
        var head: [UInt16] = [], tail: [UInt16] = []
        var halves = [text]
        let bytes = Array(text.utf8)
        if let gap = bytes.indices.dropLast().first(where: { bytes[$0] == 58 && bytes[$0 + 1] == 58 }) {
            halves = [String(decoding: bytes[..<gap], as: UTF8.self), String(decoding: bytes[(gap + 2)...], as: UTF8.self)]
            if halves[1].utf8.contains(58) && halves[1].hasPrefix(":") { return nil }
        }
        let sawGap = halves.count == 2
        func groups(_ s: String, allowV4: Bool) -> [UInt16]? {
            if s.isEmpty { return [] }
            let parts = s.split(separator: ":", omittingEmptySubsequences: false)
            var out: [UInt16] = []
            for (i, p) in parts.enumerated() {
                if allowV4 && i == parts.count - 1 && p.contains(".") {
                    guard let a = parse4(p) else { return nil }
                    out.append(UInt16(a[0]) << 8 | UInt16(a[1]))
                    out.append(UInt16(a[2]) << 8 | UInt16(a[3]))
                    continue
                }
                guard !p.isEmpty, p.utf8.count <= 4, let g = UInt16(p, radix: 16) else { return nil }
                out.append(g)
            }
            return out
        }
        guard let h = groups(halves[0], allowV4: !sawGap) else { return nil }
        head = h
        if sawGap {
            guard let t = groups(halves[1], allowV4: true) else { return nil }
            tail = t
        }
        let total = head.count + tail.count
        if sawGap ? total > 7 : total != 8 { return nil }
        let all = head + [UInt16](repeating: 0, count: 8 - total) + tail
        return all.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }
    }

    public static func format(_ a: [UInt8]) -> String {
        if a.count == 4 { return a.map { String($0) }.joined(separator: ".") }
        guard a.count == 16 else { return "?" }
        let groups = stride(from: 0, to: 16, by: 2).map { UInt16(a[$0]) << 8 | UInt16(a[$0 + 1]) }
        // RFC 5952: the longest run of two or more zero groups (the first of equals) becomes "::".
        var best = (start: -1, length: 0)
        var i = 0
        while i < 8 {
            var j = i
            while j < 8 && groups[j] == 0 { j += 1 }
            if j - i > best.length && j - i >= 2 { best = (i, j - i) }
            i = j == i ? i + 1 : j
        }
        let hex = groups.map { String($0, radix: 16) }
        guard best.start >= 0 else { return hex.joined(separator: ":") }
        return hex[..<best.start].joined(separator: ":") + "::" + hex[(best.start + best.length)...].joined(separator: ":")
    }

    /// The IPv4 address an IPv6 address carries, if any: IPv4-mapped (`::ffff:0:0/96`),
    /// IPv4-compatible (`::/96`), IPv4-translated (`::ffff:0:0:0/96`) and NAT64 (`64:ff9b::/32`, the
    /// well-known and local-use prefixes) in the last four bytes; 6to4 (`2002::/16`) in bytes 2 to 5.
    public static func embeddedIPv4(_ a: [UInt8]) -> [UInt8]? {
        guard a.count == 16 else { return nil }
        let zeros = { (r: Range<Int>) in a[r].allSatisfy { $0 == 0 } }
        if zeros(0..<10) && (a[10] == 0xFF && a[11] == 0xFF || a[10] == 0 && a[11] == 0) { return Array(a[12..<16]) }
        if zeros(0..<8) && a[8] == 0xFF && a[9] == 0xFF && a[10] == 0 && a[11] == 0 { return Array(a[12..<16]) }
        if a[0] == 0x00 && a[1] == 0x64 && a[2] == 0xFF && a[3] == 0x9B { return Array(a[12..<16]) }
        if a[0] == 0x20 && a[1] == 0x02 { return Array(a[2..<6]) }
        return nil
    }

    /// `a` and the IPv4 address it carries (`embeddedIPv4`): a deny rule naming any of them names the others.
    public static func forms(_ a: [UInt8]) -> [[UInt8]] {
        embeddedIPv4(a).map { [a, $0] } ?? [a]
    }

    /// The IPv4 address inside an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), else `a` itself.
    public static func unmapped(_ a: [UInt8]) -> [UInt8] {
        guard a.count == 16, a[0..<10].allSatisfy({ $0 == 0 }), a[10] == 0xFF, a[11] == 0xFF else { return a }
        return Array(a[12..<16])
    }

    /// The class of an address a worker must not reach without `allowPrivate`, or nil for a
    /// public one. IPv4-mapped, IPv4-translated (`::ffff:0:a.b.c.d`) and IPv4-compatible IPv6
    /// addresses are judged as their IPv4 address.
    public static func specialKind(_ a: [UInt8]) -> String? {
        if a.count == 16 {
            // Cloud metadata and platform services outside link-local: AWS's IPv6 instance metadata,
            // DNS and time (fd00:ec2::/32), GCP's (fd20:ce::254), OCI's (fd00:c1::a9fe:a9fe).
            if a[0..<4].elementsEqual([0xFD, 0x00, 0x0E, 0xC2]) { return "metadata" }
            if a == [0xFD, 0x20, 0, 0xCE] + [UInt8](repeating: 0, count: 10) + [0x02, 0x54] { return "metadata" }
            if a == [0xFD, 0, 0, 0xC1] + [UInt8](repeating: 0, count: 8) + [0xA9, 0xFE, 0xA9, 0xFE] { return "metadata" }
            if a[0..<15].allSatisfy({ $0 == 0 }) && a[15] <= 1 { return a[15] == 1 ? "loopback" : "unspecified" }  // ::1, ::
            if a[0] == 0x00 && a[1] == 0x64 && a[2] == 0xFF && a[3] == 0x9B && a[4] == 0 && a[5] == 0x01 {
                // 64:ff9b:1::/48 (local-use NAT64): private, or what the IPv4 address in its last
                // four bytes is (link-local stays refused under allowPrivate).
                return specialKind(Array(a[12..<16])) ?? "private"
            }
            if let v4 = embeddedIPv4(a) { return specialKind(v4) }      // mapped, compatible, translated, NAT64, 6to4
            if a[0] == 0x01 && a[1..<8].allSatisfy({ $0 == 0 }) { return "reserved" }               // 100::/64 (discard)
            if a[0] == 0x20 && a[1] == 0x01 && a[2] == 0 && a[3] == 0 { return "reserved" }       // 2001::/32 (Teredo)
            if a[0] == 0xFC || a[0] == 0xFD { return "private" }              // fc00::/7 (ULA)
            if a[0] == 0xFE && a[1] & 0xC0 == 0x80 { return "link-local" }   // fe80::/10
            if a[0] == 0xFE && a[1] & 0xC0 == 0xC0 { return "private" }      // fec0::/10 (site-local)
            if a[0] == 0xFF { return "multicast" }
            if a[0] == 0x20 && a[1] == 0x01 && a[2] == 0x0D && a[3] == 0xB8 { return "reserved" } // documentation
            return nil
        }
        guard a.count == 4 else { return "unspecified" }
        // Outside 169.254/16: Azure's WireServer (public, routed to every Azure VM), Alibaba
        // Cloud's metadata service (in CGNAT space) and Oracle Cloud's older one (192.0.0.192).
        if a == [168, 63, 129, 16] || a == [100, 100, 100, 200] || a == [192, 0, 0, 192] { return "metadata" }
        switch (a[0], a[1]) {
        case (0, _): return "unspecified"
        case (127, _): return "loopback"
        case (10, _), (172, 16...31), (192, 168): return "private"
        case (169, 254): return "link-local"
        case (100, 64...127): return "cgnat"
        case (224...239, _): return "multicast"
        case (240...255, _): return "reserved"
        case (192, 0) where a[2] == 0 || a[2] == 2: return "reserved"   // IETF protocol assignments, documentation
        case (198, 18...19): return "reserved"                          // benchmarking (also transparent proxies' fake IPs)
        case (198, 51) where a[2] == 100: return "reserved"             // documentation
        case (203, 0) where a[2] == 113: return "reserved"              // documentation
        default: return nil
        }
    }
}
