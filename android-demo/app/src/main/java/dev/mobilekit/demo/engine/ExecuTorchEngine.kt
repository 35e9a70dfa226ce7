package dev.mobilekit.demo.engine

import dev.mobilekit.core.Manifest
import dev.mobilekit.core.SamplingConfig
import java.io.File
import org.json.JSONObject
import org.pytorch.executorch.extension.llm.LlmCallback
import org.pytorch.executorch.extension.llm.LlmModule

/**
 * ExecuTorch's own LLM runner (`LlmModule`, the TextLLMRunner that mobilekit validates the .pte
 * with) on the bundle's model.pte and tokenizer.json. The runner tokenizes, prefills, samples and
 * stops on the .pte's get_eos_ids; it samples with the temperature given at load time (no top-p,
 * no seed), so a change of temperature reloads the module.
 */
class ExecuTorchEngine(private val bundle: File, private val manifest: Manifest) : ChatEngine {
    override val runtimeName = "ExecuTorch LlmModule"
    override val usesCoreSampler = false

    private var module: LlmModule? = null
    private var loadedTemperature = Float.NaN

    private fun moduleFor(temperature: Float): LlmModule {
        module?.let { if (temperature == loadedTemperature) return it }
        module?.resetNative()
        val pte = File(bundle, manifest.primaryModelFile)
        val tokenizer = File(bundle, "tokenizer.json")
        return LlmModule(pte.absolutePath, tokenizer.absolutePath, temperature).also {
            it.load()
            module = it
            loadedTemperature = temperature
        }
    }

    override fun generate(prompt: String, maxNewTokens: Int, sampling: SamplingConfig, onText: (String) -> Boolean): GenerationStats {
        val llm = moduleFor(sampling.temperature.toFloat())
        var pieces = 0
        var reported: GenerationStats? = null
        val callback = object : LlmCallback {
            override fun onResult(result: String) {
                pieces++
                if (!onText(result) || pieces >= maxNewTokens) llm.stop()
            }

            override fun onStats(stats: String) {
                reported = parseStats(stats)
            }
        }
        llm.resetContext() // each reply starts from the whole formatted conversation
        // seqLen counts prompt + reply; the runner also stops at the .pte's own max context
        llm.generate(prompt, manifest.maxSeqLen, callback, false)
        return reported ?: GenerationStats(0, pieces, 0, 0)
    }

    /** The runner's stats JSON (extension/llm/runner/stats.h field names). */
    private fun parseStats(json: String): GenerationStats? = runCatching {
        val o = JSONObject(json)
        GenerationStats(
            promptTokens = o.getInt("prompt_tokens"),
            generatedTokens = o.getInt("generated_tokens"),
            prefillMs = o.getLong("prompt_eval_end_ms") - o.getLong("inference_start_ms"),
            decodeMs = o.getLong("inference_end_ms") - o.getLong("prompt_eval_end_ms"),
        )
    }.getOrNull()

    override fun stop() {
        module?.stop()
    }

    override fun close() {
        module?.resetNative()
        module = null
    }
}
