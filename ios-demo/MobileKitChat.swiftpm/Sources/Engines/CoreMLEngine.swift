import CoreML
import Foundation
import MobileKitCore
import Tokenizers

/// The bundle's model.mlpackage (compiled on the device), with its KV cache in an MLState, the
/// tokenizer from the bundle folder through swift-transformers, and MobileKitCore's sampler.
final class CoreMLEngine: ChatEngine, @unchecked Sendable {
    let runtimeName = "Core ML (stateful)"
    private let manifest: Manifest
    private let model: CoreMLStatefulModel
    private let tokenizer: Tokenizer
    private var stopRequested = false

    init(folder: URL, manifest: Manifest) async throws {
        self.manifest = manifest
        model = try await CoreMLStatefulModel(bundle: folder, manifest: manifest)
        tokenizer = try await AutoTokenizer.from(modelFolder: folder)
    }

    func generate(prompt: String, maxNewTokens: Int, sampling: SamplingConfig,
                  onText: @escaping (String) -> Bool) async throws -> GenerationStats {
        stopRequested = false
        // Formatted prompt, special tokens included as text: tokenized as apply_chat_template does.
        let promptIds = tokenizer.encode(text: prompt, addSpecialTokens: false)
        var sampler = Sampler(sampling)
        model.reset() // the whole conversation is in the prompt
        let started = Date()
        var logits = try await model.predict(promptIds)
        let firstToken = Date()
        var generated: [Int] = []
        var shown = ""
        while true {
            let token = sampler.sample(logits)
            if manifest.eosIds.contains(token) { break }
            generated.append(token)
            // decode the whole reply: a character split across tokens appears once complete
            let text = tokenizer.decode(tokens: generated, skipSpecialTokens: true)
            if !text.hasSuffix("\u{FFFD}") && text.count > shown.count {
                let keepGoing = onText(String(text.dropFirst(shown.count)))
                shown = text
                if !keepGoing { break }
            }
            if stopRequested || generated.count >= maxNewTokens || model.past + 1 > manifest.maxSeqLen { break }
            logits = try await model.predict([token])
        }
        let ended = Date()
        return GenerationStats(promptTokens: promptIds.count, generatedTokens: generated.count,
                               prefillMs: Int(firstToken.timeIntervalSince(started) * 1000),
                               decodeMs: Int(ended.timeIntervalSince(firstToken) * 1000))
    }

    func stop() { stopRequested = true }
}
