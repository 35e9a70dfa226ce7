package dev.mobilekit.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertNotEquals
import org.junit.Assert.assertThrows
import org.junit.Test

class SamplerTest {
    private val logits = floatArrayOf(0.5f, 2.0f, 1.9f, -1.0f, 2.0f)

    @Test
    fun greedyTakesTheFirstMaximum() {
        assertEquals(1, Sampler(SamplingConfig(temperature = 0.0)).sample(logits))
    }

    @Test
    fun tinyTopPKeepsOnlyTheMostLikely() {
        val sampler = Sampler(SamplingConfig(temperature = 1.0, topP = 0.0, seed = 7))
        repeat(20) { assertEquals(1, sampler.sample(logits)) }
    }

    @Test
    fun aSeedReproducesAndAnotherSeedDiffers() {
        fun draws(seed: Long) = Sampler(SamplingConfig(1.5, 1.0, seed)).let { s -> List(40) { s.sample(logits) } }
        assertEquals(draws(42), draws(42))
        assertNotEquals(draws(42), draws(43))
    }

    @Test
    fun badSettingsAreRefused() {
        assertThrows(IllegalArgumentException::class.java) { SamplingConfig(temperature = -1.0) }
        assertThrows(IllegalArgumentException::class.java) { SamplingConfig(topP = 1.5) }
    }
}
