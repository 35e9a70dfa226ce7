package dev.mobilekit.core

import org.json.JSONObject
import org.junit.Assert.assertEquals
import org.junit.Test
import org.junit.runner.RunWith
import org.junit.runners.Parameterized

@RunWith(Parameterized::class)
class GoldenStopTest(@Suppress("unused") private val name: String, private val case: JSONObject) {
    companion object {
        @JvmStatic
        @Parameterized.Parameters(name = "{0}")
        fun cases() = Goldens.rows("stops.json")
    }

    @Test
    fun emitsTheSameText() {
        val filter = StopStringFilter(case.getJSONArray("stops").strings())
        val emitted = mutableListOf<String>()
        for (piece in case.getJSONArray("pieces").strings()) {
            emitted += filter.feed(piece)
            if (filter.stopped) break
        }
        if (!filter.stopped) emitted += filter.finish()
        assertEquals(case.getJSONArray("emitted").strings(), emitted)
        assertEquals(case.getBoolean("stopped"), filter.stopped)
    }
}
