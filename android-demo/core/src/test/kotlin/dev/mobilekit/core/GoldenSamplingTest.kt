package dev.mobilekit.core

import org.json.JSONObject
import org.junit.Assert.assertEquals
import org.junit.Test
import org.junit.runner.RunWith
import org.junit.runners.Parameterized

@RunWith(Parameterized::class)
class GoldenSamplingTest(@Suppress("unused") private val name: String, private val case: JSONObject) {
    companion object {
        @JvmStatic
        @Parameterized.Parameters(name = "{0}")
        fun cases() = Goldens.rows("sampling.json") { if (it.has("rng")) "rng" else it.getString("name") }
    }

    @Test
    fun drawsTheSameTokens() {
        if (case.has("rng")) {
            val rng = case.getJSONObject("rng")
            val generator = SplitMix64(java.lang.Long.parseUnsignedLong(rng.getString("seed")))
            assertEquals(rng.getJSONArray("next").strings(), List(4) { java.lang.Long.toUnsignedString(generator.next()) })
            return
        }
        val logitsJson = case.getJSONArray("logits")
        val logits = FloatArray(logitsJson.length()) { logitsJson.getDouble(it).toFloat() }
        val sampler = Sampler(SamplingConfig(case.getDouble("temperature"), case.getDouble("top_p"),
            java.lang.Long.parseUnsignedLong(case.getString("seed"))))
        val expected = case.getJSONArray("tokens").ints()
        assertEquals(expected, List(expected.size) { sampler.sample(logits) })
    }
}
