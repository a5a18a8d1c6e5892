import StockadePolicy
import Testing

@Suite("egress rules and decisions")
struct EgressPolicyTests {
    static func policy(allow: [String], deny: [String] = [], hosts: [String: String] = [:], allowPrivate: Bool = false) throws -> EgressPolicy {
        var egress = Profile.Egress()
        egress.allow = try allow.map { try #require(EgressRule.parse($0), "rule \($0)") }
        egress.deny = try deny.map { try #require(EgressRule.parse($0), "rule \($0)") }
        egress.allowPrivate = allowPrivate
        return EgressPolicy(egress: egress, hosts: hosts)
    }

    static func json(_ text: String) throws -> JSONValue {
        try StrictJSON.parse(Array(text.utf8), limits: .init(maxBytes: 1 << 16, maxDepth: 16))
    }

    @Test("well-formed rules parse and print back as written", arguments: [
        "pypi.org", "*.pythonhosted.org:443", "files.pythonhosted.org:8080", "198.51.100.7", "198.51.100.7:443", "[2001:db8::1]:443",
        "[2001:db8::1]", "a-b.c0.example",
    ])
    func parses(_ text: String) throws {
        let rule = try #require(EgressRule.parse(text))
        #expect(rule.description == text)
    }

    @Test("malformed rules are refused", arguments: [
        "", "*", "*.", "**.a.org", "a..b", "-a.org", "a-.org", "a_b.org", "pypi.org:0", "pypi.org:65536", "pypi.org:", "pypi.org:x",
        "2001:db8::1", "[2001:db8::1", "[198.51.100.7]", "a.org:443:1", "a.org/path", "http://a.org", "*.a.org.*", String(repeating: "a", count: 64) + ".org",
    ])
    func refuses(_ text: String) {
        #expect(EgressRule.parse(text) == nil, "\(text) parsed")
    }

    @Test("an exact name, a suffix wildcard and the default ports decide as written")
    func decisions() throws {
        let p = try Self.policy(allow: ["pypi.org", "*.pythonhosted.org:443"], deny: ["evil.pythonhosted.org"])
        #expect(p.decide(host: "pypi.org", port: 443) == .allow(rule: "pypi.org", pinned: nil))
        #expect(p.decide(host: "PyPI.org.", port: 80) == .allow(rule: "pypi.org", pinned: nil))
        #expect(p.decide(host: "files.pythonhosted.org", port: 443) == .allow(rule: "*.pythonhosted.org:443", pinned: nil))
        // Negative: the suffix does not cover the bare name, another port, or a look-alike.
        #expect(p.decide(host: "pythonhosted.org", port: 443) == .deny(reason: "not-allowed", rule: nil))
        #expect(p.decide(host: "files.pythonhosted.org", port: 80) == .deny(reason: "port-not-allowed", rule: nil))
        #expect(p.decide(host: "pypi.org", port: 22) == .deny(reason: "port-not-allowed", rule: nil))
        #expect(p.decide(host: "xpythonhosted.org", port: 443) == .deny(reason: "not-allowed", rule: nil))
        #expect(p.decide(host: "pypi.org.evil.com", port: 443) == .deny(reason: "not-allowed", rule: nil))
        #expect(p.decide(host: "evil.pythonhosted.org", port: 443) == .deny(reason: "denied-by-rule", rule: "evil.pythonhosted.org"))
    }

    @Test("IP literals and the numeric forms resolvers accept are refused unless a rule names the address")
    func literals() throws {
        let p = try Self.policy(allow: ["pypi.org", "198.51.100.7:443"])
        #expect(p.decide(host: "198.51.100.7", port: 443) == .allow(rule: "198.51.100.7:443", pinned: [198, 51, 100, 7]))
        #expect(p.decide(host: "198.51.100.8", port: 443) == .deny(reason: "ip-literal", rule: nil))
        #expect(p.decide(host: "[::1]", port: 443) == .deny(reason: "ip-literal", rule: nil))
        for numeric in ["2130706433", "0x7f000001", "127.1", "0177.0.0.1", "127.0.0.01", "1.2.3.4.5"] {
            #expect(p.decide(host: numeric, port: 443) == .deny(reason: "bad-host", rule: nil), "\(numeric)")
        }
        for junk in ["", "a b", "a/b", "pypi.org\r\nX: y", "pypi.org@evil.com", String(repeating: "a.", count: 200)] {
            #expect(p.decide(host: junk, port: 443) == .deny(reason: "bad-host", rule: nil), "\(junk)")
        }
    }

    @Test("a pinned name decides with its address and no lookup")
    func pinned() throws {
        let p = try Self.policy(allow: ["mirror.internal"], hosts: ["mirror.internal": "127.0.0.1"])
        #expect(p.decide(host: "mirror.internal", port: 80) == .allow(rule: "mirror.internal", pinned: [127, 0, 0, 1]))
        #expect(p.refusal(for: [127, 0, 0, 1], port: 80)?.reason == "loopback-address")
        let open = try Self.policy(allow: ["mirror.internal"], hosts: ["mirror.internal": "127.0.0.1"], allowPrivate: true)
        #expect(open.refusal(for: [127, 0, 0, 1], port: 80) == nil)
        // Metadata stays out of reach even with allowPrivate.
        #expect(open.refusal(for: [169, 254, 169, 254], port: 80)?.reason == "link-local-address")
        // So do those outside link-local (Azure's WireServer, Alibaba's, AWS's IPv6 one).
        #expect(open.refusal(for: [168, 63, 129, 16], port: 80)?.reason == "metadata-address")
        #expect(open.refusal(for: [100, 100, 100, 200], port: 80)?.reason == "metadata-address")
        #expect(open.refusal(for: try #require(IPAddress.parse("fd00:ec2::254")), port: 80)?.reason == "metadata-address")
        #expect(p.refusal(for: [168, 63, 129, 16], port: 80)?.reason == "metadata-address")
    }

    @Test("a deny rule naming an address refuses a name that resolves to it, in its IPv4-mapped form too, on the rule's ports")
    func denyAppliesToResolvedAddresses() throws {
        let p = try Self.policy(allow: ["*.cdn.org", "*.cdn.org:8080"], deny: ["151.101.0.223", "151.101.0.224:8080"])
        let denied = try #require(p.refusal(for: [151, 101, 0, 223], port: 443))
        #expect(denied.reason == "denied-by-rule" && denied.rule == "151.101.0.223")
        let mapped = try #require(IPAddress.parse("::ffff:151.101.0.223"))
        #expect(p.refusal(for: mapped, port: 80)?.reason == "denied-by-rule")
        #expect(p.refusal(for: [151, 101, 0, 223], port: 8080) == nil, "a rule without a port covers 80 and 443 only")
        #expect(p.refusal(for: [151, 101, 0, 224], port: 8080)?.rule == "151.101.0.224:8080")
        #expect(p.refusal(for: [151, 101, 0, 224], port: 443) == nil)
        #expect(p.refusal(for: [151, 101, 0, 225], port: 443) == nil, "the positive control: an address no rule names")
        // The same IPv4 address in the other IPv6 forms that carry it, and a rule written in mapped form.
        for form in ["64:ff9b::9765:df", "64:ff9b:1::9765:df", "2002:9765:df::1", "::ffff:0:9765:df", "::9765:df"] {
            #expect(p.refusal(for: try #require(IPAddress.parse(form)), port: 443)?.reason == "denied-by-rule", "\(form)")
        }
        let mappedRule = try Self.policy(allow: ["*.cdn.org"], deny: ["[::ffff:151.101.0.223]"])
        #expect(mappedRule.refusal(for: [151, 101, 0, 223], port: 443)?.reason == "denied-by-rule")
        #expect(mappedRule.refusal(for: [151, 101, 0, 224], port: 443) == nil)
    }

    @Test("the host's own addresses are refused as loopback is, unless allowPrivate")
    func localAddresses() throws {
        let own: [UInt8] = [151, 101, 0, 9]
        let p = try Self.policy(allow: ["a.org"])
        #expect(p.refusal(for: own, port: 443)?.reason == nil, "the positive control: not one of the host's")
        #expect(p.refusal(for: own, port: 443, local: [[10, 0, 0, 1], own])?.reason == "local-address")
        let mapped = try #require(IPAddress.parse("::ffff:151.101.0.9"))
        #expect(p.refusal(for: mapped, port: 443, local: [own])?.reason == "local-address")
        let v6 = try #require(IPAddress.parse("2a04:4e42::223"))
        #expect(p.refusal(for: v6, port: 443, local: [v6])?.reason == "local-address")
        // The IPv4 address an IPv6 form carries: a translator on the host would connect there.
        for form in ["64:ff9b::9765:9", "2002:9765:9::1"] {
            let carried = try #require(IPAddress.parse(form))
            #expect(p.refusal(for: carried, port: 443)?.reason == nil, "the positive control: \(form) alone is public")
            #expect(p.refusal(for: carried, port: 443, local: [own])?.reason == "local-address", "\(form)")
        }
        let open = try Self.policy(allow: ["a.org"], allowPrivate: true)
        #expect(open.refusal(for: own, port: 443, local: [own]) == nil)
    }

    @Test("private, metadata and other special addresses are classed; public ones are not", arguments: [
        ("127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"),
        ("192.168.1.1", "private"), ("169.254.169.254", "link-local"), ("100.64.0.1", "cgnat"), ("100.127.255.255", "cgnat"),
        ("224.0.0.1", "multicast"), ("0.0.0.0", "unspecified"), ("255.255.255.255", "reserved"),
        ("::1", "loopback"), ("::", "unspecified"), ("fd00::1", "private"), ("fe80::1", "link-local"), ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"), ("64:ff9b::a00:1", "private"),
        ("2002:a9fe:a9fe::1", "link-local"),
        ("192.0.2.1", "reserved"), ("198.18.0.1", "reserved"), ("198.19.255.255", "reserved"), ("198.51.100.7", "reserved"),
        ("203.0.113.9", "reserved"), ("::ffff:0:7f00:1", "loopback"), ("::ffff:0:a9fe:a9fe", "link-local"),
        ("64:ff9b:1::808:808", "private"), ("64:ff9b:1::a9fe:a9fe", "link-local"), ("100::1", "reserved"), ("2001:0:4136:e378::1", "reserved"), ("2001:db8::1", "reserved"),
        ("168.63.129.16", "metadata"), ("::ffff:168.63.129.16", "metadata"), ("64:ff9b::a83f:8110", "metadata"), ("2002:a83f:8110::1", "metadata"),
        ("100.100.100.200", "metadata"), ("fd00:ec2::254", "metadata"), ("fd00:ec2::23", "metadata"), ("fd20:ce::254", "metadata"),
        ("fd00:c1::a9fe:a9fe", "metadata"), ("fd20:ce::253", "private"), ("100.100.100.201", "cgnat"), ("192.0.0.192", "metadata"),
    ])
    func special(_ address: String, _ kind: String) throws {
        let bytes = try #require(IPAddress.parse(address), "\(address)")
        #expect(IPAddress.specialKind(bytes) == kind, "\(address)")
    }

    @Test("public addresses pass the check", arguments: ["168.63.129.17", "168.63.128.16", "151.101.0.223", "172.32.0.1", "100.128.0.1", "2a04:4e42::223", "198.17.255.1", "198.20.0.1", "203.0.114.1", "2606:4700::1111"])
    func publicAddresses(_ address: String) throws {
        let bytes = try #require(IPAddress.parse(address))
        #expect(IPAddress.specialKind(bytes) == nil, "\(address)")
    }

    @Test("profiles: egress and hosts decode, and malformed entries are errors naming the field")
    func decoding() throws {
        let good = try Self.json(#"""
            {"network": {"mode": "proxy", "egress": {"allow": ["pypi.org", "*.pythonhosted.org:443"], "deny": ["x.pypi.org"],
             "allowPrivate": false, "maxConnections": 64, "maxBytes": "1g", "resolver": "127.0.0.53:53"}, "hosts": {"Mirror.Internal": "198.51.100.7"}}}
            """#)
        let profile = try ProfileDecoder.decode(good, onto: Profile(), source: nil)
        #expect(profile.network.mode == .proxy)
        #expect(profile.network.egress.allow.map(\.description) == ["pypi.org", "*.pythonhosted.org:443"])
        #expect(profile.network.egress.deny.map(\.description) == ["x.pypi.org"])
        #expect(profile.network.egress.maxBytes == 1 << 30)
        #expect(profile.network.egress.resolver == "127.0.0.53:53")
        #expect(profile.network.hosts == ["mirror.internal": "198.51.100.7"])

        let bad = try Self.json(#"""
            {"network": {"egress": {"allow": ["ok.org", "bad host"], "deny": [7], "maxConnections": 0, "typo": 1, "resolver": "dns.example:53"},
             "hosts": {"a.org": "not-an-ip", "bad_name": "198.51.100.7"}}}
            """#)
        do {
            _ = try ProfileDecoder.decode(bad, onto: Profile(), source: nil)
            Issue.record("a malformed egress section decoded")
        } catch {
            let fields = Set(error.issues.map(\.field))
            #expect(fields == ["network.egress.allow[1]", "network.egress.deny[0]", "network.egress.maxConnections",
                               "network.egress.typo", "network.egress.resolver", "network.hosts.a.org", "network.hosts.bad_name"], "\(error)")
        }
    }
}
