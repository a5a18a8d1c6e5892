import Foundation
import Testing
@testable import StockadeCLI

/// The one-shot `stockade` links no PostgreSQL client (it starts faster without SwiftNIO and
/// PostgresNIO); a command whose store is a PostgreSQL URL runs in `stockade-server cli`, which has it.
@Suite("a PostgreSQL store's commands are handed to stockade-server", .serialized)
struct PostgresRouteTests {
    @Test("--store and $STOCKADE_STORE name a PostgreSQL store before any --; a worker's words after -- and other stores do not")
    func routeIsTakenOnlyForAPostgresStore() {
        let none: [String: String] = [:]
        #expect(PostgresRoute.named(["audit", "runs", "--store", "postgres://u@h/db"], environment: none))
        #expect(PostgresRoute.named(["token", "list", "--store=postgresql:///db?host=/run/pg"], environment: none))
        #expect(PostgresRoute.named(["run", "--", "/bin/true"], environment: ["STOCKADE_STORE": "postgres://u@h/db"]))
        // The flag wins over the variable, as StoreOpener.resolve has it.
        #expect(!PostgresRoute.named(["audit", "runs", "--store", "sqlite:///var/lib/x.sqlite"], environment: ["STOCKADE_STORE": "postgres://u@h/db"]))
        #expect(PostgresRoute.named(["audit", "runs", "--store", "postgres://u@h/db"], environment: ["STOCKADE_STORE": "sqlite:///x"]))
        #expect(!PostgresRoute.named(["run", "--", "/bin/echo", "--store", "postgres://u@h/db"], environment: none))
        #expect(!PostgresRoute.named(["run", "--", "/bin/true"], environment: none))
        #expect(!PostgresRoute.named(["run", "--", "/bin/true"], environment: ["STOCKADE_STORE": ""]))
        #expect(!PostgresRoute.named(["audit", "runs", "--store"], environment: none))
        // Commands that open no store, and clients of a service, stay here whatever the store.
        let shared = ["STOCKADE_STORE": "postgres://u@h/db"]
        for words in [["--version"], ["--help"], ["profile", "check", "p.json"], ["receipt", "verify", "r.json"], ["image", "list"],
                      ["run", "--host", "unix:///s", "--", "/bin/true"], ["--host=unix:///s", "audit", "runs"],
                      ["review", "list", "--host=https://h:8443"]] {
            #expect(!PostgresRoute.named(words, environment: shared), "\(words)")
        }
        #expect(PostgresRoute.named(["token", "list"], environment: shared))
    }

    @Test("without stockade-server beside it, stockade refuses a PostgreSQL store naming stockade-server (run: exit 125, others: 1) and runs on SQLite as before")
    func withoutTheServerBinary() throws {
        let parent = URL(fileURLWithPath: Harness.binDirectory).resolvingSymlinksInPath().deletingLastPathComponent().path
        let directory = parent + "/stk-route-test-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let binary = directory + "/stockade"
        if link(Harness.stockade, binary) != 0 { try FileManager.default.copyItem(atPath: Harness.stockade, toPath: binary) }
        let state = try Harness().stateDirectory
        // The address is never reached: the command stops before any connection.
        let store = "postgres://nobody@127.0.0.1:1/none"
        let run = try Harness.exec(binary, ["run", "--state-dir", state, "--", "/bin/true"], environment: ["STOCKADE_STORE": store])
        #expect(run.status == 125, "\(run.stderr)")
        #expect(run.stderr.contains("stockade-server") && run.stderr.contains(directory), "\(run.stderr)")
        let runs = try Harness.exec(binary, ["audit", "runs", "--store", store])
        #expect(runs.status == 1, "\(runs.stderr)")
        // A bad global option is still a usage error of this process (exit 2), and a command that
        // opens no store runs here.
        let usage = try Harness.exec(binary, ["--log-format", "yaml", "audit", "runs"], environment: ["STOCKADE_STORE": store])
        #expect(usage.status == 2, "\(usage.stderr)")
        let version = try Harness.exec(binary, ["--version"], environment: ["STOCKADE_STORE": store])
        #expect(version.status == 0, "\(version.stderr)")
        let serveCli = try Harness.exec(binary, ["serve", "cli", "run", "--", "/bin/true"])
        #expect(serveCli.status == 2 && serveCli.stderr.contains("'cli'"), "\(serveCli.stderr)")
        #expect(runs.stderr.contains("a PostgreSQL store's commands run in stockade-server"), "\(runs.stderr)")
        // The positive control: the same binary, with the same directory, runs on the state directory's SQLite file.
        let sqlite = try Harness.exec(binary, ["run", "--json", "--state-dir", state, "--", "/bin/true"])
        #expect(sqlite.status == 0, "\(sqlite.stderr)")
    }

    @Test("stockade-server cli runs a stockade command itself, with the same output")
    func serverRunsTheCommandLine() throws {
        let server = Harness.binDirectory + "/stockade-server"
        let version = try Harness.exec(server, ["cli", "--version"])
        let own = try Harness.exec(Harness.stockade, ["--version"])
        #expect(version.status == 0 && version.stdout == own.stdout, "\(version.stdout) \(version.stderr)")
        let state = try Harness().stateDirectory
        let run = try Harness.exec(server, ["cli", "run", "--json", "--state-dir", state, "--", "/bin/sh", "-c", "echo via-server"])
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stdout.contains("via-server"), "\(run.stdout)")
    }
}
