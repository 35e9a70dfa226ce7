package dev.mobilekit.core

data class ChatMessage(val role: String, val content: String)

/**
 * Turns a conversation into the model's prompt with the bundle's own chat template, as
 * transformers' apply_chat_template does (same template variables); the engines then tokenize the
 * text without adding special tokens, as apply_chat_template does. A bundle without a template (a
 * base model) gets the last user message as plain text.
 */
class PromptFormatter(private val manifest: Manifest) {
    private val template: JinjaTemplate? = manifest.chatTemplate?.let { JinjaTemplate(it) }

    fun format(messages: List<ChatMessage>, addGenerationPrompt: Boolean = true): String {
        // A base model (no template) continues plain text; BOS as its tokenizer would add it.
        val compiled = template ?: return (if (manifest.addBos) manifest.bosToken.orEmpty() else "") +
            messages.lastOrNull { it.role == "user" }?.content.orEmpty()
        return compiled.render(
            mapOf(
                "messages" to messages.map { mapOf("role" to it.role, "content" to it.content) },
                "add_generation_prompt" to addGenerationPrompt,
                "bos_token" to manifest.bosToken,
                "eos_token" to manifest.eosToken,
            )
        )
    }
}
