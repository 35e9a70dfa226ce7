package dev.mobilekit.demo.engine

import dev.mobilekit.core.Manifest
import dev.mobilekit.core.SamplingConfig
import java.io.File

/** Timings of one reply, for the tokens/s line under the chat. */
data class GenerationStats(val promptTokens: Int, val generatedTokens: Int, val prefillMs: Long, val decodeMs: Long) {
    val decodeTokensPerSecond: Double get() = if (decodeMs > 0) (generatedTokens - 1).coerceAtLeast(0) * 1000.0 / decodeMs else 0.0
}

/**
 * One runtime behind the chat screen. `generate` blocks (call it off the UI thread) and streams
 * decoded text to `onText`; `onText` returns false to stop. `stop()` may be called from any thread.
 * No Android classes here: these sources type-check on Linux against stubs of the runtimes.
 */
interface ChatEngine : AutoCloseable {
    val runtimeName: String

    /** Whether this engine applies SamplingConfig itself (ExecuTorch's runner samples internally). */
    val usesCoreSampler: Boolean

    fun generate(prompt: String, maxNewTokens: Int, sampling: SamplingConfig, onText: (String) -> Boolean): GenerationStats

    fun stop()
}

/** The engine for a bundle's target, from its manifest (never from the file name). */
fun openEngine(bundle: File, manifest: Manifest): ChatEngine = when (manifest.target) {
    "executorch" -> ExecuTorchEngine(bundle, manifest)
    "onnx" -> OnnxEngine(bundle, manifest)
    else -> throw IllegalArgumentException(
        "a ${manifest.target} bundle cannot run on Android; export with --target executorch or --target onnx")
}
