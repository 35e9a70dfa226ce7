package dev.mobilekit.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertTrue
import org.junit.Test

class StopStringFilterTest {
    @Test
    fun holdsAPossibleStopThenReleasesIt() {
        val filter = StopStringFilter(listOf("<|im_end|>"))
        assertEquals("Hi ", filter.feed("Hi <|im"))
        assertEquals("<|imx", filter.feed("x"))
        assertFalse(filter.stopped)
    }

    @Test
    fun stopsAtTheStopString() {
        val filter = StopStringFilter(listOf("</s>"))
        assertEquals("done", filter.feed("done</s> trailing"))
        assertTrue(filter.stopped)
        assertEquals("", filter.finish())
    }
}
