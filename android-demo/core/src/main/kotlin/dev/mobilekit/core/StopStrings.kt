package dev.mobilekit.core

/**
 * Cuts streamed text at the first stop string. Text is held back only while it could still be
 * the start of a stop string, so the UI never shows a partial "<|im_" that turns out to end
 * the reply. Same behaviour as mobilekit/goldens.py `filter_stops`.
 */
class StopStringFilter(stops: List<String>) {
    private val stops = stops.filter { it.isNotEmpty() }
    private val buffer = StringBuilder()

    var stopped = false
        private set

    /** Feeds one decoded piece; returns the text that is now safe to show. */
    fun feed(piece: String): String {
        check(!stopped) { "feed() after a stop string was found" }
        buffer.append(piece)
        val text = buffer.toString()
        val cut = stops.map { text.indexOf(it) }.filter { it >= 0 }.minOrNull()
        if (cut != null) {
            stopped = true
            buffer.setLength(0)
            return text.substring(0, cut)
        }
        val hold = stops.maxOfOrNull { stop -> (stop.length - 1 downTo 1).firstOrNull { text.endsWith(stop.substring(0, it)) } ?: 0 } ?: 0
        buffer.delete(0, text.length - hold)
        return text.substring(0, text.length - hold)
    }

    /** End of generation: whatever was held back can no longer become a stop string. */
    fun finish(): String = buffer.toString().also { buffer.setLength(0) }
}
