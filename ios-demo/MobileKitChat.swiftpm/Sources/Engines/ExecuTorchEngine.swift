import ExecuTorchLLM
import Foundation
import MobileKitCore

/// ExecuTorch's own LLM runner (TextRunner, the TextLLMRunner mobilekit validates the .pte with)
/// on the bundle's model.pte and tokenizer.json. The runner tokenizes, samples (temperature only:
/// no top-p, no seed) and stops on the .pte's get_eos_ids.
final class ExecuTorchEngine: ChatEngine, @unchecked Sendable {
    let runtimeName = "ExecuTorch TextRunner"
    private let manifest: Manifest
    private let runner: TextRunner

    init(folder: URL, manifest: Manifest) throws {
        self.manifest = manifest
        runner = TextRunner(modelPath: folder.appendingPathComponent(manifest.primaryModelFile).path,
                            tokenizerPath: folder.appendingPathComponent("tokenizer.json").path)
        try runner.load()
    }

    func generate(prompt: String, maxNewTokens: Int, sampling: SamplingConfig,
                  onText: @escaping (String) -> Bool) async throws -> GenerationStats {
        runner.reset() // the whole conversation is in the prompt
        var pieces = 0
        let started = Date()
        var firstToken: Date?
        try runner.generate(prompt, Config {
            $0.echoEnabled = false
            $0.temperature = sampling.temperature
            $0.sequenceLength = manifest.maxSeqLen
            $0.maximumNewTokens = maxNewTokens
            $0.bosCount = 0 // the formatted prompt already holds what the template puts there
        }) { [runner] token in
            if firstToken == nil { firstToken = Date() }
            pieces += 1
            if !onText(token) { runner.stop() }
        }
        let ended = Date()
        let first = firstToken ?? ended
        return GenerationStats(promptTokens: 0, generatedTokens: pieces,
                               prefillMs: Int(first.timeIntervalSince(started) * 1000),
                               decodeMs: Int(ended.timeIntervalSince(first) * 1000))
    }

    func stop() { runner.stop() }
}
