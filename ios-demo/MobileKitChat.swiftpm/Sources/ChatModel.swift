import Foundation
import MobileKitCore
import SwiftUI

struct Bubble: Identifiable {
    let id = UUID()
    let fromUser: Bool
    var text: String
}

/// Loads a bundle folder (picked in Files, or copied into the app's Documents) and generates off
/// the main actor; the view observes the published state.
@MainActor
final class ChatModel: ObservableObject {
    @Published var bubbles: [Bubble] = []
    @Published var status = "Pick a mobilekit bundle folder (Core ML or ExecuTorch)"
    @Published var generating = false

    private var engine: ChatEngine?
    private var session: ChatSession?
    private var task: Task<Void, Never>?

    func load(_ folder: URL) {
        task = Task {
            status = "Loading \(folder.lastPathComponent) …"
            let access = folder.startAccessingSecurityScopedResource()
            defer { if access { folder.stopAccessingSecurityScopedResource() } }
            do {
                let manifest = try loadBundle(at: folder)
                engine = try await openEngine(folder, manifest)
                session = try ChatSession(manifest: manifest)
                let checked = manifest.validationPassed.map { $0 ? "validated" : "FAILED validation" } ?? "not validated"
                status = "\(manifest.modelName) · \(manifest.target) · \(engine!.runtimeName) · \(checked)"
            } catch {
                status = "Cannot load the bundle: \(error)"
            }
        }
    }

    func send(_ text: String, sampling: SamplingConfig = SamplingConfig(), maxNewTokens: Int = 256) {
        guard let engine = engine, let session = session, !text.isEmpty else { return }
        bubbles.append(Bubble(fromUser: true, text: text))
        bubbles.append(Bubble(fromUser: false, text: ""))
        generating = true
        task = Task.detached(priority: .userInitiated) { [weak self] in
            do {
                let stats = try await session.send(text, generate: { prompt, onPiece in
                    try await engine.generate(prompt: prompt, maxNewTokens: maxNewTokens, sampling: sampling, onText: onPiece)
                }, onText: { shown in
                    Task { @MainActor in self?.appendToReply(shown) }
                })
                await MainActor.run {
                    self?.status = String(format: "prompt %d tok · prefill %d ms · %.1f tok/s · %@", stats.promptTokens,
                                          stats.prefillMs, stats.decodeTokensPerSecond, engine.runtimeName)
                }
            } catch {
                await MainActor.run { self?.status = "Generation failed: \(error)" }
            }
            await MainActor.run { self?.generating = false }
        }
    }

    private func appendToReply(_ text: String) {
        guard !bubbles.isEmpty else { return }
        bubbles[bubbles.count - 1].text += text
    }

    func stop() { engine?.stop() }
}
