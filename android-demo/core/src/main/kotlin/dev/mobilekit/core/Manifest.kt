package dev.mobilekit.core

import org.json.JSONArray
import org.json.JSONException
import org.json.JSONObject

/** A bundle that the app cannot use; the message says what is wrong and how to fix it. */
class ManifestException(message: String) : Exception(message)

/**
 * One state tensor an ONNX bundle carries between steps (a KV cache's keys or values, a conv
 * layer's state): fed as input [past], returned as output [present] and fed back next step,
 * and at the first step a zero tensor of [initialShape] (its declared shape, 0 on the
 * growing sequence axis).
 */
data class OnnxState(val past: String, val present: String, val initialShape: LongArray)

/** The ONNX bundle's state contract: every layer's states (manifest `io.layer_states`), any mix of kinds. */
data class OnnxCache(
    val states: List<OnnxState>,
    val inputNames: List<String>,
)

/**
 * What an app needs from a bundle's mobilekit.json, checked when parsed: everything per model
 * (context length, special ids, prompt format, stop strings) comes from here, never from code.
 */
data class Manifest(
    val target: String,
    val modelName: String,
    val modelFiles: List<String>,
    val maxSeqLen: Int,
    val vocabSize: Int,
    val bosId: Int?,
    val eosIds: List<Int>,
    val addBos: Boolean,
    val bosToken: String?,
    val eosToken: String?,
    val chatTemplate: String?,
    val stopStrings: List<String>,
    val validationPassed: Boolean?,
    val files: Set<String>,
    val onnxCache: OnnxCache?,
) {
    /** The model file the engine loads (model.pte, model.onnx or model.mlpackage). */
    val primaryModelFile: String get() = modelFiles.first()

    companion object {
        const val FILE_NAME = "mobilekit.json"
        const val SCHEMA_VERSION = 1
        val TARGETS = setOf("executorch", "onnx", "coreml")

        fun parse(text: String): Manifest {
            val json = try {
                JSONObject(text)
            } catch (e: JSONException) {
                throw ManifestException("$FILE_NAME is not a JSON object (${e.message}); re-export the bundle")
            }
            return try {
                fromJson(json)
            } catch (e: JSONException) {
                throw ManifestException("$FILE_NAME: ${e.message}; re-export the bundle with mobilekit")
            }
        }

        private fun fromJson(json: JSONObject): Manifest {
            val version = json.opt("schema_version")
            if (version != SCHEMA_VERSION) {
                throw ManifestException("$FILE_NAME has schema_version $version; this app reads $SCHEMA_VERSION. " +
                    "Re-export the bundle with a matching mobilekit, or update the app.")
            }
            val target = requireString(json, "target")
            if (target !in TARGETS) throw ManifestException("$FILE_NAME: unknown target '$target' (expected one of ${TARGETS.sorted()})")
            val maxSeqLen = requirePositive(json, "max_seq_len")
            val vocabSize = requirePositive(json, "vocab_size")
            val bosId = if (json.isNull("bos_id")) null else json.getInt("bos_id")
            if (bosId != null && bosId !in 0 until vocabSize) throw ManifestException("$FILE_NAME: bos_id $bosId is outside the vocabulary of $vocabSize")
            val eosIds = intList(json, "eos_ids")
            if (eosIds.isEmpty()) throw ManifestException("$FILE_NAME: eos_ids is empty, so generation could never stop; re-export the bundle")
            eosIds.firstOrNull { it !in 0 until vocabSize }?.let {
                throw ManifestException("$FILE_NAME: eos_ids has $it, outside the vocabulary of $vocabSize")
            }
            val files = json.optJSONObject("files")?.keys()?.asSequence()?.toSet() ?: emptySet()
            val modelFiles = stringList(json, "model_files")
            if (modelFiles.isEmpty()) throw ManifestException("$FILE_NAME: model_files is empty")
            modelFiles.firstOrNull { name -> name !in files && files.none { it.startsWith("$name/") } }?.let {
                throw ManifestException("$FILE_NAME: model file $it is not among the bundle's files")
            }
            val chatTemplate = if (json.isNull("chat_template")) null else json.getString("chat_template")
            // A template names these strings; rendering without them would silently drop them.
            val bosToken = optionalString(json, "bos_token", required = chatTemplate != null)
            val eosToken = optionalString(json, "eos_token", required = chatTemplate != null)
            val validation = json.optJSONObject("validation")
            return Manifest(
                target = target,
                modelName = json.optString("model_name", json.optString("recipe", "model")),
                modelFiles = modelFiles,
                maxSeqLen = maxSeqLen,
                vocabSize = vocabSize,
                bosId = bosId,
                eosIds = eosIds,
                addBos = json.optBoolean("add_bos", false),
                bosToken = bosToken,
                eosToken = eosToken,
                chatTemplate = chatTemplate,
                stopStrings = stringList(json, "stop_strings"),
                validationPassed = validation?.let { if (it.isNull("passed")) null else it.getBoolean("passed") },
                files = files,
                onnxCache = if (target == "onnx") onnxCache(json) else null,
            )
        }

        private fun onnxCache(json: JSONObject): OnnxCache {
            val io = json.getJSONObject("io")
            val inputs = io.getJSONArray("inputs")
            val shapes = (0 until inputs.length()).associate {
                val input = inputs.getJSONObject(it)
                input.getString("name") to input.getJSONArray("shape")
            }
            val layers = io.optJSONArray("layer_states")
                ?: throw ManifestException("$FILE_NAME has no io.layer_states; re-export the bundle with a current mobilekit")
            val states = ArrayList<OnnxState>()
            for (i in 0 until layers.length()) {
                val layer = layers.getJSONObject(i)
                val pasts = layer.getJSONArray("inputs")
                val presents = layer.getJSONArray("outputs")
                for (j in 0 until pasts.length()) {
                    val name = pasts.getString(j)
                    val shape = shapes[name]
                        ?: throw ManifestException("$FILE_NAME: io.layer_states names $name, which io.inputs lacks; re-export the bundle")
                    // a named (symbolic) dim is the past's sequence axis: empty before the first token
                    states += OnnxState(name, presents.getString(j), LongArray(shape.length()) { (shape.get(it) as? Int)?.toLong() ?: 0L })
                }
            }
            return OnnxCache(states = states, inputNames = shapes.keys.toList())
        }

        private fun requireString(json: JSONObject, key: String): String {
            if (!json.has(key) || json.isNull(key)) throw ManifestException("$FILE_NAME has no $key; re-export the bundle")
            return json.getString(key)
        }

        private fun optionalString(json: JSONObject, key: String, required: Boolean): String? {
            if (!json.has(key)) {
                if (required) throw ManifestException("$FILE_NAME has a chat_template but no $key; re-export the bundle with a current mobilekit")
                return null
            }
            return if (json.isNull(key)) null else json.getString(key)
        }

        private fun requirePositive(json: JSONObject, key: String): Int {
            if (!json.has(key)) throw ManifestException("$FILE_NAME has no $key; re-export the bundle")
            val value = json.get(key)
            if (value !is Int || value <= 0) throw ManifestException("$FILE_NAME: $key must be a positive integer, not $value")
            return value
        }

        private fun array(json: JSONObject, key: String): JSONArray =
            json.optJSONArray(key) ?: throw ManifestException("$FILE_NAME: $key must be a list; re-export the bundle")

        private fun intList(json: JSONObject, key: String): List<Int> {
            val array = array(json, key)
            return (0 until array.length()).map {
                array.get(it) as? Int ?: throw ManifestException("$FILE_NAME: $key must hold integers, not ${array.get(it)}")
            }
        }

        private fun stringList(json: JSONObject, key: String): List<String> {
            val array = array(json, key)
            return (0 until array.length()).map {
                array.get(it) as? String ?: throw ManifestException("$FILE_NAME: $key must hold strings, not ${array.get(it)}")
            }
        }
    }
}
