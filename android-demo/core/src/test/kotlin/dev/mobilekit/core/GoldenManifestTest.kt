package dev.mobilekit.core

import org.json.JSONObject
import org.junit.Assert.assertEquals
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Test
import org.junit.runner.RunWith
import org.junit.runners.Parameterized

/** Real manifests from every target parse to the fields Python recorded; broken ones fail clearly. */
@RunWith(Parameterized::class)
class GoldenManifestTest(@Suppress("unused") private val name: String, private val case: JSONObject) {
    companion object {
        @JvmStatic
        @Parameterized.Parameters(name = "{0}")
        fun cases() = Goldens.rows("manifests.json")
    }

    @Test
    fun parsesOrRefuses() {
        val text = case.get("manifest").toString()
        if (!case.getBoolean("valid")) {
            val error = assertThrows(ManifestException::class.java) { Manifest.parse(text) }
            assertTrue("'${error.message}' lacks '${case.getString("error_contains")}'",
                error.message!!.contains(case.getString("error_contains")))
            return
        }
        val manifest = Manifest.parse(text)
        val expected = case.getJSONObject("expected")
        assertEquals(expected.getString("target"), manifest.target)
        assertEquals(expected.getJSONArray("model_files").strings(), manifest.modelFiles)
        assertEquals(expected.getInt("max_seq_len"), manifest.maxSeqLen)
        assertEquals(expected.getInt("vocab_size"), manifest.vocabSize)
        assertEquals(jsonToKotlin(expected.get("bos_id")), manifest.bosId)
        assertEquals(expected.getJSONArray("eos_ids").ints(), manifest.eosIds)
        assertEquals(expected.getBoolean("add_bos"), manifest.addBos)
        assertEquals(jsonToKotlin(expected.get("bos_token")), manifest.bosToken)
        assertEquals(jsonToKotlin(expected.get("eos_token")), manifest.eosToken)
        assertEquals(expected.getJSONArray("stop_strings").strings(), manifest.stopStrings)
        assertEquals(expected.getBoolean("has_chat_template"), manifest.chatTemplate != null)
        assertEquals(jsonToKotlin(expected.get("validation_passed")), manifest.validationPassed)
        if (manifest.target == "onnx") {
            val cache = manifest.onnxCache!!
            assertTrue(cache.states.isNotEmpty() && cache.states.all { it.past in cache.inputNames })
            // before the first token: KV pasts empty along their sequence axis (0), any other state zeros of its shape
            assertTrue(cache.states.all { state -> state.initialShape.all { it >= 0L } })
            assertTrue(cache.states.any { state -> state.initialShape.any { it == 0L } })
            // every state, of every kind (KV, LFM2's conv), as Python recorded it
            val states = expected.getJSONArray("onnx_states")
            assertEquals(states.length(), cache.states.size)
            for (i in 0 until states.length()) {
                val want = states.getJSONObject(i)
                assertEquals(want.getString("past"), cache.states[i].past)
                assertEquals(want.getString("present"), cache.states[i].present)
                val shape = want.getJSONArray("initial_shape")
                assertEquals(List(shape.length()) { shape.getLong(it) }, cache.states[i].initialShape.toList())
            }
        }
        // the prompt format comes from this manifest and renders
        PromptFormatter(manifest).format(listOf(ChatMessage("user", "Hi")))
    }
}
