import SwiftUI
import UniformTypeIdentifiers

struct ChatView: View {
    @StateObject private var model = ChatModel()
    @State private var input = ""
    @State private var picking = false

    var body: some View {
        NavigationStack {
            VStack(spacing: 8) {
                Text(model.status).font(.footnote).foregroundStyle(.secondary).frame(maxWidth: .infinity, alignment: .leading)
                ScrollViewReader { proxy in
                    ScrollView {
                        LazyVStack(spacing: 6) {
                            ForEach(model.bubbles) { bubble in
                                Text(bubble.text.isEmpty ? "…" : bubble.text)
                                    .padding(10)
                                    .frame(maxWidth: .infinity, alignment: bubble.fromUser ? .trailing : .leading)
                                    .background(bubble.fromUser ? Color.blue.opacity(0.15) : Color.gray.opacity(0.12),
                                                in: RoundedRectangle(cornerRadius: 12))
                                    .id(bubble.id)
                            }
                        }
                    }
                    .onChange(of: model.bubbles.last?.text) { _, _ in
                        if let last = model.bubbles.last { proxy.scrollTo(last.id, anchor: .bottom) }
                    }
                }
                HStack {
                    TextField("Message", text: $input, axis: .vertical).textFieldStyle(.roundedBorder)
                    if model.generating {
                        Button("Stop") { model.stop() }.buttonStyle(.borderedProminent).tint(.red)
                    } else {
                        Button("Send") {
                            model.send(input.trimmingCharacters(in: .whitespacesAndNewlines))
                            input = ""
                        }
                        .buttonStyle(.borderedProminent)
                        .disabled(input.trimmingCharacters(in: .whitespaces).isEmpty)
                    }
                }
            }
            .padding()
            .navigationTitle("mobilekit chat")
            .toolbar {
                Button("Open bundle") { picking = true }
            }
            .fileImporter(isPresented: $picking, allowedContentTypes: [.folder]) { result in
                if case .success(let folder) = result { model.load(folder) }
            }
        }
    }
}
