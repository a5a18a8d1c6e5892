// swift-tools-version:6.2
// Benchmarks for Stockade: run on purpose with Benchmarks/run.sh, never part of the test suite.
import PackageDescription

let package = Package(
    name: "StockadeBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "Stockade", path: ".."),
    ],
    targets: [
        // Component figures (audit, path guard, diff parser, bundle reader) and the batch and
        // RSS drivers that run the release `stockade` binary. A plain executable with its own
        // statistics (warm-up, then median and p10/p90 over repetitions).
        .executableTarget(name: "stockade-bench", dependencies: [
            .product(name: "StockadeAudit", package: "Stockade"),
            .product(name: "StockadeAuditSQLite", package: "Stockade"),
            .product(name: "StockadeAuditPostgres", package: "Stockade"),
            .product(name: "StockadePatches", package: "Stockade"),
            .product(name: "StockadeBundles", package: "Stockade"),
            .product(name: "StockadePolicy", package: "Stockade"),
        ], swiftSettings: [.treatAllWarnings(as: .error)]),
    ],
    swiftLanguageModes: [.v6]
)
