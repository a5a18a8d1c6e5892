import StockadeTokens
import Testing

/// The token's text forms, written without full Foundation (the one-shot `stockade` does not link it).
@Suite("token text: scopes, new tokens")
struct TokenTextTests {
    @Test("a scope list: blanks around each scope are not part of it; a line break, an unknown or an empty scope is refused naming it")
    func scopeList() throws {
        #expect(try TokenScope.parseList(" run:read ,\tadmin, run:read") == [.runRead, .admin])
        #expect(try TokenScope.parseList("review:submit") == [.reviewSubmit])
        for bad in ["run:read\n", "run:reed", "run:read,,admin", "", " "] {
            #expect(throws: TokenError.self, "\(bad.debugDescription)") { try TokenScope.parseList(bad) }
        }
        do {
            _ = try TokenScope.parseList("run:read, nope ")
            Issue.record("an unknown scope was accepted")
        } catch {
            #expect(error.description.contains("\"nope\"") && error.description.contains("run:read"), "\(error)")
        }
    }

    @Test("a new token is stk_ and 32 random bytes in unpadded base64url (43 characters of A-Z a-z 0-9 - _), never the same twice")
    func generated() {
        let alphabet = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        var seen = Set<String>()
        var characters = Set<Character>()
        for _ in 0..<2000 {
            let token = TokenStore.generate()
            #expect(token.hasPrefix(TokenStore.prefix))
            let body = token.dropFirst(TokenStore.prefix.count)
            #expect(body.count == 43 && body.allSatisfy(alphabet.contains), "\(token)")
            characters.formUnion(body)
            seen.insert(token)
        }
        #expect(seen.count == 2000)
        // Over 86 000 random characters every one of the 64 turns up, - and _ (from + and /) included.
        #expect(characters == alphabet)
    }
}
