package dev.mobilekit.core

/**
 * A conversation with one bundle: formats the whole history with the bundle's template, streams
 * the reply through the stop-string filter, and remembers the reply for the next turn. The
 * runtime is passed in as `generate` so this stays free of Android and of any runtime.
 */
class ChatSession(val manifest: Manifest, private val systemPrompt: String? = null) {
    private val formatter = PromptFormatter(manifest)
    private val history = mutableListOf<ChatMessage>()

    val messages: List<ChatMessage> get() = history.toList()

    fun clear() = history.clear()

    /** The prompt for `userText` after the history so far (what `send` passes to `generate`). */
    fun promptFor(userText: String): String =
        formatter.format(listOfNotNull(systemPrompt?.let { ChatMessage("system", it) }) + history + ChatMessage("user", userText))

    /**
     * `generate(prompt, onPiece)` runs the model, calling `onPiece` with each decoded piece and
     * stopping when it returns false. `onText` receives only text safe to show.
     */
    fun <S> send(userText: String, generate: (String, (String) -> Boolean) -> S, onText: (String) -> Unit): S {
        val prompt = promptFor(userText)
        val filter = StopStringFilter(manifest.stopStrings)
        val reply = StringBuilder()
        val result = generate(prompt) { piece ->
            val shown = filter.feed(piece)
            if (shown.isNotEmpty()) {
                reply.append(shown)
                onText(shown)
            }
            !filter.stopped
        }
        if (!filter.stopped) filter.finish().takeIf { it.isNotEmpty() }?.let { reply.append(it); onText(it) }
        history += ChatMessage("user", userText)
        history += ChatMessage("assistant", reply.toString())
        return result
    }
}
