import Foundation

/// SplitMix64, bit-identical to mobilekit/goldens.py and android-demo's Sampler.kt.
public struct SplitMix64 {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A double in [0, 1) from the top 53 bits.
    public mutating func uniform() -> Double { Double(next() >> 11) * (1.0 / Double(UInt64(1) << 53)) }
}

public struct SamplingConfig {
    public let temperature: Double
    public let topP: Double
    public let seed: UInt64

    public init(temperature: Double = 0, topP: Double = 1, seed: UInt64 = 0) {
        precondition(temperature >= 0, "temperature must be >= 0")
        precondition((0...1).contains(topP), "top_p must be in [0, 1]")
        self.temperature = temperature
        self.topP = topP
        self.seed = seed
    }
}

/// Greedy, temperature and top-p sampling, exactly as specified in mobilekit/goldens.py.
public struct Sampler {
    private let config: SamplingConfig
    private var rng: SplitMix64

    public init(_ config: SamplingConfig) {
        self.config = config
        rng = SplitMix64(seed: config.seed)
    }

    public mutating func sample(_ logits: [Float]) -> Int {
        precondition(!logits.isEmpty, "no logits to sample from")
        if config.temperature <= 0 { return Sampler.argmax(logits) }
        let m = Double(logits.max()!)
        let weights = logits.map { exp((Double($0) - m) / config.temperature) }
        var total = 0.0
        for w in weights { total += w }
        let probs = weights.map { $0 / total }
        let order = probs.indices.sorted { probs[$0] != probs[$1] ? probs[$0] > probs[$1] : $0 < $1 }
        var kept = 0
        var running = 0.0
        for i in order {
            kept += 1
            running += probs[i]
            if running >= config.topP { break }
        }
        let u = rng.uniform() * running
        var cumulative = 0.0
        for k in 0..<kept {
            cumulative += probs[order[k]]
            if u < cumulative { return order[k] }
        }
        return order[kept - 1]
    }

    public static func argmax(_ logits: [Float]) -> Int {
        var best = 0
        for i in 1..<logits.count where logits[i] > logits[best] { best = i }
        return best
    }
}
