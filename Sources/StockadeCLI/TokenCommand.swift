import ArgumentParser
import FoundationEssentials
import Glibc
import StockadeAudit
import StockadePolicy
import StockadeStore
import StockadeSupervisor
import StockadeTokens

/// `stockade token create|list|revoke`: the API's bearer tokens, in the state directory's audit
/// database. Run on the host (as the state directory's owner); the service reads the same table.
struct TokenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token",
        abstract: "Bearer tokens for the stockade serve API (the store keeps only their SHA-256).",
        subcommands: [Create.self, List.self, Revoke.self])

    /// The token table of the store `--store` names (else `$STOCKADE_STORE`, else the state
    /// directory's SQLite file, created if needed).
    static func open(_ state: StateOptions, store flag: String?) throws -> TokenStore {
        let url = try resolveStore(state, flag)
        do {
            switch url {
            case .sqlite(let path):
                let directory = state.resolved()
                if path == StoreOpener.defaultPath(stateDirectory: directory), mkdir(directory, 0o700) != 0 && errno != EEXIST {
                    Console.error("stockade token: cannot create the state directory \(directory): \(String(cString: strerror(errno)))")
                    throw ExitCode(1)
                }
                return TokenStore(backend: try SQLiteTokenBackend(path: path))
            case .postgres:
                let audit = try StoreOpener.openAudit(url, readOnly: false, environment: ProcessEnvironment.current(), supervisorPid: getpid(),
                                                      supervisorStart: ProcessIdentity.currentStartTime)
                return try StoreOpener.openTokens(url, audit: audit)
            }
        } catch let error as ExitCode {
            throw error
        } catch {
            Console.error("stockade token: \(error)")
            throw ExitCode(1)
        }
    }

    /// The user running the command, plus `(sudo from USER)`: recorded as a token's creator or revoker.
    static func actor() -> String {
        var actor = String(cString: getpwuid(geteuid())?.pointee.pw_name ?? strdup("uid \(geteuid())"))
        if let sudo = ProcessEnvironment.current()["SUDO_USER"], !sudo.isEmpty { actor += " (sudo from \(sudo))" }
        return actor
    }

    /// Appends `token.created` or `token.revoked` to the state directory's audit trail (never the
    /// token or its hash). The caller undoes or reports what the trail could not record.
    static func record(_ supervisor: Supervisor, kind: String, _ detail: [String: JSONValue]) -> String? {
        do {
            try supervisor.audit.record(runId: nil, kind: kind, detail: .object(detail))
            return nil
        } catch {
            return "\(error)"
        }
    }

    static func iso(_ seconds: Int64) -> String {
        // 2026-12-04T17:00:00Z: the audit clock's form to the second.
        String(AuditClock.format(seconds: Int(seconds), milliseconds: 0).prefix(19)) + "Z"
    }

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "create",
            abstract: "Create a token and print it once on stdout (it cannot be shown again).")
        @OptionGroup var state: StateOptions
        @OptionGroup var storeOptions: StoreOptions
        @Option(help: "A unique name: 1 to 64 of A-Z a-z 0-9 . _ - (recorded as the principal of each API call).") var name: String
        @Option(help: "Comma-separated scopes: run:read, run:write, review:read, review:submit, audit:read, admin.") var scope: String
        @Option(help: "Lifetime: seconds or 90s, 15m, 1h, 30d (at most 3650d).") var ttl: String = "30d"
        @Flag(help: "Print one JSON object (name, token, scopes, expiresAt) instead of the token alone.") var json = false

        func validate() throws {
            guard TokenStore.isValidName(name) else { throw ValidationError("--name: must be 1 to 64 of A-Z a-z 0-9 . _ -, found \"\(name)\"") }
            guard let seconds = DurationText.seconds(ttl), seconds > 0 else {
                throw ValidationError("--ttl: must be a positive duration such as 3600, 90s, 15m, 1h or 30d (at most 3650d), found \(ttl)")
            }
            _ = seconds
            do { _ = try TokenScope.parseList(scope) } catch { throw ValidationError(error.description) }
        }

        func run() throws {
            let store = try TokenCommand.open(state, store: storeOptions.store)
            // The trail first: a token whose creation cannot be recorded is not made.
            let supervisor = try openSupervisor(state, store: storeOptions.store, readOnly: false)
            let scopes: [TokenScope]
            do { scopes = try TokenScope.parseList(scope) } catch { throw ValidationError(error.description) }
            let ttlSeconds = DurationText.seconds(ttl) ?? 0
            let creator = TokenCommand.actor()
            let now = Int64(Date().timeIntervalSince1970)
            do {
                let token = try store.create(name: name, scopes: scopes, createdBy: creator, ttlSeconds: ttlSeconds, now: now)
                if let failure = TokenCommand.record(supervisor, kind: "token.created", [
                    "name": .string(name), "scopes": .array(scopes.map { .string($0.rawValue) }),
                    "expiresAt": .string(TokenCommand.iso(now + ttlSeconds)), "createdBy": .string(creator),
                ]) {
                    // Fail closed: an unrecorded token must not work. It is revoked and never printed.
                    let revoked = (try? store.revoke(name: name)) == true
                    Console.error("stockade token create: the audit trail could not record token.created (\(failure)); "
                        + (revoked ? "the token was revoked and not printed" : "revoking it failed too: run stockade token revoke \(name)"))
                    throw ExitCode(1)
                }
                if json {
                    Console.out(JSONValue.object([
                        "name": .string(name), "token": .string(token),
                        "scopes": .array(scopes.map { .string($0.rawValue) }), "expiresAt": .string(TokenCommand.iso(now + ttlSeconds)),
                    ]).serialized())
                } else {
                    Console.out(token)
                }
            } catch {
                Console.error("stockade token create: \(error)")
                throw ExitCode(1)
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "list",
            abstract: "Tokens with their scopes, creator, expiry and state (never the token or its hash).")
        @OptionGroup var state: StateOptions
        @OptionGroup var storeOptions: StoreOptions
        @Flag(help: "One JSON object a line, no header.") var json = false

        func run() throws {
            let store = try TokenCommand.open(state, store: storeOptions.store)
            let now = Int64(Date().timeIntervalSince1970)
            do {
                let records = try store.list()
                if !json { Console.out(["NAME", "SCOPES", "CREATED BY", "CREATED", "EXPIRES", "STATE"].joined(separator: "\t")) }
                for record in records {
                    if json {
                        Console.out(JSONValue.object([
                            "name": .string(record.name), "scopes": .array(record.scopes.map { .string($0) }),
                            "createdBy": .string(record.createdBy), "createdAt": .string(TokenCommand.iso(record.createdAt)),
                            "expiresAt": .string(TokenCommand.iso(record.expiresAt)),
                            "revokedAt": record.revokedAt.map { .string(TokenCommand.iso($0)) } ?? .null,
                            "state": .string(record.state(now: now)),
                        ]).serialized())
                    } else {
                        Console.out([record.name, record.scopes.joined(separator: ","), TerminalOutput.field(record.createdBy),
                                     TokenCommand.iso(record.createdAt), TokenCommand.iso(record.expiresAt), record.state(now: now)]
                            .joined(separator: "\t"))
                    }
                }
            } catch {
                Console.error("stockade token list: \(error)")
                throw ExitCode(1)
            }
        }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "revoke",
            abstract: "Revoke a token by name: the API refuses it (401) from the next request on.")
        @OptionGroup var state: StateOptions
        @OptionGroup var storeOptions: StoreOptions
        @Argument(help: "The token's name.") var name: String

        func run() throws {
            let store = try TokenCommand.open(state, store: storeOptions.store)
            let supervisor = try openSupervisor(state, store: storeOptions.store, readOnly: false)
            do {
                guard try store.revoke(name: name) else {
                    Console.error("stockade token revoke: no active token named \"\(name)\" (see stockade token list)")
                    throw ExitCode(1)
                }
                if let failure = TokenCommand.record(supervisor, kind: "token.revoked", ["name": .string(name), "revokedBy": .string(TokenCommand.actor())]) {
                    // The revocation holds (the safe side); only its record is missing.
                    Console.error("stockade token revoke: \(name) is revoked, but the audit trail could not record token.revoked: \(failure)")
                    throw ExitCode(1)
                }
                Console.out("revoked \(name)")
            } catch let error as TokenError {
                Console.error("stockade token revoke: \(error)")
                throw ExitCode(1)
            }
        }
    }
}
