package dev.mobilekit.demo.engine

import ai.djl.huggingface.tokenizers.HuggingFaceTokenizer
import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OnnxTensorLike
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import dev.mobilekit.core.Manifest
import dev.mobilekit.core.OnnxCache
import dev.mobilekit.core.Sampler
import dev.mobilekit.core.SamplingConfig
import java.io.File
import java.nio.FloatBuffer
import java.nio.LongBuffer

/**
 * Plain ONNX Runtime with the past/present loop the manifest describes (io.layer_states: KV
 * caches and conv states alike, each state fed back by name): ONNX
 * Runtime GenAI has no Android package on Maven Central, so this drives model.onnx directly,
 * tokenizes with tokenizer.json through DJL's Hugging Face tokenizers, and samples with
 * dev.mobilekit.core.Sampler (greedy, temperature, top-p, seeded).
 */
class OnnxEngine(private val bundle: File, private val manifest: Manifest) : ChatEngine {
    override val runtimeName = "ONNX Runtime"
    override val usesCoreSampler = true

    private val cache: OnnxCache = manifest.onnxCache ?: error("an ONNX manifest without io.layer_states")
    private val env = OrtEnvironment.getEnvironment()
    private val session: OrtSession = OrtSession.SessionOptions().use { options ->
        options.setIntraOpNumThreads(4)
        env.createSession(File(bundle, manifest.primaryModelFile).absolutePath, options)
    }
    private val tokenizer = HuggingFaceTokenizer.newInstance(File(bundle, "tokenizer.json").toPath())
    private val hasPositionIds = "position_ids" in cache.inputNames
    @Volatile private var stopRequested = false

    override fun generate(prompt: String, maxNewTokens: Int, sampling: SamplingConfig, onText: (String) -> Boolean): GenerationStats {
        stopRequested = false
        // The prompt is already formatted (special tokens included as text), as transformers'
        // apply_chat_template tokenizes it: no special tokens added here.
        val promptIds = tokenizer.encode(prompt, false, false).ids
        require(promptIds.isNotEmpty()) { "the prompt tokenized to nothing" }
        require(promptIds.size < manifest.maxSeqLen) {
            "the conversation is ${promptIds.size} tokens; this bundle's context is ${manifest.maxSeqLen}. Start a new chat."
        }
        val sampler = Sampler(sampling)
        val generated = ArrayList<Long>()
        var shown = ""
        var past: OrtSession.Result? = null
        var pastLength = 0
        var input = promptIds
        val started = System.nanoTime()
        var firstTokenAt = started
        try {
            while (true) {
                val result = step(input, pastLength, past)
                past?.close()
                past = result
                pastLength += input.size
                val token = sampler.sample(lastLogits(result, input.size)).toLong()
                if (generated.isEmpty()) firstTokenAt = System.nanoTime()
                if (token.toInt() in manifest.eosIds) break
                generated += token
                // decode the whole reply so far: a character split over tokens appears once complete
                val text = tokenizer.decode(generated.toLongArray(), true)
                if (!text.endsWith("\uFFFD") && text.length > shown.length) {
                    val keepGoing = onText(text.substring(shown.length))
                    shown = text
                    if (!keepGoing) break
                }
                if (stopRequested || generated.size >= maxNewTokens || pastLength + 1 >= manifest.maxSeqLen) break
                input = longArrayOf(token)
            }
        } finally {
            past?.close()
        }
        val ended = System.nanoTime()
        return GenerationStats(promptIds.size, generated.size, (firstTokenAt - started) / 1_000_000, (ended - firstTokenAt) / 1_000_000)
    }

    /** One forward pass: `ids` at positions pastLength.., with the previous step's present tensors as past. */
    private fun step(ids: LongArray, pastLength: Int, past: OrtSession.Result?): OrtSession.Result {
        val total = pastLength + ids.size
        val created = ArrayList<OnnxTensor>()
        fun longs(values: LongArray) = OnnxTensor.createTensor(env, LongBuffer.wrap(values), longArrayOf(1, values.size.toLong())).also { created += it }
        val inputs = HashMap<String, OnnxTensorLike>()
        inputs["input_ids"] = longs(ids)
        inputs["attention_mask"] = longs(LongArray(total) { 1L })
        if (hasPositionIds) inputs["position_ids"] = longs(LongArray(ids.size) { (pastLength + it).toLong() })
        for (state in cache.states) {
            inputs[state.past] = if (past == null) {
                val size = state.initialShape.fold(1L) { product, dim -> product * dim }.toInt()
                OnnxTensor.createTensor(env, FloatBuffer.allocate(size), state.initialShape).also { created += it }
            } else {
                past.get(state.present).get() as OnnxTensor
            }
        }
        try {
            return session.run(inputs)
        } finally {
            created.forEach { it.close() }
        }
    }

    /** logits [1, T, vocab]: the row of the last position. */
    private fun lastLogits(result: OrtSession.Result, length: Int): FloatArray {
        val buffer = (result.get("logits").get() as OnnxTensor).floatBuffer
        val vocab = buffer.remaining() / length
        val row = FloatArray(vocab)
        buffer.position((length - 1) * vocab)
        buffer.get(row)
        return row
    }

    override fun stop() {
        stopRequested = true
    }

    override fun close() {
        tokenizer.close()
        session.close()
    }
}
