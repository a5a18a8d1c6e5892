// swift-tools-version:6.2
import PackageDescription

// Concrete generic types' metadata through direct accessors, not demangled at their first use: the
// runtime looks each such type's conformances up by scanning every conformance record of the binary
// (about 6 600), once per type and process, which a one-shot `stockade run` paid at a dozen sites.
// A hidden frontend flag through unsafeFlags: this package can be a root or path dependency only, and
// a toolchain without the flag fails the build (remove the line then, and its use for the dependencies
// in scripts/build-release.sh; nothing else depends on it).
let strict: [SwiftSetting] = [.treatAllWarnings(as: .error),
                              .unsafeFlags(["-Xfrontend", "-disable-concrete-type-metadata-mangled-name-accessors"])]
/// The modules `stockade` links: a file's member lookup sees only the modules it imports
/// (MemberImportVisibility), so a String's `contains` or `range(of:)` is the standard library's, not
/// full Foundation's NSString bridge, which swift-crypto's `import Foundation` otherwise makes the
/// answer in every module: with foundationEssentialsFirst, the one-shot binary links no full Foundation.
let lean: [SwiftSetting] = strict + [.enableUpcomingFeature("MemberImportVisibility")]

/// A static build (`--static-swift-stdlib`, scripts/build-release.sh) of `stockade` names the toolchain's
/// `swift_static/linux` directory in $STOCKADE_STATIC_STDLIB_DIR: FoundationEssentials' archive then
/// comes first on the link line, before the autolinked list, which puts full Foundation's first. lld
/// takes a symbol two archives define from the first it read, and FoundationEssentials' objects need
/// generic specializations both define: from FoundationEssentials, nothing of full Foundation (nor
/// CoreFoundation and ICU, whose initializers ran at every start) is linked, which the one-shot
/// binary never uses: 101 -> 52 MB, 86 000 -> 50 000 relocations at each start (BENCHMARKS.md). Only for
/// a static build: in a dynamic one it would link a second FoundationEssentials beside the shared one.
let foundationEssentialsFirst: [String] = Context.environment["STOCKADE_STATIC_STDLIB_DIR"].map { directory in
    [directory + "/libFoundationEssentials.a"]
} ?? []

