package dev.mobilekit.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Test

class ManifestTest {
    private val base = """
        {"schema_version": 1, "target": "executorch", "model_name": "m", "model_files": ["model.pte"],
         "max_seq_len": 64, "vocab_size": 10, "bos_id": null, "eos_ids": [2], "add_bos": false,
         "chat_template": null, "stop_strings": ["</s>"], "validation": {"performed": false, "passed": null},
         "files": {"model.pte": {"sha256": "x", "bytes": 1}}}
    """.trimIndent()

    @Test
    fun aBaseModelWithoutTemplateGetsThePlainPrompt() {
        val manifest = Manifest.parse(base)
        assertEquals("model.pte", manifest.primaryModelFile)
        assertEquals("Tell me", PromptFormatter(manifest).format(listOf(ChatMessage("user", "Tell me"))))
    }

    @Test
    fun notJsonSaysSo() {
        val error = assertThrows(ManifestException::class.java) { Manifest.parse("not json") }
        assertTrue(error.message!!.contains("re-export"))
    }

    @Test
    fun aMlpackageFolderCountsAsListed() {
        val coreml = base.replace("\"executorch\"", "\"coreml\"").replace("[\"model.pte\"]", "[\"model.mlpackage\"]")
            .replace("\"model.pte\": {", "\"model.mlpackage/Manifest.json\": {")
        assertEquals("model.mlpackage", Manifest.parse(coreml).primaryModelFile)
    }
}
