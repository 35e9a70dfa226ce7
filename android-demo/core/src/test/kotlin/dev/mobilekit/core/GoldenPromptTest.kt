package dev.mobilekit.core

import org.json.JSONObject
import org.junit.Assert.assertEquals
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Test
import org.junit.runner.RunWith
import org.junit.runners.Parameterized

/** Every recipe's chat template, rendered by transformers in Python, rendered again here. */
@RunWith(Parameterized::class)
class GoldenPromptTest(@Suppress("unused") private val name: String, private val case: JSONObject) {
    companion object {
        @JvmStatic
        @Parameterized.Parameters(name = "{0}")
        fun cases() = Goldens.rows("prompts.json")
    }

    private fun render(): String {
        val messages = jsonToKotlin(case.getJSONArray("messages"))
        return JinjaTemplate(case.getString("template")).render(
            mapOf(
                "messages" to messages,
                "add_generation_prompt" to case.getBoolean("add_generation_prompt"),
                "bos_token" to jsonToKotlin(case.opt("bos_token")),
                "eos_token" to jsonToKotlin(case.opt("eos_token")),
            )
        )
    }

    @Test
    fun rendersLikeTransformers() {
        when {
            case.optBoolean("unsupported") -> assertThrows(JinjaUnsupported::class.java) { render() }
            case.has("error_contains") -> {
                val error = assertThrows(JinjaTemplateError::class.java) { render() }
                assertTrue("${error.message}", error.message!!.contains(case.getString("error_contains")))
            }
            else -> assertEquals(case.getString("expected"), render())
        }
    }
}
