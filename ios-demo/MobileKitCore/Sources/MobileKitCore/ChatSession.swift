import Foundation

/// A conversation with one bundle: formats the whole history with the bundle's template, streams
/// the reply through the stop-string filter, and keeps it for the next turn (as ChatSession.kt).
public final class ChatSession {
    public let manifest: Manifest
    private let formatter: PromptFormatter
    private let systemPrompt: String?
    public private(set) var messages: [ChatMessage] = []

    public init(manifest: Manifest, systemPrompt: String? = nil) throws {
        self.manifest = manifest
        self.systemPrompt = systemPrompt
        formatter = try PromptFormatter(manifest: manifest)
    }

    public func clear() { messages = [] }

    public func prompt(for userText: String) throws -> String {
        let system = systemPrompt.map { [ChatMessage(role: "system", content: $0)] } ?? []
        return try formatter.format(system + messages + [ChatMessage(role: "user", content: userText)])
    }

    /// `generate(prompt, onPiece)` runs the model, calling `onPiece` with each decoded piece and
    /// stopping when it returns false; `onText` receives only text safe to show.
    public func send<S>(_ userText: String,
                        generate: (String, @escaping (String) -> Bool) async throws -> S,
                        onText: @escaping (String) -> Void) async throws -> S {
        let prompt = try prompt(for: userText)
        let filter = StopStringFilter(manifest.stopStrings)
        var reply = ""
        let result = try await generate(prompt) { piece in
            let shown = filter.feed(piece)
            if !shown.isEmpty {
                reply += shown
                onText(shown)
            }
            return !filter.stopped
        }
        if !filter.stopped {
            let rest = filter.finish()
            if !rest.isEmpty { reply += rest; onText(rest) }
        }
        messages += [ChatMessage(role: "user", content: userText), ChatMessage(role: "assistant", content: reply)]
        return result
    }
}
