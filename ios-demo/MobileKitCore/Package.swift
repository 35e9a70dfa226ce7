// swift-tools-version:5.9
// The demo's pure logic (manifest, chat templates, stop strings, sampling) with no dependencies,
// tested with `swift test` against the golden vectors mobilekit writes. The Core ML model wrapper
// is compiled only where Core ML exists (#if canImport(CoreML)).
import PackageDescription

let package = Package(
    name: "MobileKitCore",
    platforms: [.iOS(.v18), .macOS(.v15)],
    products: [
        .library(name: "MobileKitCore", targets: ["MobileKitCore"]),
    ],
    targets: [
        .target(name: "MobileKitCore"),
        .testTarget(
            name: "MobileKitCoreTests",
            dependencies: ["MobileKitCore"],
            resources: [.copy("Goldens")]
        ),
    ]
)
