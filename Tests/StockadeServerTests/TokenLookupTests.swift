import Foundation
import StockadeTokens
import Testing

@Suite("token lookup")
struct TokenLookupTests {
    @Test("among 300 tokens each presented token finds its own record, through the hash's index; a token one character off, a revoked or an expired one is refused")
    func lookup() throws {
        let directory = "/tmp/stockade-token-lookup-\(getpid())"
        mkdir(directory, 0o700)
        defer { _ = try? FileManager.default.removeItem(atPath: directory) }
        let store = try TokenStore(stateDirectory: directory)
        let now: Int64 = 1_800_000_000
        var made: [(name: String, token: String)] = []
        for i in 0..<300 {
            let name = "engine-\(i)"
            made.append((name, try store.create(name: name, scopes: [.runRead], createdBy: "test", ttlSeconds: i == 7 ? 10 : 3600, now: now)))
        }
        for (name, token) in made {
            guard case .success(let record) = try store.authenticate(token, now: now + 1) else {
                Issue.record("\(name)'s token was refused")
                continue
            }
            #expect(record.name == name)
        }
        // The store's own row for a digest, and none for a digest nobody holds.
        #expect(try store.backend.tokenRow(sha256: TokenStore.sha256Hex(made[42].token))?.record.name == "engine-42")
        #expect(try store.backend.tokenRow(sha256: TokenStore.sha256Hex(made[42].token + "x")) == nil)
        var changed = Array(made[3].token)
        changed[changed.count - 1] = changed.last == "A" ? "B" : "A"
        #expect(try store.authenticate(String(changed), now: now + 1) == .failure(.unknown))
        #expect(try store.revoke(name: "engine-5", now: now + 2))
        #expect(try store.authenticate(made[5].token, now: now + 3) == .failure(.revoked))
        #expect(try store.authenticate(made[7].token, now: now + 11) == .failure(.expired))
        #expect(try store.authenticate(made[8].token, now: now + 11).map(\.name) == .success("engine-8"))
    }
}
