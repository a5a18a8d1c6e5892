import Foundation
import StockadeImages
import StockadePolicy

/// One tar entry, written as the test says, however hostile.
struct TarEntry {
    enum Kind: UInt8 { case file = 0x30, hardlink = 0x31, symlink = 0x32, character = 0x33, directory = 0x35 }
    var name: String
    var kind: Kind = .file
    var mode: Int = 0o644
    var uid = 0, gid = 0
    var link = ""
    var data: [UInt8] = []

    static func file(_ name: String, _ text: String = "", mode: Int = 0o644) -> TarEntry { TarEntry(name: name, mode: mode, data: Array(text.utf8)) }
    static func dir(_ name: String, mode: Int = 0o755) -> TarEntry { TarEntry(name: name, kind: .directory, mode: mode) }
    static func symlink(_ name: String, to target: String) -> TarEntry { TarEntry(name: name, kind: .symlink, mode: 0o777, link: target) }
    static func hardlink(_ name: String, to target: String) -> TarEntry { TarEntry(name: name, kind: .hardlink, link: target) }
}

/// A ustar writer that writes names as given: no tool in between to clean them up.
enum Tar {
    static func archive(_ entries: [TarEntry]) -> [UInt8] {
        var out: [UInt8] = []
        for e in entries {
            var h = [UInt8](repeating: 0, count: 512)
            func put(_ s: String, _ at: Int, _ len: Int) { for (i, b) in s.utf8.prefix(len).enumerated() { h[at + i] = b } }
            func octal(_ v: Int, _ at: Int, _ len: Int) { put(String(repeating: "0", count: max(0, len - 1 - String(v, radix: 8).count)) + String(v, radix: 8), at, len - 1) }
            var name = e.name, prefix = ""
            if name.utf8.count > 100, let slash = name.utf8.prefix(155).lastIndex(of: UInt8(ascii: "/")) {
                prefix = String(name[..<slash])
                name = String(name[name.index(after: slash)...])
            }
            put(name, 0, 100)
            octal(e.mode, 100, 8)
            octal(e.uid, 108, 8)
            octal(e.gid, 116, 8)
            octal(e.kind == .file ? e.data.count : 0, 124, 12)
            octal(0, 136, 12)
            h[156] = e.kind.rawValue
            put(e.link, 157, 100)
            put("ustar", 257, 6)
            put("00", 263, 2)
            octal(0, 329, 8)
            octal(0, 337, 8)
            put(prefix, 345, 155)
            for i in 148..<156 { h[i] = 0x20 }
            let sum = h.reduce(0) { $0 + Int($1) }
            put(String(repeating: "0", count: 6 - String(sum, radix: 8).count) + String(sum, radix: 8), 148, 6)
            h[154] = 0
            out += h
            if e.kind == .file {
                out += e.data
                out += [UInt8](repeating: 0, count: (512 - e.data.count % 512) % 512)
            }
        }
        return out + [UInt8](repeating: 0, count: 1024)
    }

    static func gzip(_ bytes: [UInt8]) throws -> [UInt8] {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/gzip")
        p.arguments = ["-c", "-n"]
        let input = Pipe(), output = Pipe()
        p.standardInput = input
        p.standardOutput = output
        try p.run()
        let writer = Thread { input.fileHandleForWriting.write(Data(bytes)); try? input.fileHandleForWriting.close() }
        writer.start()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Array(data)
    }
}

/// An OCI image layout written blob by blob, with the digests computed here.
struct LayoutFixture {
    let path: String

    init(layers: [[UInt8]], mediaType: String = "application/vnd.oci.image.layer.v1.tar",
         config: [String: JSONValue] = [:], layerDigests: [String]? = nil) throws {
        path = NSTemporaryDirectory() + "oci-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path + "/blobs/sha256", withIntermediateDirectories: true)
        try Data(#"{"imageLayoutVersion": "1.0.0"}"#.utf8).write(to: URL(fileURLWithPath: path + "/oci-layout"))
        var descriptors: [JSONValue] = []
        for (i, layer) in layers.enumerated() {
            let digest = try blob(layer)
            descriptors.append(.object(["mediaType": .string(mediaType), "digest": .string(layerDigests?[i] ?? digest.description),
                                        "size": .number(layer.count)]))
        }
        let configBytes = Array(JSONValue.object(["architecture": .string("amd64"), "os": .string("linux"),
                                                  "config": .object(config),
                                                  "rootfs": .object(["type": .string("layers"), "diff_ids": .array([])])]).serialized().utf8)
        let configDigest = try blob(configBytes)
        let manifest = Array(JSONValue.object([
            "schemaVersion": .number(2), "mediaType": .string("application/vnd.oci.image.manifest.v1+json"),
            "config": .object(["mediaType": .string("application/vnd.oci.image.config.v1+json"), "digest": .string(configDigest.description),
                               "size": .number(configBytes.count)]),
            "layers": .array(descriptors),
        ]).serialized().utf8)
        let manifestDigest = try blob(manifest)
        let index = JSONValue.object(["schemaVersion": .number(2), "manifests": .array([.object([
            "mediaType": .string("application/vnd.oci.image.manifest.v1+json"), "digest": .string(manifestDigest.description),
            "size": .number(manifest.count), "annotations": .object(["org.opencontainers.image.ref.name": .string("latest")]),
        ])])])
        try Data(index.serialized().utf8).write(to: URL(fileURLWithPath: path + "/index.json"))
    }

    @discardableResult
    func blob(_ bytes: [UInt8]) throws -> Digest {
        let digest = Digest.of(bytes)
        try Data(bytes).write(to: URL(fileURLWithPath: path + "/blobs/sha256/" + digest.hex))
        return digest
    }
}
