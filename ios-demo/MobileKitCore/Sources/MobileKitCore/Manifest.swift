import Foundation

/// A bundle the app cannot use; the message says what is wrong and how to fix it.
public struct ManifestError: Error, CustomStringConvertible {
    public let description: String
    init(_ message: String) { description = message }
}

/// What an app needs from a bundle's mobilekit.json, checked when parsed (same checks as
/// android-demo/core's Manifest.kt): everything per model comes from here, never from code.
public struct Manifest {
    public static let fileName = "mobilekit.json"
    public static let schemaVersion = 1
    public static let targets: Set<String> = ["executorch", "onnx", "coreml"]

    public let target: String
    public let modelName: String
    public let modelFiles: [String]
    public let maxSeqLen: Int
    public let vocabSize: Int
    public let bosId: Int?
    public let eosIds: [Int]
    public let addBos: Bool
    public let bosToken: String?
    public let eosToken: String?
    public let chatTemplate: String?
    public let stopStrings: [String]
    public let validationPassed: Bool?
    public let files: Set<String>
    /// Core ML: layers, kv heads, max context and head dim of the keyCache/valueCache states.
    public let coreMLCacheShape: [Int]?

    public var primaryModelFile: String { modelFiles[0] }

    public static func parse(_ data: Data) throws -> Manifest {
        guard let object = try? JSONSerialization.jsonObject(with: data), let json = object as? [String: Any] else {
            throw ManifestError("\(fileName) is not a JSON object; re-export the bundle")
        }
        return try Manifest(json)
    }

    private init(_ json: [String: Any]) throws {
        let f = Manifest.fileName
        let version = json["schema_version"] as? Int
        guard version == Manifest.schemaVersion else {
            throw ManifestError("\(f) has schema_version \(version.map(String.init) ?? "none"); this app reads \(Manifest.schemaVersion). Re-export the bundle with a matching mobilekit, or update the app.")
        }
        guard let target = json["target"] as? String else { throw ManifestError("\(f) has no target; re-export the bundle") }
        guard Manifest.targets.contains(target) else {
            throw ManifestError("\(f): unknown target '\(target)' (expected one of \(Manifest.targets.sorted()))")
        }
        maxSeqLen = try Manifest.positive(json, "max_seq_len")
        vocabSize = try Manifest.positive(json, "vocab_size")
        bosId = try Manifest.optionalInt(json, "bos_id")
        if let bos = bosId, !(0..<vocabSize).contains(bos) { throw ManifestError("\(f): bos_id \(bos) is outside the vocabulary of \(vocabSize)") }
        eosIds = try Manifest.ints(json, "eos_ids")
        if eosIds.isEmpty { throw ManifestError("\(f): eos_ids is empty, so generation could never stop; re-export the bundle") }
        if let bad = eosIds.first(where: { !(0..<vocabSize).contains($0) }) {
            throw ManifestError("\(f): eos_ids has \(bad), outside the vocabulary of \(vocabSize)")
        }
        files = Set((json["files"] as? [String: Any])?.keys.map { $0 } ?? [])
        modelFiles = try Manifest.strings(json, "model_files")
        if modelFiles.isEmpty { throw ManifestError("\(f): model_files is empty") }
        let listed = files
        if let missing = modelFiles.first(where: { name in !listed.contains(name) && !listed.contains { $0.hasPrefix(name + "/") } }) {
            throw ManifestError("\(f): model file \(missing) is not among the bundle's files")
        }
        chatTemplate = json["chat_template"] as? String
        // A template names these strings; rendering without them would silently drop them.
        bosToken = try Manifest.optionalString(json, "bos_token", required: chatTemplate != nil)
        eosToken = try Manifest.optionalString(json, "eos_token", required: chatTemplate != nil)
        stopStrings = try Manifest.strings(json, "stop_strings")
        modelName = json["model_name"] as? String ?? json["recipe"] as? String ?? "model"
        addBos = Manifest.bool(json["add_bos"]) ?? false
        validationPassed = Manifest.bool((json["validation"] as? [String: Any])?["passed"])
        self.target = target
        let cache = ((json["io"] as? [String: Any])?["kv_cache"] as? [String: Any])?["shape"] as? [Any]
        coreMLCacheShape = target == "coreml" ? cache?.compactMap { Manifest.int($0) } : nil
    }

    // JSONSerialization gives NSNumber for numbers and booleans: tell them apart by type code.
    static func int(_ value: Any?) -> Int? {
        guard let n = value as? NSNumber, !(value is String) else { return nil }
        switch String(cString: n.objCType) {
        case "c", "B", "d", "f": return nil
        default: return n.intValue
        }
    }

    static func bool(_ value: Any?) -> Bool? {
        guard let n = value as? NSNumber else { return nil }
        switch String(cString: n.objCType) {
        case "c", "B": return n.boolValue
        default: return nil
        }
    }

    private static func positive(_ json: [String: Any], _ key: String) throws -> Int {
        guard json[key] != nil else { throw ManifestError("\(fileName) has no \(key); re-export the bundle") }
        guard let value = int(json[key]), value > 0 else {
            throw ManifestError("\(fileName): \(key) must be a positive integer, not \(json[key]!)")
        }
        return value
    }

    private static func optionalInt(_ json: [String: Any], _ key: String) throws -> Int? {
        if json[key] == nil || json[key] is NSNull { return nil }
        guard let value = int(json[key]) else { throw ManifestError("\(fileName): \(key) must be an integer") }
        return value
    }

    private static func optionalString(_ json: [String: Any], _ key: String, required: Bool) throws -> String? {
        guard let value = json[key] else {
            if required { throw ManifestError("\(fileName) has a chat_template but no \(key); re-export the bundle with a current mobilekit") }
            return nil
        }
        return value as? String
    }

    private static func array(_ json: [String: Any], _ key: String) throws -> [Any] {
        guard let array = json[key] as? [Any] else { throw ManifestError("\(fileName): \(key) must be a list; re-export the bundle") }
        return array
    }

    private static func ints(_ json: [String: Any], _ key: String) throws -> [Int] {
        try array(json, key).map {
            guard let i = int($0) else { throw ManifestError("\(fileName): \(key) must hold integers, not \($0)") }
            return i
        }
    }

    private static func strings(_ json: [String: Any], _ key: String) throws -> [String] {
        try array(json, key).map {
            guard let s = $0 as? String else { throw ManifestError("\(fileName): \(key) must hold strings, not \($0)") }
            return s
        }
    }
}
