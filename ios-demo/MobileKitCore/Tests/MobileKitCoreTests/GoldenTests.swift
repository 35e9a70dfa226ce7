import Foundation
import XCTest

@testable import MobileKitCore

/// The golden vectors written by `mobilekit goldens` (mobilekit/goldens.py), checked here exactly
/// as android-demo's JUnit tests check them: Python, Kotlin and Swift must agree.
final class GoldenTests: XCTestCase {
    private func cases(_ file: String) throws -> [[String: Any]] {
        let folder = try XCTUnwrap(Bundle.module.resourceURL).appendingPathComponent("Goldens")
        let url = folder.appendingPathComponent(file)
        XCTAssertTrue(FileManager.default.fileExists(atPath: url.path),
                      "Goldens/\(file) is missing: run `mobilekit goldens` (see ios-demo/README.md)")
        let root = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        XCTAssertEqual(root["goldens_version"] as? Int, 1)
        return try XCTUnwrap(root["cases"] as? [[String: Any]])
    }

    func testPromptsRenderLikeTransformers() throws {
        let all = try cases("prompts.json")
        XCTAssertGreaterThan(all.count, 40)
        for c in all {
            let name = c["name"] as! String
            let render = {
                try JinjaTemplate(c["template"] as! String).render([
                    "messages": c["messages"],
                    "add_generation_prompt": c["add_generation_prompt"],
                    "bos_token": c["bos_token"] is NSNull ? nil : c["bos_token"],
                    "eos_token": c["eos_token"] is NSNull ? nil : c["eos_token"],
                ])
            }
            if c["unsupported"] as? Bool == true {
                XCTAssertThrowsError(try render(), name) { error in
                    guard case JinjaError.unsupported = error else { return XCTFail("\(name): \(error) is not .unsupported") }
                }
            } else if let fragment = c["error_contains"] as? String {
                XCTAssertThrowsError(try render(), name) { error in
                    guard case JinjaError.template(let message) = error else { return XCTFail("\(name): \(error)") }
                    XCTAssertTrue(message.contains(fragment), "\(name): \(message)")
                }
            } else {
                XCTAssertEqual(try render(), c["expected"] as? String, name)
            }
        }
    }

    func testSamplingDrawsTheSameTokens() throws {
        for c in try cases("sampling.json") {
            if let rng = c["rng"] as? [String: Any] {
                var generator = SplitMix64(seed: UInt64(rng["seed"] as! String)!)
                XCTAssertEqual((0..<4).map { _ in String(generator.next()) }, rng["next"] as? [String])
                continue
            }
            let logits = (c["logits"] as! [NSNumber]).map { Float(truncating: $0) }
            var sampler = Sampler(SamplingConfig(temperature: (c["temperature"] as! NSNumber).doubleValue,
                                                 topP: (c["top_p"] as! NSNumber).doubleValue,
                                                 seed: UInt64(c["seed"] as! String)!))
            let expected = (c["tokens"] as! [NSNumber]).map(\.intValue)
            XCTAssertEqual(expected.map { _ in sampler.sample(logits) }, expected, c["name"] as! String)
        }
    }

    func testStopStringsCutLikePython() throws {
        for c in try cases("stops.json") {
            let filter = StopStringFilter(c["stops"] as! [String])
            var emitted: [String] = []
            for piece in c["pieces"] as! [String] {
                emitted.append(filter.feed(piece))
                if filter.stopped { break }
            }
            if !filter.stopped { emitted.append(filter.finish()) }
            XCTAssertEqual(emitted, c["emitted"] as? [String], c["name"] as! String)
            XCTAssertEqual(filter.stopped, c["stopped"] as? Bool, c["name"] as! String)
        }
    }

    func testManifestsParseOrFailClearly() throws {
        for c in try cases("manifests.json") {
            let name = c["name"] as! String
            let data = try JSONSerialization.data(withJSONObject: c["manifest"]!)
            guard c["valid"] as? Bool == true else {
                XCTAssertThrowsError(try Manifest.parse(data), name) { error in
                    XCTAssertTrue("\(error)".contains(c["error_contains"] as! String), "\(name): \(error)")
                }
                continue
            }
            let manifest = try Manifest.parse(data)
            let expected = c["expected"] as! [String: Any]
            XCTAssertEqual(manifest.target, expected["target"] as? String, name)
            XCTAssertEqual(manifest.modelFiles, expected["model_files"] as? [String], name)
            XCTAssertEqual(manifest.maxSeqLen, expected["max_seq_len"] as? Int, name)
            XCTAssertEqual(manifest.vocabSize, expected["vocab_size"] as? Int, name)
            XCTAssertEqual(manifest.bosId, expected["bos_id"] as? Int, name)
            XCTAssertEqual(manifest.eosIds, expected["eos_ids"] as? [Int], name)
            XCTAssertEqual(manifest.addBos, expected["add_bos"] as? Bool, name)
            XCTAssertEqual(manifest.bosToken, expected["bos_token"] as? String, name)
            XCTAssertEqual(manifest.eosToken, expected["eos_token"] as? String, name)
            XCTAssertEqual(manifest.stopStrings, expected["stop_strings"] as? [String], name)
            XCTAssertEqual(manifest.chatTemplate != nil, expected["has_chat_template"] as? Bool, name)
            XCTAssertEqual(manifest.validationPassed, expected["validation_passed"] as? Bool, name)
            if manifest.target == "coreml" { XCTAssertEqual(manifest.coreMLCacheShape?.count, 5, name) }
            _ = try PromptFormatter(manifest: manifest).format([ChatMessage(role: "user", content: "Hi")])
        }
    }
}
