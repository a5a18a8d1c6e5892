import Foundation
import Testing

/// An OCI image layout made here with /bin/tar and gzip: busybox-static as the image's only program.
private struct BusyboxLayout {
    let path: String
    let manifestDigest: String

    init(env: [String], cmd: [String]) throws {
        let fm = FileManager.default
        let path = NSTemporaryDirectory() + "busybox-oci-\(UUID().uuidString)"
        self.path = path
        let root = path + ".root"
        try fm.createDirectory(atPath: root + "/bin", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: path + "/blobs/sha256", withIntermediateDirectories: true)
        try fm.copyItem(atPath: "/bin/busybox", toPath: root + "/bin/busybox")
        try fm.createSymbolicLink(atPath: root + "/bin/sh", withDestinationPath: "busybox")
        let tar = try Harness.exec("/bin/tar", ["-C", root, "--numeric-owner", "--owner=0", "--group=0", "-czf", path + ".layer", "."])
        try #require(tar.status == 0, "tar: \(tar.stderr)")
        let layer = try Data(contentsOf: URL(fileURLWithPath: path + ".layer"))
        func blob(_ data: Data) throws -> String {
            let file = path + "/blobs/sha256/incoming"
            try data.write(to: URL(fileURLWithPath: file))
            let sum = try Harness.exec("/usr/bin/sha256sum", [file])
            let hex = String(sum.stdout.prefix(64))
            try fm.moveItem(atPath: file, toPath: path + "/blobs/sha256/" + hex)
            return "sha256:" + hex
        }
        func json(_ o: Any) throws -> Data { try JSONSerialization.data(withJSONObject: o, options: [.sortedKeys]) }
        let layerDigest = try blob(layer)
        let config = try json(["architecture": "amd64", "os": "linux", "config": ["Env": env, "Cmd": cmd],
                               "rootfs": ["type": "layers", "diff_ids": [String]()]])
        let configDigest = try blob(config)
        let manifest = try json(["schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                 "config": ["mediaType": "application/vnd.oci.image.config.v1+json", "digest": configDigest, "size": config.count],
                                 "layers": [["mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layerDigest, "size": layer.count]]])
        manifestDigest = try blob(manifest)
        try json(["schemaVersion": 2, "manifests": [["mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifestDigest,
                                                      "size": manifest.count, "annotations": ["org.opencontainers.image.ref.name": "latest"]]]])
            .write(to: URL(fileURLWithPath: path + "/index.json"))
        try Data(#"{"imageLayoutVersion":"1.0.0"}"#.utf8).write(to: URL(fileURLWithPath: path + "/oci-layout"))
    }
}

@Suite("worker roots from OCI images", .serialized,
       .enabled(if: Harness.canSandbox && FileManager.default.fileExists(atPath: "/bin/busybox"),
                "needs root, user namespaces and busybox-static (apt-get install busybox-static)"), .timeLimit(.minutes(3)))
struct ImageTests {
    @Test("a run on an imported image prints from the image's own busybox, sees no host /usr, and takes Env and Cmd")
    func runOnImage() throws {
        let layout = try BusyboxLayout(env: ["PATH=/bin", "GREETING=hello from the image"],
                                       cmd: ["/bin/sh", "-c", "echo $GREETING; ls /usr 2>&1 || echo no host usr; cat /etc/hostname"])
        let h = try Harness()
        let imported = try h.stockade(["image", "import", layout.path, "--name", "busybox:test"])
        #expect(imported.status == 0, "\(imported.stderr)")
        #expect(imported.stdout.contains(layout.manifestDigest))

        let r = try h.stockade(["run", "--json", "--image", "busybox:test"])
        let report = try r.report()
        #expect(r.status == 0, "\(r.stdout) \(r.stderr)")
        let stdout = report.string("stdout") ?? ""
        #expect(stdout.hasPrefix("hello from the image\n"), "\(stdout)")
        #expect(stdout.contains("no host usr"), "\(stdout)")
        #expect(stdout.hasSuffix("stockade\n"), "the generated /etc stays on top: \(stdout)")
        #expect(report.string("image") == layout.manifestDigest)

        // A command replaces Cmd; the root is read-only and the image's files are the worker's to read, not write.
        let ls = try h.stockade(["run", "--json", "--image", "busybox:test", "--", "/bin/busybox", "sh", "-c",
                                 "id -u; touch /bin/x 2>&1 || echo read-only; echo ok > /tmp/t && cat /tmp/t && ls /"])
        let lsReport = try ls.report()
        let out = lsReport.string("stdout") ?? ""
        #expect(out.hasPrefix("1000\n"), "\(out) \(ls.stderr)")
        #expect(out.contains("read-only"), "\(out)")
        #expect(out.contains("ok\n") && out.contains("bin") && out.contains("workspace"), "\(out)")

        let audit = try h.stockade(["audit", "events", "--run", try #require(report.string("runId")), "--kind", "run.created", "--json"])
        #expect(audit.stdout.contains(layout.manifestDigest), "run.created records the image digest: \(audit.stdout) \(audit.stderr)")
    }

    @Test("image list, inspect and rm; gc collects the layers no image names")
    func lifecycle() throws {
        let layout = try BusyboxLayout(env: ["PATH=/bin"], cmd: ["/bin/true"])
        let h = try Harness()
        #expect(try h.stockade(["image", "import", layout.path, "--name", "bb"]).status == 0)
        let list = try h.stockade(["image", "list", "--json"])
        #expect(list.stdout.contains("bb:latest") && list.stdout.contains(layout.manifestDigest), "\(list.stdout)")
        let inspect = try h.stockade(["image", "inspect", "bb", "--json"])
        #expect(inspect.stdout.contains("\"cmd\""), "\(inspect.stdout)")
        let missing = try h.stockade(["run", "--json", "--image", "nope", "--", "/bin/true"])
        #expect(missing.status == 125)
        #expect(missing.stdout.contains("stockade image import") || missing.stderr.contains("stockade image import"), "\(missing.stdout) \(missing.stderr)")
        #expect(try h.stockade(["image", "rm", "bb"]).status == 0)
        let gc = try h.stockade(["gc", "--older-than", "1d"])
        #expect(gc.status == 0, "\(gc.stderr)")
        #expect(gc.stderr.contains("removed 1 unused image layer"), "\(gc.stderr)")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: h.stateDirectory + "/images/layers")) ?? ["?"]).isEmpty)
    }

    @Test("a layout written by umoci (a real peer's output) imports and runs its Cmd",
          .enabled(if: FileManager.default.fileExists(atPath: "/usr/bin/umoci"), "needs umoci (apt-get install umoci)"))
    func umociLayout() throws {
        let dir = NSTemporaryDirectory() + "umoci-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let script = """
            set -e; cd \(dir); umoci init --layout bb; umoci new --image bb:latest; umoci unpack --image bb:latest bundle
            mkdir -p bundle/rootfs/bin; cp /bin/busybox bundle/rootfs/bin/; ln -s busybox bundle/rootfs/bin/sh
            umoci repack --image bb:latest bundle
            umoci config --image bb:latest --config.env GREETING=from-umoci --config.cmd /bin/sh --config.cmd -c --config.cmd 'echo $GREETING'
            """
        let made = try Harness.exec("/bin/sh", ["-c", script])
        try #require(made.status == 0, "umoci: \(made.stderr)")
        let h = try Harness()
        let imported = try h.stockade(["image", "import", dir + "/bb:latest", "--name", "umoci-bb"])
        #expect(imported.status == 0, "\(imported.stderr)")
        let r = try h.stockade(["run", "--json", "--image", "umoci-bb"])
        #expect(try r.report().string("stdout") == "from-umoci\n", "\(r.stdout) \(r.stderr)")
    }

    @Test("stockade verify --image runs the probes on the image's root: the controls hold there too")
    func verifyOnImage() throws {
        let layout = try BusyboxLayout(env: ["PATH=/bin"], cmd: ["/bin/sh"])
        let h = try Harness()
        #expect(try h.stockade(["image", "import", layout.path, "--name", "busybox:verify"]).status == 0)
        let r = try h.stockade(["verify", "--image", "busybox:verify", "--json", "--only", "seccomp.keyrings", "--only", "namespaces.*",
                                "--only", "resources.pids"])
        let report = try #require((try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8))) as? [String: Any], "\(r.stdout) \(r.stderr)")
        #expect(r.status == 0, "\(r.stdout.prefix(2000)) \(r.stderr)")
        #expect(report["image"] as? String == "busybox:verify")
        let controls = (report["controls"] as? [[String: Any]]) ?? []
        #expect(controls.count > 5 && controls.allSatisfy { $0["verdict"] as? String != "not-enforced" })
        // The probe ran on the image's root: its runs recorded the image's digest.
        let runId = try #require((report["runs"] as? [String])?.first)
        let created = try auditEvents(h, ["--run", runId]).first { $0["kind"] as? String == "run.created" }
        #expect("\(created ?? [:])".contains(layout.manifestDigest))
    }
}
