import Foundation

/// Reads and checks a bundle folder: the manifest parses and every file it lists is present with
/// its recorded size (sha256 is left to `mobilekit validate` on a computer).
public func loadBundle(at folder: URL) throws -> Manifest {
    let manifestURL = folder.appendingPathComponent(Manifest.fileName)
    guard let data = try? Data(contentsOf: manifestURL) else {
        throw ManifestError("\(folder.path) is not a mobilekit bundle: \(Manifest.fileName) is missing. Copy the whole bundle folder.")
    }
    let manifest = try Manifest.parse(data)
    let sizes = ((try? JSONSerialization.jsonObject(with: data)) as? [String: Any])?["files"] as? [String: Any] ?? [:]
    var problems: [String] = []
    for name in manifest.files.sorted() {
        let path = folder.appendingPathComponent(name).path
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path) else {
            problems.append("\(name) is missing")
            continue
        }
        let expected = Manifest.int((sizes[name] as? [String: Any])?["bytes"]) ?? -1
        let actual = (attributes[.size] as? NSNumber)?.intValue ?? -1
        if expected >= 0 && actual != expected { problems.append("\(name) has \(actual) bytes, the manifest says \(expected)") }
    }
    if !problems.isEmpty {
        throw ManifestError("bundle \(folder.path) is incomplete: \(problems.joined(separator: "; ")). Copy it again.")
    }
    return manifest
}
