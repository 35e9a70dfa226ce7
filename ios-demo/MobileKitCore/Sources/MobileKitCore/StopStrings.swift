/// Cuts streamed text at the first stop string; text is held back only while it could still be
/// the start of one (same behaviour as mobilekit/goldens.py `filter_stops` and StopStrings.kt).
/// Works on Unicode scalars, as Python's str does.
public final class StopStringFilter {
    private let stops: [[Unicode.Scalar]]
    private var buffer: [Unicode.Scalar] = []
    public private(set) var stopped = false

    public init(_ stops: [String]) {
        self.stops = stops.filter { !$0.isEmpty }.map { Array($0.unicodeScalars) }
    }

    /// Feeds one decoded piece; returns the text that is now safe to show.
    public func feed(_ piece: String) -> String {
        precondition(!stopped, "feed() after a stop string was found")
        buffer += piece.unicodeScalars
        if let cut = stops.compactMap({ firstIndex(of: $0, in: buffer) }).min() {
            stopped = true
            let shown = Array(buffer[..<cut])
            buffer = []
            return text(shown)
        }
        let hold = stops.map { stop in
            (1..<max(stop.count, 1)).reversed().first { k in buffer.count >= k && Array(buffer.suffix(k)) == Array(stop.prefix(k)) } ?? 0
        }.max() ?? 0
        let shown = Array(buffer.prefix(buffer.count - hold))
        buffer = Array(buffer.suffix(hold))
        return text(shown)
    }

    /// End of generation: whatever was held back can no longer become a stop string.
    public func finish() -> String {
        defer { buffer = [] }
        return text(buffer)
    }

    private func text(_ scalars: [Unicode.Scalar]) -> String {
        var s = String.UnicodeScalarView()
        s.append(contentsOf: scalars)
        return String(s)
    }

    private func firstIndex(of needle: [Unicode.Scalar], in haystack: [Unicode.Scalar]) -> Int? {
        guard needle.count <= haystack.count else { return nil }
        for start in 0...(haystack.count - needle.count) where Array(haystack[start..<(start + needle.count)]) == needle {
            return start
        }
        return nil
    }
}
