import Testing
@testable import StockadeSupervisor

/// `nodeLabels` and `retries`: parsed with errors naming the key, and refused where no node places runs.
@Suite("batch request keys for the shared run queue")
struct BatchRequestNodeKeysTests {
    private func parse(_ text: String) throws(BatchRequest.Failure) -> BatchRequest {
        try BatchRequest.parse(Array(text.utf8))
    }

    @Test("nodeLabels and retries are read; without them a request asks for neither")
    func parsed() throws {
        let request = try parse(#"{"command":["/bin/true"],"nodeLabels":{"gpu":"yes","zone":"eu-1"},"retries":2}"#)
        #expect(request.nodeLabels == ["gpu": "yes", "zone": "eu-1"] && request.retries == 2)
        let plain = try parse(#"{"command":["/bin/true"]}"#)
        #expect(plain.nodeLabels.isEmpty && plain.retries == 0 && plain.withoutNodesProblem("here") == nil)
        #expect(try parse(#"{"command":["/bin/true"],"retries":0}"#).withoutNodesProblem("here") == nil)
    }

    @Test("bad values are refused naming the key", arguments: [
        (#"{"command":["x"],"nodeLabels":["gpu"]}"#, "nodeLabels: "),
        (#"{"command":["x"],"nodeLabels":{"gpu":1}}"#, "nodeLabels.gpu: "),
        (#"{"command":["x"],"nodeLabels":{"gpu":"a b"}}"#, "nodeLabels.gpu: "),
        (#"{"command":["x"],"nodeLabels":{"":"x"}}"#, "nodeLabels.: "),
        (#"{"command":["x"],"nodeLabels":{"-k":"x"}}"#, "nodeLabels.-k: "),
        (#"{"command":["x"],"retries":11}"#, "retries: "),
        (#"{"command":["x"],"retries":-1}"#, "retries: "),
        (#"{"command":["x"],"retries":1.5}"#, "retries: "),
        (#"{"command":["x"],"retries":"1"}"#, "retries: "),
    ])
    func refused(_ text: String, _ prefix: String) {
        do {
            _ = try parse(text)
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.description.hasPrefix(prefix), "\(error.description)")
        }
    }

    @Test("where no node places runs, nodeLabels and retries are refused, not ignored")
    func refusedWithoutNodes() throws {
        let labels = try parse(#"{"id":"t","command":["/bin/true"],"nodeLabels":{"gpu":"yes"}}"#).withoutNodesProblem("stockade batch")
        #expect(labels?.description.hasPrefix("nodeLabels: ") == true && labels?.description.contains("stockade batch") == true && labels?.id == "t")
        let retries = try parse(#"{"command":["/bin/true"],"retries":1}"#).withoutNodesProblem("stockade batch")
        #expect(retries?.description.hasPrefix("retries: ") == true)
    }
}
