import Foundation

public struct ChatMessage: Equatable {
    public let role: String
    public let content: String

    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// Turns a conversation into the model's prompt with the bundle's own chat template, as
/// transformers' apply_chat_template does; engines tokenize it without adding special tokens.
/// A bundle without a template (a base model) gets the last user message as plain text.
public struct PromptFormatter {
    private let manifest: Manifest
    private let template: JinjaTemplate?

    public init(manifest: Manifest) throws {
        self.manifest = manifest
        template = try manifest.chatTemplate.map { try JinjaTemplate($0) }
    }

    public func format(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) throws -> String {
        guard let template = template else {
            let bos = manifest.addBos ? (manifest.bosToken ?? "") : ""
            return bos + (messages.last(where: { $0.role == "user" })?.content ?? "")
        }
        return try template.render([
            "messages": messages.map { ["role": $0.role, "content": $0.content] },
            "add_generation_prompt": addGenerationPrompt,
            "bos_token": manifest.bosToken,
            "eos_token": manifest.eosToken,
        ])
    }
}
