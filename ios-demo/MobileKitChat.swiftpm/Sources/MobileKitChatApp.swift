import SwiftUI

@main
struct MobileKitChatApp: App {
    var body: some Scene {
        WindowGroup { ChatView() }
    }
}
