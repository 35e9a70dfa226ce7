package dev.mobilekit.core

/**
 * SplitMix64, bit-identical to mobilekit/goldens.py and ios-demo's MobileKitCore: one 64-bit
 * word of state with wrapping arithmetic, so a seed reproduces a reply on every platform.
 */
class SplitMix64(seed: Long) {
    private var state = seed

    fun next(): Long {
        state += -0x61c8864680b583ebL // 0x9E3779B97F4A7C15
        var z = state
        z = (z xor (z ushr 30)) * -0x40a7b892e31b1a47L // 0xBF58476D1CE4E5B9
        z = (z xor (z ushr 27)) * -0x6b2fb644ecceee15L // 0x94D049BB133111EB
        return z xor (z ushr 31)
    }

    /** A double in [0, 1) from the top 53 bits. */
    fun uniform(): Double = (next() ushr 11) * (1.0 / (1L shl 53))
}

/** Greedy, temperature and top-p sampling, exactly as specified in mobilekit/goldens.py. */
data class SamplingConfig(val temperature: Double = 0.0, val topP: Double = 1.0, val seed: Long = 0L) {
    init {
        require(temperature >= 0.0) { "temperature must be >= 0, not $temperature" }
        require(topP in 0.0..1.0) { "top_p must be in [0, 1], not $topP" }
    }
}

class Sampler(private val config: SamplingConfig) {
    private val rng = SplitMix64(config.seed)

    fun sample(logits: FloatArray): Int {
        require(logits.isNotEmpty()) { "no logits to sample from" }
        if (config.temperature <= 0.0) return argmax(logits)
        var max = Double.NEGATIVE_INFINITY
        for (x in logits) max = maxOf(max, x.toDouble())
        val weights = DoubleArray(logits.size) { Math.exp((logits[it].toDouble() - max) / config.temperature) }
        var total = 0.0
        for (w in weights) total += w
        val probs = DoubleArray(weights.size) { weights[it] / total }
        val order = probs.indices.sortedWith(compareByDescending<Int> { probs[it] }.thenBy { it })
        var kept = 0
        var running = 0.0
        for (i in order) {
            kept++
            running += probs[i]
            if (running >= config.topP) break
        }
        val u = rng.uniform() * running
        var cumulative = 0.0
        for (k in 0 until kept) {
            cumulative += probs[order[k]]
            if (u < cumulative) return order[k]
        }
        return order[kept - 1]
    }

    companion object {
        fun argmax(logits: FloatArray): Int {
            var best = 0
            for (i in 1 until logits.size) if (logits[i] > logits[best]) best = i
            return best
        }
    }
}
