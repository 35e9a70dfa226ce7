import Foundation
import MobileKitCore

struct GenerationStats {
    let promptTokens: Int
    let generatedTokens: Int
    let prefillMs: Int
    let decodeMs: Int

    var decodeTokensPerSecond: Double {
        decodeMs > 0 ? Double(max(generatedTokens - 1, 0)) * 1000 / Double(decodeMs) : 0
    }
}

/// One runtime behind the chat screen: streams decoded text to `onText` (return false to stop).
protocol ChatEngine: AnyObject, Sendable {
    var runtimeName: String { get }
    func generate(prompt: String, maxNewTokens: Int, sampling: SamplingConfig,
                  onText: @escaping (String) -> Bool) async throws -> GenerationStats
    func stop()
}

/// The engine for a bundle's target, from its manifest.
func openEngine(_ folder: URL, _ manifest: Manifest) async throws -> ChatEngine {
    switch manifest.target {
    case "coreml": return try await CoreMLEngine(folder: folder, manifest: manifest)
    case "executorch": return try ExecuTorchEngine(folder: folder, manifest: manifest)
    default:
        throw ManifestError("a \(manifest.target) bundle does not run in this app; export with --target coreml or --target executorch")
    }
}
