// swift-tools-version: 5.9
// An iOS 18 SwiftUI app as a Swift package (Xcode 16 opens MobileKitChat.swiftpm as an app
// project; Swift Playgrounds runs it too). Versions pinned; ExecuTorch's SwiftPM products come
// from its release branch swiftpm-<version>, which must match the executorch that exported the .pte.
import AppleProductTypes
import PackageDescription

let package = Package(
    name: "MobileKitChat",
    platforms: [.iOS("18.0")],
    products: [
        .iOSApplication(
            name: "MobileKitChat",
            targets: ["AppModule"],
            bundleIdentifier: "dev.mobilekit.chat",
            displayVersion: "0.1.0",
            bundleVersion: "1",
            appIcon: .placeholder(icon: .chatMessage),
            accentColor: .presetColor(.blue),
            supportedDeviceFamilies: [.pad, .phone],
            supportedInterfaceOrientations: [.portrait, .landscapeRight, .landscapeLeft],
            appCategory: .developerTools
        ),
    ],
    dependencies: [
        .package(path: "../MobileKitCore"),
        .package(url: "https://github.com/huggingface/swift-transformers", exact: "1.0.0"),
        .package(url: "https://github.com/pytorch/executorch", branch: "swiftpm-1.5.1"),
    ],
    targets: [
        .executableTarget(
            name: "AppModule",
            dependencies: [
                .product(name: "MobileKitCore", package: "MobileKitCore"),
                .product(name: "Transformers", package: "swift-transformers"),
                .product(name: "executorch_llm", package: "executorch"),
                .product(name: "backend_xnnpack", package: "executorch"),
                .product(name: "kernels_llm", package: "executorch"),
                .product(name: "kernels_optimized", package: "executorch"),
                .product(name: "kernels_quantized", package: "executorch"),
            ],
            path: "Sources",
            linkerSettings: [.unsafeFlags(["-all_load"])] // ExecuTorch registers kernels in static initializers
        ),
    ]
)
