#if canImport(CoreML) && arch(arm64)
import CoreML
import Foundation

/// A mobilekit Core ML bundle's model.mlpackage, run the way swift-transformers'
/// LanguageModelWithStatefulKVCache runs it: inputs `inputIds` [1, T] Int32 and `causalMask`
/// [1, 1, T, past+T] Float16 (additive: 0 attends, -65504 masks), output `logits` [1, T, vocab],
/// and every state the manifest's `io.layer_states` lists in the model's MLState from
/// `makeState()`: `keyCache`/`valueCache` for attention layers, `convState` for LFM2-style conv
/// layers (the graph zeroes it itself when a call starts at position 0). The cache position is
/// read from the mask's shape, so each call appends T tokens at `past`.
@available(iOS 18.0, macOS 15.0, *)
public final class CoreMLStatefulModel {
    public let manifest: Manifest
    private let model: MLModel
    private var state: MLState
    public private(set) var past = 0

    /// Compiles the bundle's .mlpackage on the device (once; the compiled .mlmodelc is cached next
    /// to the app's caches) and loads it for the CPU and Neural Engine.
    public init(bundle: URL, manifest: Manifest, computeUnits: MLComputeUnits = .cpuAndNeuralEngine) async throws {
        precondition(manifest.target == "coreml", "CoreMLStatefulModel needs a --target coreml bundle")
        self.manifest = manifest
        let package = bundle.appendingPathComponent(manifest.primaryModelFile)
        let compiled = try await CoreMLStatefulModel.compiledModel(for: package)
        let configuration = MLModelConfiguration()
        configuration.computeUnits = computeUnits
        model = try MLModel(contentsOf: compiled, configuration: configuration)
        state = model.makeState()
    }

    private static func compiledModel(for package: URL) async throws -> URL {
        let caches = try FileManager.default.url(for: .cachesDirectory, in: .userDomainMask, appropriateFor: nil, create: true)
        let attributes = try? FileManager.default.attributesOfItem(atPath: package.appendingPathComponent("Manifest.json").path)
        let stamp = (attributes?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
        let cached = caches.appendingPathComponent("\(package.deletingLastPathComponent().lastPathComponent)-\(Int(stamp)).mlmodelc")
        if FileManager.default.fileExists(atPath: cached.path) { return cached }
        let temporary = try await MLModel.compileModel(at: package)
        try? FileManager.default.removeItem(at: cached)
        try FileManager.default.moveItem(at: temporary, to: cached)
        return cached
    }

    /// Forgets the conversation: a fresh state (zeroed caches) and position 0.
    public func reset() {
        state = model.makeState()
        past = 0
    }

    /// Runs `tokens` at positions past..<past+T and returns the logits of the last position.
    public func predict(_ tokens: [Int]) async throws -> [Float] {
        let t = tokens.count
        guard t > 0, past + t <= manifest.maxSeqLen else {
            throw ManifestError("the conversation needs \(past + t) tokens; this bundle's context is \(manifest.maxSeqLen). Start a new chat.")
        }
        let ids = try MLMultiArray(shape: [1, NSNumber(value: t)], dataType: .int32)
        for (i, token) in tokens.enumerated() { ids[[0, NSNumber(value: i)]] = NSNumber(value: token) }
        let total = past + t
        let mask = try MLMultiArray(shape: [1, 1, NSNumber(value: t), NSNumber(value: total)], dataType: .float16)
        mask.withUnsafeMutableBufferPointer(ofType: Float16.self) { pointer, strides in
            for row in 0..<t {
                for column in 0..<total {
                    // row `row` is position past+row: it sees every column up to itself
                    pointer[row * strides[2] + column * strides[3]] = column <= past + row ? 0 : -65504
                }
            }
        }
        let inputs = try MLDictionaryFeatureProvider(dictionary: ["inputIds": ids, "causalMask": mask])
        let output = try await model.prediction(from: inputs, using: state)
        past = total
        guard let logits = output.featureValue(for: "logits")?.multiArrayValue else {
            throw ManifestError("the model returned no 'logits'; re-export the bundle with mobilekit")
        }
        let vocab = logits.shape[2].intValue
        let strides = logits.strides.map(\.intValue)
        let last = (t - 1) * strides[1]
        switch logits.dataType {
        case .float16:
            return logits.withUnsafeBufferPointer(ofType: Float16.self) { p in (0..<vocab).map { Float(p[last + $0 * strides[2]]) } }
        default:
            return logits.withUnsafeBufferPointer(ofType: Float.self) { p in (0..<vocab).map { p[last + $0 * strides[2]] } }
        }
    }
}
#endif
