import StockadeBundles
import StockadeImages
import StockadePolicy
import Testing
@testable import StockadeSupervisor

/// The planner's table: profile + options + request manifest + image config in, one resolved run
/// out. Pure: no root, no files, no kernel.
@Suite("the run planner's resolution table")
struct RunPlannerTests {
    let planner = RunPlanner(hostEnvironment: ["HOME": "/root", "LANG": "C.UTF-8", "SECRET_OF_HOST": "x"])

    func env(_ run: RunPlanner.ResolvedRun, secrets: RunSecrets = .none) -> [String: String] {
        Dictionary(planner.environment(for: run.profile, options: run.options, secrets: secrets, image: run.imageEnvironment),
                   uniquingKeysWith: { _, b in b })
    }

    @Test("flags override the profile's limits; what is not given stays the profile's")
    func limits() {
        var profile = Profile()
        profile.limits.memoryBytes = 256 << 20
        profile.limits.pids = 64
        var options = RunOptions(command: ["/bin/true"])
        options.memoryBytes = 64 << 20
        options.timeoutSeconds = 5
        let run = planner.resolve(profile: profile, options: options, image: nil, manifest: nil)
        #expect(run.profile.limits.memoryBytes == 64 << 20)
        #expect(run.profile.limits.timeoutSeconds == 5)
        #expect(run.profile.limits.pids == 64)
        #expect(run.command == ["/bin/true"])
    }

    @Test("network: --publish turns none into loopback; --allow-host turns it into proxy with the rule and proxy variables")
    func network() throws {
        var publish = RunOptions(command: ["x"])
        publish.publish = [try #require(ProfileDecoder.parsePublish("8080:80"))]
        #expect(planner.resolve(profile: Profile(), options: publish, image: nil, manifest: nil).profile.network.mode == .loopback)

        var proxy = RunOptions(command: ["x"])
        proxy.allowHosts = [try #require(EgressRule.parse("pypi.org"))]
        proxy.pinnedHosts = ["mirror.test": "127.0.0.1"]
        let run = planner.resolve(profile: Profile(), options: proxy, image: nil, manifest: nil)
        #expect(run.profile.network.mode == .proxy)
        #expect(run.profile.network.egress.allow.map(\.description) == ["pypi.org"])
        #expect(run.profile.network.hosts["mirror.test"] == "127.0.0.1")
        #expect(env(run)["HTTPS_PROXY"] == "http://127.0.0.1:3128" && env(run)["https_proxy"] == "http://127.0.0.1:3128")
        #expect(env(run)["ALL_PROXY"]?.hasPrefix("socks5h://") == true)
        // Without proxy mode, no proxy variables.
        #expect(env(planner.resolve(profile: Profile(), options: RunOptions(command: ["x"]), image: nil, manifest: nil))["HTTP_PROXY"] == nil)
    }

    @Test("the command: flags, else the request manifest's, else the image's Entrypoint and Cmd; none is empty")
    func command() {
        let manifest = BundleManifest(files: [], command: ["python3", "main.py"], env: ["FROM_MANIFEST": "m", "BOTH": "manifest"])
        var image = ImageConfig()
        image.entrypoint = ["/bin/sh", "-c"]
        image.cmd = ["echo image"]
        image.env = ["PATH=/image/bin", "FROM_IMAGE=i"]
        image.workingDir = "/app"
        let img = RunPlanner.Image(config: image, uid: 1000, gid: 1001)

        var flags = RunOptions(command: ["/bin/true"])
        flags.environment = [("BOTH", "flag")]
        let a = planner.resolve(profile: Profile(), options: flags, image: img, manifest: manifest)
        #expect(a.command == ["/bin/true"])
        #expect(env(a)["BOTH"] == "flag" && env(a)["FROM_MANIFEST"] == "m" && env(a)["FROM_IMAGE"] == "i")
        #expect(a.workdir == "/app")
        #expect(a.profile.user.uid == 1000 && a.profile.user.gid == 1001)

        let b = planner.resolve(profile: Profile(), options: RunOptions(), image: img, manifest: manifest)
        #expect(b.command == ["python3", "main.py"])
        let c = planner.resolve(profile: Profile(), options: RunOptions(), image: img, manifest: nil)
        #expect(c.command == ["/bin/sh", "-c", "echo image"])
        #expect(planner.resolve(profile: Profile(), options: RunOptions(), image: nil, manifest: nil).command.isEmpty)
    }

    @Test("the environment: image, then profile pass and set, then the run, then secrets; nothing else of the host")
    func environment() {
        var profile = Profile()
        profile.environment.pass = ["LANG"]
        profile.environment.set = ["K": "profile", "PATH": "/usr/bin:/bin"]
        var options = RunOptions(command: ["x"])
        options.environment = [("K", "run")]
        let run = planner.resolve(profile: profile, options: options, image: RunPlanner.Image(config: {
            var c = ImageConfig(); c.env = ["PATH=/image/bin", "IMG=1"]; return c }()), manifest: nil)
        let e = env(run)
        #expect(e["LANG"] == "C.UTF-8")
        #expect(e["HOME"] == nil && e["SECRET_OF_HOST"] == nil, "only what the profile passes comes from the host")
        #expect(e["K"] == "run" && e["PATH"] == "/usr/bin:/bin" && e["IMG"] == "1")
    }

    @Test("rlimits: the profile's, with no real-time priority and 64 KiB of locked memory whatever it says")
    func rlimits() {
        var profile = Profile()
        profile.limits.rlimits.nofile = 256
        let limits = RunPlanner.rlimits(for: profile)
        #expect(limits.contains { $0.1 == 256 && $0.2 == 256 })
        #expect(limits.count == 6)
        #expect(limits.contains { $0.1 == 0 && $0.2 == 0 })
        #expect(limits.contains { $0.1 == 64 << 10 })
    }
}