let package = Package(
    name: "Stockade",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "stockade", targets: ["stockade"]),
        .executable(name: "stockade-probe", targets: ["stockade-probe"]),
        // The spawn helper `stockade` executes next to itself (falls back to forking one when absent).
        .executable(name: "stockade-spawn", targets: ["stockade-spawn"]),
        // `stockade serve` execs it: the one-shot CLI does not link the HTTP stack.
        .executable(name: "stockade-server", targets: ["stockade-server"]),
        // For the benchmark package in Benchmarks/ (not used by the root targets).
        .library(name: "StockadeAudit", targets: ["StockadeAudit"]),
        .library(name: "StockadeAuditSQLite", targets: ["StockadeAuditSQLite"]),
        .library(name: "StockadeAuditPostgres", targets: ["StockadeAuditPostgres"]),
        .library(name: "StockadePatches", targets: ["StockadePatches"]),
        .library(name: "StockadeBundles", targets: ["StockadeBundles"]),
        .library(name: "StockadePolicy", targets: ["StockadePolicy"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.0.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.81.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
    ],
    targets: [
        // C: the child path from clone3 to execve, and syscall shims glibc lacks.
        .target(name: "CStockade", cSettings: [.unsafeFlags(["-Wall", "-Wextra", "-Werror"])]),
        .systemLibrary(name: "CSeccomp", pkgConfig: "libseccomp", providers: [.apt(["libseccomp-dev"])]),
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        // libarchive (libarchive-dev's headers), loaded with dlopen on first use rather than linked: linking
        // it loaded it and ten libraries of its own at every start of the binary (lazy.c says more).
        .target(name: "CArchive", cSettings: [.unsafeFlags(["-Wall", "-Wextra", "-Werror"])]),

        // Pure values: profiles, limits, seccomp policy model, strict JSON.
        .target(name: "StockadePolicy", swiftSettings: lean),
        // cgroup v1 and v2 drivers behind one protocol.
        .target(name: "StockadeCgroups", dependencies: [
            .product(name: "SystemPackage", package: "swift-system"),
        ], swiftSettings: lean),
        // Namespaces, mounts, seccomp compilation, capabilities, spawn, exit watching.
        .target(name: "StockadeLinux", dependencies: [
            "CStockade", "CSeccomp", "StockadePolicy", "StockadeCgroups",
            .product(name: "SystemPackage", package: "swift-system"),
        ], swiftSettings: lean),
        // Manifests, bounded hostile-tree reader, run directory.
        .target(name: "StockadeBundles", dependencies: [
            "CStockade", "StockadePolicy",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "SystemPackage", package: "swift-system"),
        ], swiftSettings: lean),
        // Diff parser, path guard, applier.
        .target(name: "StockadePatches", dependencies: [
            "CStockade", "CZlib", "StockadePolicy",
            .product(name: "SystemPackage", package: "swift-system"),
            // Insecure.SHA1 for git blob ids in `index` lines (git apply requires them on binary patches).
            .product(name: "Crypto", package: "swift-crypto"),
        ], swiftSettings: lean),
        // The audit ledger: hash chain, run and review state machines, redaction; storage behind AuditBackend.
        .target(name: "StockadeAudit", dependencies: [
            "StockadePolicy",
            .product(name: "Crypto", package: "swift-crypto"),
        ], swiftSettings: lean),
        // The ledger's SQLite backend: connection, schema and migrations, SQL.
        .target(name: "StockadeAuditSQLite", dependencies: ["CSQLite", "StockadeAudit", "StockadePolicy"], swiftSettings: lean),
        // The ledger's PostgreSQL backend (many hosts, one store): PostgresNIO bridged to the synchronous seam.
        // Not linked by the one-shot `stockade` CLI (it would bring SwiftNIO in).
        .target(name: "StockadeAuditPostgres", dependencies: [
            "StockadeAudit", "StockadePolicy", "StockadeTokens",
            .product(name: "PostgresNIO", package: "postgres-nio"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        // OCI image layouts read as hostile input: verified blobs, layers unpacked into a content-addressed cache.
        .target(name: "StockadeStore", dependencies: [
            "StockadeAudit", "StockadeAuditSQLite", "StockadeTokens",
        ], swiftSettings: lean),
        // StoreOpener's PostgreSQL side, registered at start by stockade-server: not linked by the one-shot
        // `stockade`, which starts faster without SwiftNIO and PostgresNIO (Benchmarks/BENCHMARKS.md).
        .target(name: "StockadeStorePostgres", dependencies: [
            "StockadeStore", "StockadeAudit", "StockadeAuditPostgres", "StockadeTokens",
        ], swiftSettings: strict),
        .target(name: "StockadeImages", dependencies: [
            "CStockade", "CArchive", "StockadePolicy", "StockadeBundles",
            .product(name: "Crypto", package: "swift-crypto"),
        ], swiftSettings: lean),
        // One run's lifecycle, concurrency, review queue.
        // `stockade verify`: the control catalogue, the probes' verdicts and their reports; a client
        // of the run service like any other.
        .target(name: "StockadeVerify", dependencies: [
            "StockadeSupervisor", "StockadeLinux", "StockadePolicy", "StockadeAudit",
        ], swiftSettings: lean),
        .target(name: "StockadeSupervisor", dependencies: [
            "StockadePolicy", "StockadeCgroups", "StockadeLinux", "StockadeBundles",
            "StockadePatches", "StockadeAudit", "StockadeAuditSQLite", "StockadeImages", "StockadeStore", "StockadeTokens",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "SystemPackage", package: "swift-system"),
            .product(name: "Crypto", package: "swift-crypto"),
        ], swiftSettings: lean),
        // API bearer tokens in the state directory's audit database (table `tokens`): CLI and server share it.
        .target(name: "StockadeTokens", dependencies: [
            "CSQLite", "StockadePolicy",
            .product(name: "Crypto", package: "swift-crypto"),
        ], swiftSettings: lean),
        // `stockade serve`: the HTTP API over a Unix socket (Hummingbird on SwiftNIO).
        .target(name: "StockadeServer", dependencies: [
            "StockadeSupervisor", "StockadeAudit", "StockadePolicy", "StockadeTokens", "StockadeVerify", "StockadeStore", "StockadeAuditPostgres",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "HummingbirdTLS", package: "hummingbird"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        // The CLI as a client of `stockade serve` (`--host`): a small bounded HTTP/1.1 client over a
        // Unix socket, loopback TCP, or TLS (a TLS client registered by the binary: ServiceTLS).
        .target(name: "StockadeClient", dependencies: ["StockadePolicy"], swiftSettings: lean),
        // https:// for the client (TLSBridge: SwiftNIO and swift-nio-ssl relay it), registered by
        // stockade-server; not linked by the one-shot `stockade`, which hands such commands to it.
        .target(name: "StockadeClientTLS", dependencies: [
            "StockadeClient",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOTLS", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
        ], swiftSettings: strict),
        .executableTarget(name: "stockade-server", dependencies: ["stockade-spawn",
            "StockadeServer", "StockadeSupervisor", "StockadeVerify", "StockadeStore", "StockadeStorePostgres", "StockadeAudit", "StockadeCLI",
            "StockadeClientTLS",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strict),
        // stockade-spawn: every build of stockade builds its spawn helper from the same sources.
        // Every command of the command line; `stockade` runs them without the PostgreSQL client,
        // `stockade-server cli` with it.
        .target(name: "StockadeCLI", dependencies: [
            "StockadeSupervisor", "StockadeVerify", "StockadeImages", "StockadeTokens", "StockadeAudit", "StockadeClient", "StockadeStore", "StockadeLinux",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: lean),
        .executableTarget(name: "stockade", dependencies: ["stockade-spawn", "StockadeCLI"],
        swiftSettings: lean,
        // Linked with the toolchain's lld rather than the default gold: the same binary starts faster
        // (`stockade --version` 6.6 -> 5.4 ms, one-shot `run` 20.3 -> 18.9 ms, alternated rounds;
        // Benchmarks/BENCHMARKS.md). The one-shot CLI's start is part of every `run`.
        // --no-export-dynamic undoes the -export-dynamic of the toolchain's static-stdlib-args.lnk: the
        // executable's 36 000 Swift symbols in its dynamic table cost every start a linear scan, the
        // Swift runtime's dladdr (its Backtrace.cpp static initializer); nothing resolves them at run time.
        linkerSettings: [.unsafeFlags(["-use-ld=lld", "-Xlinker", "--no-export-dynamic"] + foundationEssentialsFirst)]),
        // The diff parser and path guard under libFuzzer (Fuzz/run-diff-fuzz.sh); a corpus replayer otherwise.
        .executableTarget(name: "stockade-diff-fuzz", dependencies: ["StockadePatches"], swiftSettings: strict),
        // The strict JSON parser and the bundle manifest decoder under libFuzzer (Fuzz/run-manifest-fuzz.sh); a replayer otherwise.
        .executableTarget(name: "stockade-manifest-fuzz", dependencies: ["StockadeBundles", "StockadePolicy"], swiftSettings: strict),
        // Enforcement probes: small static C programs run inside the sandbox.
        .executableTarget(name: "stockade-spawn", dependencies: ["CStockade"],
                          cSettings: [.unsafeFlags(["-Wall", "-Wextra", "-Werror"])],
                          linkerSettings: [.unsafeFlags(["-static-executable"])]),
        .executableTarget(name: "stockade-probe",
                          cSettings: [.unsafeFlags(["-Wall", "-Werror"])],
                          linkerSettings: [.unsafeFlags(["-static-executable"])]),

        .testTarget(name: "StockadePolicyTests", dependencies: ["StockadePolicy"], swiftSettings: strict),
        // Helpers the test targets share (paths, temporary directories, files with a mode).
        .target(name: "StockadeTestSupport", dependencies: [
            "StockadeAudit", "StockadeAuditPostgres", .product(name: "PostgresNIO", package: "postgres-nio"),
        ], path: "Tests/StockadeTestSupport", swiftSettings: strict),
        .testTarget(name: "StockadeSupervisorTests", dependencies: ["StockadeSupervisor", "StockadePolicy", "StockadeBundles", "StockadeImages",
                                                                    "StockadeLinux", "StockadeTestSupport"], swiftSettings: strict),
        .testTarget(name: "StockadeBundlesTests", dependencies: ["StockadeBundles", "StockadePolicy", "StockadeTestSupport"], swiftSettings: strict),
        .testTarget(name: "StockadeCgroupsTests", dependencies: ["StockadeCgroups"], swiftSettings: strict),
        .testTarget(name: "StockadeLinuxTests", dependencies: ["StockadeLinux", "StockadePolicy", "StockadeTestSupport"], swiftSettings: strict),
        .testTarget(name: "StockadeAuditTests", dependencies: ["StockadeAudit", "StockadeAuditSQLite", "StockadeAuditPostgres", "StockadePolicy", "CSQLite",
                                                          "StockadeTestSupport", .product(name: "PostgresNIO", package: "postgres-nio")], swiftSettings: strict),
        .testTarget(name: "StockadeWorkspaceTests", dependencies: ["StockadeBundles", "StockadeTestSupport"], swiftSettings: strict),
        .testTarget(name: "StockadePatchesTests", dependencies: ["StockadePatches", "StockadeTestSupport"], swiftSettings: strict),
        .testTarget(name: "StockadeImagesTests", dependencies: ["StockadeImages", "StockadePolicy", "CStockade"], swiftSettings: strict),
        // Runs the real `stockade` binary with the probes and its spawn helper: all built first.
        .testTarget(name: "StockadeEndToEndTests", dependencies: ["StockadeSupervisor", "StockadeVerify", "StockadeTestSupport", "StockadeCLI", "stockade", "stockade-probe",
                                                                  "stockade-spawn", "stockade-server"], swiftSettings: strict),
        // Runs the real `stockade-server` over a Unix socket and the `stockade` CLI: both built first.
        .testTarget(name: "StockadeServerTests", dependencies: ["StockadePolicy", "StockadeTokens", "StockadeAudit", "StockadeTestSupport", "StockadeServer", "stockade", "stockade-server",
                                                                .product(name: "Crypto", package: "swift-crypto")], swiftSettings: strict),
    ],
    swiftLanguageModes: [.v6]
)
