import Foundation

/// The subset of Jinja that Hugging Face chat templates use, rendered the way transformers renders
/// them (jinja2 with trim_blocks and lstrip_blocks, Python value semantics). A line-for-line port
/// of android-demo/core's Jinja.kt; both are checked against the same golden vectors
/// (mobilekit/goldens.py). Syntax outside the subset throws `JinjaError.unsupported` naming it.
public enum JinjaError: Error, CustomStringConvertible, Equatable {
    /// Jinja syntax this subset does not implement (the app must not guess a prompt).
    case unsupported(String)
    /// The template's own raise_exception(), or a template that is not valid Jinja.
    case template(String)

    public var description: String {
        switch self {
        case .unsupported(let m), .template(let m): return m
        }
    }
}

/// jinja2's namespace(): the one object a template may assign attributes on.
public final class Namespace {
    var values: [String: JValue]
    init(_ values: [String: JValue]) { self.values = values }
}

/// A template value with Python semantics.
public indirect enum JValue {
    case undefined
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case list([JValue])
    case dict(keys: [String], values: [String: JValue])
    case namespace(Namespace)
    case function(([JValue], [String: JValue]) throws -> JValue)
    case method(JValue, String)

    public static func from(_ any: Any?) -> JValue {
        switch any {
        case nil, is NSNull: return .none
        case let v as JValue: return v
        case let v as String: return .string(v)
        // JSONSerialization's numbers (and bridged Swift numbers) are NSNumber: its type code
        // tells a bool from an integer from a float ("c"/"B", "d"/"f", else integer).
        case let v as NSNumber:
            switch String(cString: v.objCType) {
            case "c", "B": return .bool(v.boolValue)
            case "d", "f": return .double(v.doubleValue)
            default: return .int(v.intValue)
            }
        case let v as Bool: return .bool(v)
        case let v as Int: return .int(v)
        case let v as Double: return .double(v)
        case let v as [Any]: return .list(v.map { JValue.from($0) })
        case let v as [String: Any]: return .dict(keys: v.keys.sorted(), values: v.mapValues { JValue.from($0) })
        default: return .undefined
        }
    }

    static func orderedDict(_ pairs: [(String, JValue)]) -> JValue {
        var values: [String: JValue] = [:]
        var keys: [String] = []
        for (k, v) in pairs {
            if values[k] == nil { keys.append(k) }
            values[k] = v
        }
        return .dict(keys: keys, values: values)
    }
}

public struct JinjaTemplate {
    private let nodes: [Node]

    public init(_ source: String) throws {
        nodes = try Parser(try tokenize(source)).parseAll()
    }

    /// Renders with `context`; values are converted with `JValue.from` (String, Int, Double, Bool,
    /// nil, arrays, dictionaries).
    public func render(_ context: [String: Any?]) throws -> String {
        var globals: [String: JValue] = [
            "raise_exception": .function { args, _ in throw JinjaError.template(str(args.first ?? .undefined)) },
            "namespace": .function { _, kwargs in .namespace(Namespace(kwargs)) },
            "range": .function { args, _ in try range(args) },
        ]
        for (k, v) in context { globals[k] = JValue.from(v) }
        let renderer = Renderer()
        try renderer.run(nodes, Scope(globals, parent: nil))
        return renderer.out
    }
}

// MARK: - lexing

private enum Chunk {
    case text(String)
    case output(String)
    case statement(String)
}

private func isBlank(_ s: Substring) -> Bool { s.allSatisfy { $0 == " " || $0 == "\t" } }

private func tokenize(_ template: String) throws -> [Chunk] {
    let source = Array(template.unicodeScalars)
    var chunks: [Chunk] = []
    var pos = 0
    var stripNext = false
    var trimNewline = false
    func text(_ a: Int, _ b: Int) -> String { String(String.UnicodeScalarView(source[a..<b])) }
    func starts(_ s: String, at i: Int) -> Bool {
        let scalars = Array(s.unicodeScalars)
        return i + scalars.count <= source.count && Array(source[i..<(i + scalars.count)]) == scalars
    }
    while pos <= source.count {
        let start = nextTagStart(source, from: pos)
        var piece = text(pos, start ?? source.count)
        var lineStarting = pos == 0 || source[pos - 1] == "\n"
        if stripNext {
            piece = String(piece.drop(while: { $0.isWhitespace }))
        } else if trimNewline && (piece.hasPrefix("\n") || piece.hasPrefix("\r\n")) {
            piece = String(piece.dropFirst())
            lineStarting = true
        }
        stripNext = false
        trimNewline = false
        guard let tagStart = start else {
            if !piece.isEmpty { chunks.append(.text(piece)) }
            break
        }
        let kind = source[tagStart + 1]
        let close = kind == "{" ? "}}" : (kind == "%" ? "%}" : "#}")
        var bodyStart = tagStart + 2
        if starts("-", at: bodyStart) {
            while let last = piece.last, last.isWhitespace { piece.removeLast() }
            bodyStart += 1
        } else if starts("+", at: bodyStart) && kind != "{" {
            throw JinjaError.unsupported("unsupported Jinja whitespace control '{\(kind)+'")
        } else if kind != "{" {
            // lstrip_blocks: spaces and tabs between a line start and a block tag go
            let lineStart = piece.lastIndex(of: "\n").map { piece.index(after: $0) } ?? piece.startIndex
            if (lineStart != piece.startIndex || lineStarting) && isBlank(piece[lineStart...]) {
                piece = String(piece[..<lineStart])
            }
        }
        if !piece.isEmpty { chunks.append(.text(piece)) }
        guard let end = kind == "#" ? findPlain(source, close, from: bodyStart) : findTagEnd(source, close, from: bodyStart) else {
            throw JinjaError.template("unclosed Jinja tag at offset \(tagStart)")
        }
        var body = text(bodyStart, end)
        if body.hasSuffix("-") {
            body.removeLast()
            stripNext = true
        } else if kind != "{" {
            trimNewline = true
        }
        if kind == "{" { chunks.append(.output(body)) } else if kind == "%" { chunks.append(.statement(body)) }
        pos = end + 2
    }
    return chunks
}

private func nextTagStart(_ s: [Unicode.Scalar], from: Int) -> Int? {
    var i = from
    while i + 1 < s.count {
        if s[i] == "{" && (s[i + 1] == "{" || s[i + 1] == "%" || s[i + 1] == "#") { return i }
        i += 1
    }
    return nil
}

private func findPlain(_ s: [Unicode.Scalar], _ close: String, from: Int) -> Int? {
    let c = Array(close.unicodeScalars)
    var i = from
    while i + 1 < s.count {
        if s[i] == c[0] && s[i + 1] == c[1] { return i }
        i += 1
    }
    return nil
}

/// The end of a tag, skipping string literals that contain the closing delimiter.
private func findTagEnd(_ s: [Unicode.Scalar], _ close: String, from: Int) -> Int? {
    let c = Array(close.unicodeScalars)
    var i = from
    var quote: Unicode.Scalar?
    while i < s.count {
        let ch = s[i]
        if let q = quote {
            if ch == "\\" { i += 1 } else if ch == q { quote = nil }
        } else if ch == "'" || ch == "\"" {
            quote = ch
        } else if i + 1 < s.count && ch == c[0] && s[i + 1] == c[1] {
            return i
        }
        i += 1
    }
    return nil
}

private enum TokenType { case name, string, int, float, op, end }

private struct Token {
    let type: TokenType
    let text: String
    var value: JValue = .undefined
}

private let operators = ["//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">",
                         "(", ")", "[", "]", "{", "}", ",", ".", ":", "|", "="]

private func isNameStart(_ c: Character) -> Bool { c.isLetter || c == "_" }
private func isNamePart(_ c: Character) -> Bool { c.isLetter || c.isNumber || c == "_" }

private func lex(_ code: String) throws -> [Token] {
    let chars = Array(code)
    var tokens: [Token] = []
    var i = 0
    while i < chars.count {
        let c = chars[i]
        if c.isWhitespace {
            i += 1
        } else if isNameStart(c) {
            let start = i
            while i < chars.count && isNamePart(chars[i]) { i += 1 }
            tokens.append(Token(type: .name, text: String(chars[start..<i])))
        } else if c.isASCII && c.isNumber {
            let start = i
            while i < chars.count && ((chars[i].isASCII && chars[i].isNumber) || chars[i] == "_") { i += 1 }
            if i + 1 < chars.count && chars[i] == "." && chars[i + 1].isASCII && chars[i + 1].isNumber {
                i += 1
                while i < chars.count && chars[i].isASCII && chars[i].isNumber { i += 1 }
                let text = String(chars[start..<i])
                tokens.append(Token(type: .float, text: text, value: .double(Double(text)!)))
            } else {
                let text = String(chars[start..<i])
                tokens.append(Token(type: .int, text: text, value: .int(Int(text.replacingOccurrences(of: "_", with: ""))!)))
            }
        } else if c == "'" || c == "\"" {
            var out = ""
            i += 1
            while i < chars.count && chars[i] != c {
                if chars[i] == "\\" && i + 1 < chars.count {
                    i += 1
                    switch chars[i] {
                    case "n": out.append("\n")
                    case "t": out.append("\t")
                    case "r": out.append("\r")
                    case "\\": out.append("\\")
                    case "'": out.append("'")
                    case "\"": out.append("\"")
                    default: throw JinjaError.unsupported("unsupported string escape '\\\(chars[i])'")
                    }
                } else {
                    out.append(chars[i])
                }
                i += 1
            }
            if i >= chars.count { throw JinjaError.template("unterminated string in '\(code)'") }
            i += 1
            tokens.append(Token(type: .string, text: out, value: .string(out)))
        } else {
            guard let op = operators.first(where: { op in
                let o = Array(op)
                return i + o.count <= chars.count && Array(chars[i..<(i + o.count)]) == o
            }) else { throw JinjaError.template("unexpected character '\(c)' in '\(code)'") }
            tokens.append(Token(type: .op, text: op))
            i += op.count
        }
    }
    tokens.append(Token(type: .end, text: ""))
    return tokens
}

// MARK: - syntax tree

private indirect enum Node {
    case text(String)
    case output(Expr)
    case ifNode(branches: [(Expr, [Node])], orElse: [Node])
    case forNode(names: [String], iterable: Expr, filter: Expr?, body: [Node], orElse: [Node])
    case set(name: String, attribute: String?, expr: Expr)
    case breakNode
    case continueNode
}

private indirect enum Expr {
    case literal(JValue)
    case name(String)
    case list([Expr])
    case dict([(Expr, Expr)])
    case attr(Expr, String)
    case item(Expr, Expr)
    case slice(Expr, Expr?, Expr?, Expr?)
    case call(Expr, [Expr], [(String, Expr)])
    case filter(Expr, String, [Expr], [(String, Expr)])
    case test(Expr, String, [Expr], negated: Bool)
    case binary(String, Expr, Expr)
    case unary(String, Expr)
    case conditional(Expr, then: Expr, orElse: Expr?)
}

private let unsupportedTags: Set<String> = ["macro", "call", "include", "import", "from", "extends", "block", "filter",
                                            "with", "raw", "autoescape", "generation", "do"]

private final class Parser {
    private let chunks: [Chunk]
    private var index = 0

    init(_ chunks: [Chunk]) { self.chunks = chunks }

    func parseAll() throws -> [Node] {
        let (nodes, end) = try parseBody(stops: [])
        if let end = end { throw JinjaError.template("unexpected {% \(end) %}") }
        return nodes
    }

    private func parseBody(stops: [String]) throws -> ([Node], String?) {
        var nodes: [Node] = []
        while index < chunks.count {
            let chunk = chunks[index]
            index += 1
            switch chunk {
            case .text(let t): nodes.append(.text(t))
            case .output(let code): nodes.append(.output(try ExprParser(try lex(code)).parseComplete()))
            case .statement(let code):
                let tokens = try lex(code)
                let keyword = tokens[0].text
                if stops.contains(keyword) {
                    index -= 1
                    return (nodes, keyword)
                }
                nodes.append(try parseStatement(keyword, tokens))
            }
        }
        if let last = stops.last { throw JinjaError.template("missing {% \(last) %}") }
        return (nodes, nil)
    }

    private func statementTokens() throws -> [Token] {
        guard case .statement(let code) = chunks[index] else { throw JinjaError.template("expected a statement") }
        index += 1
        return try lex(code)
    }

    private func parseStatement(_ keyword: String, _ tokens: [Token]) throws -> Node {
        switch keyword {
        case "if":
            var branches: [(Expr, [Node])] = []
            var condition = try ExprParser(Array(tokens.dropFirst())).parseComplete()
            var orElse: [Node] = []
            while true {
                let (body, end) = try parseBody(stops: ["elif", "else", "endif"])
                branches.append((condition, body))
                let next = try statementTokens()
                if end == "elif" {
                    condition = try ExprParser(Array(next.dropFirst())).parseComplete()
                } else if end == "else" {
                    orElse = try parseBody(stops: ["endif"]).0
                    _ = try statementTokens()
                    break
                } else {
                    break
                }
            }
            return .ifNode(branches: branches, orElse: orElse)
        case "for":
            let parser = ExprParser(Array(tokens.dropFirst()))
            var names = [try parser.expectName()]
            while parser.accept(",") { names.append(try parser.expectName()) }
            try parser.expectKeyword("in")
            let iterable = try parser.parseExpression(allowConditional: false)
            let filter = parser.acceptKeyword("if") ? try parser.parseExpression() : nil
            if parser.acceptKeyword("recursive") { throw JinjaError.unsupported("unsupported Jinja for-loop option 'recursive'") }
            try parser.expectEnd()
            let (body, end) = try parseBody(stops: ["else", "endfor"])
            _ = try statementTokens()
            var orElse: [Node] = []
            if end == "else" {
                orElse = try parseBody(stops: ["endfor"]).0
                _ = try statementTokens()
            }
            return .forNode(names: names, iterable: iterable, filter: filter, body: body, orElse: orElse)
        case "set":
            let parser = ExprParser(Array(tokens.dropFirst()))
            let name = try parser.expectName()
            let attribute = parser.accept(".") ? try parser.expectName() : nil
            if !parser.accept("=") { throw JinjaError.unsupported("unsupported Jinja block assignment {% set \(name) %}…{% endset %}") }
            return .set(name: name, attribute: attribute, expr: try parser.parseComplete())
        case "break": return .breakNode
        case "continue": return .continueNode
        default:
            if unsupportedTags.contains(keyword) { throw JinjaError.unsupported("unsupported Jinja tag '\(keyword)'") }
            throw JinjaError.template("unknown Jinja tag '\(keyword)'")
        }
    }
}

private final class ExprParser {
    private let tokens: [Token]
    private var pos = 0
    private var peek: Token { tokens[pos] }

    init(_ tokens: [Token]) { self.tokens = tokens }

    func parseComplete() throws -> Expr {
        let e = try parseExpression()
        try expectEnd()
        return e
    }

    func expectEnd() throws {
        if peek.type != .end { throw JinjaError.template("unexpected '\(peek.text)' in expression") }
    }

    func accept(_ op: String) -> Bool {
        if peek.type == .op && peek.text == op { pos += 1; return true }
        return false
    }

    func acceptKeyword(_ word: String) -> Bool {
        if peek.type == .name && peek.text == word { pos += 1; return true }
        return false
    }

    func expectKeyword(_ word: String) throws {
        if !acceptKeyword(word) { throw JinjaError.template("expected '\(word)', found '\(peek.text)'") }
    }

    func expect(_ op: String) throws {
        if !accept(op) { throw JinjaError.template("expected '\(op)', found '\(peek.text)'") }
    }

    func expectName() throws -> String {
        guard peek.type == .name else { throw JinjaError.template("expected a name, found '\(peek.text)'") }
        pos += 1
        return tokens[pos - 1].text
    }

    func parseExpression(allowConditional: Bool = true) throws -> Expr {
        let value = try parseOr()
        if allowConditional && acceptKeyword("if") {
            let condition = try parseOr()
            let orElse = acceptKeyword("else") ? try parseExpression() : nil
            return .conditional(condition, then: value, orElse: orElse)
        }
        return value
    }

    private func parseOr() throws -> Expr {
        var left = try parseAnd()
        while acceptKeyword("or") { left = .binary("or", left, try parseAnd()) }
        return left
    }

    private func parseAnd() throws -> Expr {
        var left = try parseNot()
        while acceptKeyword("and") { left = .binary("and", left, try parseNot()) }
        return left
    }

    private func parseNot() throws -> Expr {
        acceptKeyword("not") ? .unary("not", try parseNot()) : try parseCompare()
    }

    private func parseCompare() throws -> Expr {
        var left = try parseMath1()
        while true {
            if peek.type == .op && ["==", "!=", "<", ">", "<=", ">="].contains(peek.text) {
                let op = peek.text
                pos += 1
                left = .binary(op, left, try parseMath1())
            } else if acceptKeyword("in") {
                left = .binary("in", left, try parseMath1())
            } else if peek.type == .name && peek.text == "not" && tokens[pos + 1].text == "in" {
                pos += 2
                left = .binary("not in", left, try parseMath1())
            } else {
                return left
            }
        }
    }

    private func parseMath1() throws -> Expr {
        var left = try parseConcat()
        while peek.type == .op && (peek.text == "+" || peek.text == "-") {
            let op = peek.text
            pos += 1
            left = .binary(op, left, try parseConcat())
        }
        return left
    }

    private func parseConcat() throws -> Expr {
        var left = try parseMath2()
        while accept("~") { left = .binary("~", left, try parseMath2()) }
        return left
    }

    private func parseMath2() throws -> Expr {
        var left = try parseUnary()
        while peek.type == .op && ["*", "/", "//", "%"].contains(peek.text) {
            let op = peek.text
            pos += 1
            left = .binary(op, left, try parseUnary())
        }
        if peek.type == .op && peek.text == "**" { throw JinjaError.unsupported("unsupported Jinja operator '**'") }
        return left
    }

    private func parseUnary() throws -> Expr {
        if accept("-") { return try parseFilters(.unary("-", try parseUnary())) }
        if accept("+") { return try parseUnary() }
        return try parseFilters(try parsePostfix(try parsePrimary()))
    }

    private func parsePrimary() throws -> Expr {
        let token = tokens[pos]
        pos += 1
        switch token.type {
        case .string:
            var text = token.text
            while peek.type == .string { text += peek.text; pos += 1 }
            return .literal(.string(text))
        case .int, .float:
            return .literal(token.value)
        case .name:
            switch token.text {
            case "true", "True": return .literal(.bool(true))
            case "false", "False": return .literal(.bool(false))
            case "none", "None": return .literal(.none)
            default: return .name(token.text)
            }
        case .op:
            switch token.text {
            case "(":
                let inner = try parseExpression()
                if accept(",") { throw JinjaError.unsupported("unsupported Jinja tuple literal") }
                try expect(")")
                return inner
            case "[":
                var items: [Expr] = []
                while !accept("]") {
                    items.append(try parseExpression())
                    if !accept(",") { try expect("]"); break }
                }
                return .list(items)
            case "{":
                var items: [(Expr, Expr)] = []
                while !accept("}") {
                    let key = try parseExpression()
                    try expect(":")
                    items.append((key, try parseExpression()))
                    if !accept(",") { try expect("}"); break }
                }
                return .dict(items)
            default:
                throw JinjaError.template("unexpected '\(token.text)' in expression")
            }
        case .end:
            throw JinjaError.template("unexpected end of expression")
        }
    }

    private func parsePostfix(_ start: Expr) throws -> Expr {
        var expr = start
        while true {
            if accept(".") {
                if peek.type == .int {
                    expr = .item(expr, .literal(peek.value))
                    pos += 1
                } else {
                    expr = .attr(expr, try expectName())
                }
            } else if accept("[") {
                expr = try parseSubscript(expr)
            } else if accept("(") {
                let (args, kwargs) = try parseArguments()
                expr = .call(expr, args, kwargs)
            } else {
                return expr
            }
        }
    }

    private func parseSubscript(_ target: Expr) throws -> Expr {
        let start = peek.text == ":" ? nil : try parseExpression()
        if accept("]"), let start = start { return .item(target, start) }
        try expect(":")
        let stop = (peek.text == ":" || peek.text == "]") ? nil : try parseExpression()
        let step = (accept(":") && peek.text != "]") ? try parseExpression() : nil
        try expect("]")
        return .slice(target, start, stop, step)
    }

    private func parseArguments() throws -> ([Expr], [(String, Expr)]) {
        var args: [Expr] = []
        var kwargs: [(String, Expr)] = []
        while !accept(")") {
            if peek.type == .name && tokens[pos + 1].text == "=" {
                let name = peek.text
                pos += 2
                kwargs.append((name, try parseExpression()))
            } else {
                args.append(try parseExpression())
            }
            if !accept(",") { try expect(")"); break }
        }
        return (args, kwargs)
    }

    private func parseFilters(_ start: Expr) throws -> Expr {
        var expr = start
        while true {
            if accept("|") {
                let name = try expectName()
                let (args, kwargs) = accept("(") ? try parseArguments() : ([], [])
                expr = .filter(expr, name, args, kwargs)
            } else if acceptKeyword("is") {
                let negated = acceptKeyword("not")
                let name = try expectName()
                let args = accept("(") ? try parseArguments().0 : []
                expr = .test(expr, name, args, negated: negated)
            } else if accept("(") {
                let (args, kwargs) = try parseArguments()
                expr = .call(expr, args, kwargs)
            } else {
                return expr
            }
        }
    }
}

// MARK: - evaluation

private final class Scope {
    var vars: [String: JValue]
    let parent: Scope?

    init(_ vars: [String: JValue], parent: Scope?) {
        self.vars = vars
        self.parent = parent
    }

    func lookup(_ name: String) -> JValue {
        var scope: Scope? = self
        while let s = scope {
            if let v = s.vars[name] { return v }
            scope = s.parent
        }
        return .undefined
    }
}

private enum LoopSignal: Error { case breakLoop, continueLoop }

private final class Renderer {
    var out = ""

    func run(_ nodes: [Node], _ scope: Scope) throws {
        for node in nodes {
            switch node {
            case .text(let t): out += t
            case .output(let e): out += str(try eval(e, scope))
            case .ifNode(let branches, let orElse):
                var chosen: [Node]? = nil
                for (condition, body) in branches {
                    if truthy(try eval(condition, scope)) {
                        chosen = body
                        break
                    }
                }
                try run(chosen ?? orElse, scope)
            case .forNode(let names, let iterable, let filter, let body, let orElse):
                try runFor(names, iterable, filter, body, orElse, scope)
            case .set(let name, let attribute, let expr):
                let value = try eval(expr, scope)
                if let attribute = attribute {
                    guard case .namespace(let ns) = scope.lookup(name) else {
                        throw JinjaError.template("cannot set attribute '\(attribute)' of '\(name)': not a namespace")
                    }
                    ns.values[attribute] = value
                } else {
                    scope.vars[name] = value
                }
            case .breakNode: throw LoopSignal.breakLoop
            case .continueNode: throw LoopSignal.continueLoop
            }
        }
    }

    private func runFor(_ names: [String], _ iterable: Expr, _ filter: Expr?, _ body: [Node], _ orElse: [Node], _ scope: Scope) throws {
        let all = try iterate(try eval(iterable, scope))
        let loopScope = Scope([:], parent: scope) // jinja2: assignments in a loop stay in the loop
        var items: [JValue] = []
        for item in all {
            if let filter = filter {
                try bind(names, item, loopScope)
                if !truthy(try eval(filter, loopScope)) { continue }
            }
            items.append(item)
        }
        if items.isEmpty {
            try run(orElse, scope)
            return
        }
        for (i, item) in items.enumerated() {
            try bind(names, item, loopScope)
            let n = items.count
            loopScope.vars["loop"] = JValue.orderedDict([
                ("index", .int(i + 1)), ("index0", .int(i)), ("first", .bool(i == 0)), ("last", .bool(i == n - 1)),
                ("length", .int(n)), ("revindex", .int(n - i)), ("revindex0", .int(n - i - 1)),
                ("previtem", i > 0 ? items[i - 1] : .undefined), ("nextitem", i < n - 1 ? items[i + 1] : .undefined),
            ])
            do {
                try run(body, loopScope)
            } catch LoopSignal.continueLoop {
                continue
            } catch LoopSignal.breakLoop {
                break
            }
        }
    }

    private func bind(_ names: [String], _ item: JValue, _ scope: Scope) throws {
        if names.count == 1 {
            scope.vars[names[0]] = item
            return
        }
        let parts = try iterate(item)
        if parts.count != names.count { throw JinjaError.template("cannot unpack \(parts.count) values into \(names.count) names") }
        for (n, v) in zip(names, parts) { scope.vars[n] = v }
    }

    func eval(_ expr: Expr, _ scope: Scope) throws -> JValue {
        switch expr {
        case .literal(let v): return v
        case .name(let n): return scope.lookup(n)
        case .list(let items): return .list(try items.map { try eval($0, scope) })
        case .dict(let items): return JValue.orderedDict(try items.map { (str(try eval($0.0, scope)), try eval($0.1, scope)) })
        case .attr(let target, let name): return try attribute(try eval(target, scope), name)
        case .item(let target, let index): return try item(try eval(target, scope), try eval(index, scope))
        case .slice(let target, let start, let stop, let step):
            return try slice(try eval(target, scope), try start.map { try eval($0, scope) },
                             try stop.map { try eval($0, scope) }, try step.map { try eval($0, scope) })
        case .call(let target, let args, let kwargs):
            return try call(try eval(target, scope), try args.map { try eval($0, scope) }, try evalKwargs(kwargs, scope))
        case .filter(let target, let name, let args, let kwargs):
            return try applyFilter(name, try eval(target, scope), try args.map { try eval($0, scope) }, try evalKwargs(kwargs, scope))
        case .test(let target, let name, let args, let negated):
            return .bool(try applyTest(name, try eval(target, scope), try args.map { try eval($0, scope) }) != negated)
        case .unary(let op, let operand):
            let v = try eval(operand, scope)
            if op == "not" { return .bool(!truthy(v)) }
            switch v {
            case .int(let i): return .int(-i)
            case .double(let d): return .double(-d)
            default: throw JinjaError.template("bad operand for unary -: \(typeName(v))")
            }
        case .conditional(let condition, let then, let orElse):
            if truthy(try eval(condition, scope)) { return try eval(then, scope) }
            return try orElse.map { try eval($0, scope) } ?? .undefined
        case .binary(let op, let l, let r):
            if op == "and" { let a = try eval(l, scope); return truthy(a) ? try eval(r, scope) : a }
            if op == "or" { let a = try eval(l, scope); return truthy(a) ? a : try eval(r, scope) }
            return try binary(op, try eval(l, scope), try eval(r, scope))
        }
    }

    private func evalKwargs(_ kwargs: [(String, Expr)], _ scope: Scope) throws -> [String: JValue] {
        var out: [String: JValue] = [:]
        for (k, e) in kwargs { out[k] = try eval(e, scope) }
        return out
    }
}

// MARK: - Python value semantics

func typeName(_ v: JValue) -> String {
    switch v {
    case .undefined: return "Undefined"
    case .none: return "NoneType"
    case .bool: return "bool"
    case .int: return "int"
    case .double: return "float"
    case .string: return "str"
    case .list: return "list"
    case .dict: return "dict"
    case .namespace: return "Namespace"
    case .function, .method: return "function"
    }
}

func truthy(_ v: JValue) -> Bool {
    switch v {
    case .undefined, .none: return false
    case .bool(let b): return b
    case .int(let i): return i != 0
    case .double(let d): return d != 0
    case .string(let s): return !s.isEmpty
    case .list(let l): return !l.isEmpty
    case .dict(let keys, _): return !keys.isEmpty
    default: return true
    }
}

/// Python's str() of a value, as {{ }} prints it.
func str(_ v: JValue) -> String {
    switch v {
    case .string(let s): return s
    case .undefined: return ""
    default: return repr(v)
    }
}

private func repr(_ v: JValue) -> String {
    switch v {
    case .undefined: return ""
    case .none: return "None"
    case .bool(let b): return b ? "True" : "False"
    case .int(let i): return String(i)
    case .double(let d): return pythonFloat(d)
    case .string(let s):
        return "'" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'")
            .replacingOccurrences(of: "\n", with: "\\n") + "'"
    case .list(let l): return "[" + l.map(repr).joined(separator: ", ") + "]"
    case .dict(let keys, let values): return "{" + keys.map { repr(.string($0)) + ": " + repr(values[$0]!) }.joined(separator: ", ") + "}"
    case .namespace: return "<Namespace>"
    case .function, .method: return "<function>"
    }
}

private func pythonFloat(_ d: Double) -> String {
    if d.isNaN { return "nan" }
    if d.isInfinite { return d > 0 ? "inf" : "-inf" }
    if d == d.rounded() && abs(d) < 1e16 { return String(Int(d)) + ".0" }
    return String(d)
}

private func number(_ v: JValue) -> Double? {
    switch v {
    case .int(let i): return Double(i)
    case .double(let d): return d
    case .bool(let b): return b ? 1 : 0
    default: return nil
    }
}

private func equal(_ a: JValue, _ b: JValue) -> Bool {
    switch (a, b) {
    case (.none, .none), (.undefined, .undefined): return true
    case (.string(let x), .string(let y)): return x == y
    case (.list(let x), .list(let y)): return x.count == y.count && zip(x, y).allSatisfy { equal($0, $1) }
    case (.dict(let kx, let vx), .dict(let ky, let vy)):
        return Set(kx) == Set(ky) && kx.allSatisfy { equal(vx[$0]!, vy[$0]!) }
    default:
        if let x = number(a), let y = number(b) { return x == y }
        return false
    }
}

private func compare(_ a: JValue, _ b: JValue) throws -> Int {
    if let x = number(a), let y = number(b) { return x < y ? -1 : (x > y ? 1 : 0) }
    if case .string(let x) = a, case .string(let y) = b {
        let xs = Array(x.unicodeScalars).map(\.value), ys = Array(y.unicodeScalars).map(\.value)
        return xs.lexicographicallyPrecedes(ys) ? -1 : (xs == ys ? 0 : 1)
    }
    throw JinjaError.template("cannot compare \(typeName(a)) with \(typeName(b))")
}

private func floorDiv(_ a: Int, _ b: Int) -> Int {
    let q = a / b
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q
}

private func floorMod(_ a: Int, _ b: Int) -> Int { a - b * floorDiv(a, b) }

private func binary(_ op: String, _ a: JValue, _ b: JValue) throws -> JValue {
    switch op {
    case "==": return .bool(equal(a, b))
    case "!=": return .bool(!equal(a, b))
    case "<": return .bool(try compare(a, b) < 0)
    case ">": return .bool(try compare(a, b) > 0)
    case "<=": return .bool(try compare(a, b) <= 0)
    case ">=": return .bool(try compare(a, b) >= 0)
    case "in": return .bool(try contains(b, a))
    case "not in": return .bool(!(try contains(b, a)))
    case "~": return .string(str(a) + str(b))
    case "+":
        switch (a, b) {
        case (.string(let x), .string(let y)): return .string(x + y)
        case (.list(let x), .list(let y)): return .list(x + y)
        case (.int(let x), .int(let y)): return .int(x + y)
        case (.int, .double), (.double, .int), (.double, .double): return .double(number(a)! + number(b)!)
        default: throw JinjaError.template("unsupported operand types for +: \(typeName(a)) and \(typeName(b))")
        }
    default:
        return try arithmetic(op, a, b)
    }
}

private func arithmetic(_ op: String, _ a: JValue, _ b: JValue) throws -> JValue {
    if op == "*", case .string(let s) = a, case .int(let n) = b { return .string(String(repeating: s, count: max(0, n))) }
    if case .int(let x) = a, case .int(let y) = b, op != "/" {
        if (op == "//" || op == "%") && y == 0 { throw JinjaError.template("integer division or modulo by zero") }
        switch op {
        case "-": return .int(x - y)
        case "*": return .int(x * y)
        case "//": return .int(floorDiv(x, y))
        default: return .int(floorMod(x, y))
        }
    }
    guard let x = number(a) else { throw JinjaError.template("unsupported operand type for \(op): \(typeName(a))") }
    guard let y = number(b) else { throw JinjaError.template("unsupported operand type for \(op): \(typeName(b))") }
    switch op {
    case "-": return .double(x - y)
    case "*": return .double(x * y)
    case "/":
        if y == 0 { throw JinjaError.template("division by zero") }
        return .double(x / y)
    case "//": return .double((x / y).rounded(.down))
    default: return .double(x - y * (x / y).rounded(.down))
    }
}

private func contains(_ container: JValue, _ item: JValue) throws -> Bool {
    switch container {
    case .string(let s):
        if case .string(let sub) = item { return sub.isEmpty || s.contains(sub) }
        return false
    case .list(let l): return l.contains { equal($0, item) }
    case .dict(let keys, _):
        if case .string(let k) = item { return keys.contains(k) }
        return false
    case .undefined: return false
    default: throw JinjaError.template("argument of type \(typeName(container)) is not iterable")
    }
}

private func iterate(_ v: JValue) throws -> [JValue] {
    switch v {
    case .list(let l): return l
    case .dict(let keys, _): return keys.map { .string($0) }
    case .string(let s): return s.unicodeScalars.map { .string(String($0)) }
    case .undefined: return []
    default: throw JinjaError.template("\(typeName(v)) is not iterable")
    }
}

private let stringMethods: Set<String> = ["strip", "lstrip", "rstrip", "startswith", "endswith", "split", "upper", "lower",
                                          "title", "capitalize", "replace"]
private let dictMethods: Set<String> = ["items", "keys", "values", "get"]

private func attribute(_ target: JValue, _ name: String) throws -> JValue {
    switch target {
    case .namespace(let ns): return ns.values[name] ?? .undefined
    case .dict(_, let values):
        if let v = values[name] { return v }
        return dictMethods.contains(name) ? .method(target, name) : .undefined
    case .string: return stringMethods.contains(name) ? .method(target, name) : .undefined
    case .undefined: throw JinjaError.template("'\(name)' of an undefined value")
    default: return .undefined
    }
}

private func pythonIndex(_ index: JValue, count: Int) throws -> Int? {
    guard case .int(let i) = index else { throw JinjaError.template("indices must be integers, not \(typeName(index))") }
    let j = i < 0 ? i + count : i
    return (0..<count).contains(j) ? j : nil
}

private func item(_ target: JValue, _ index: JValue) throws -> JValue {
    switch target {
    case .list(let l): return try pythonIndex(index, count: l.count).map { l[$0] } ?? .undefined
    case .string:
        let points = try iterate(target)
        return try pythonIndex(index, count: points.count).map { points[$0] } ?? .undefined
    case .dict(_, let values):
        if case .string(let k) = index { return values[k] ?? .undefined }
        return .undefined
    case .namespace: return try attribute(target, str(index))
    case .undefined: throw JinjaError.template("index \(repr(index)) of an undefined value")
    default: return .undefined
    }
}

private func slice(_ target: JValue, _ start: JValue?, _ stop: JValue?, _ step: JValue?) throws -> JValue {
    let items: [JValue]
    switch target {
    case .list(let l): items = l
    case .string: items = try iterate(target)
    default: throw JinjaError.template("cannot slice \(typeName(target))")
    }
    let n = items.count
    var s = 1
    if let step = step {
        guard case .int(let v) = step else { throw JinjaError.template("slice indices must be integers") }
        s = v
    }
    if s == 0 { throw JinjaError.template("slice step cannot be zero") }
    func clamp(_ v: JValue?, _ fallback: Int, _ low: Int, _ high: Int) throws -> Int {
        guard let v = v else { return fallback }
        guard case .int(var i) = v else { throw JinjaError.template("slice indices must be integers") }
        if i < 0 { i += n }
        return min(max(i, low), high)
    }
    var picked: [JValue] = []
    if s > 0 {
        var i = try clamp(start, 0, 0, n)
        let end = try clamp(stop, n, 0, n)
        while i < end { picked.append(items[i]); i += s }
    } else {
        var i = try clamp(start, n - 1, -1, n - 1)
        let end = stop == nil ? -1 : try clamp(stop, -1, -1, n - 1)
        while i > end { picked.append(items[i]); i += s }
    }
    if case .string = target { return .string(picked.map(str).joined()) }
    return .list(picked)
}

private func range(_ args: [JValue]) throws -> JValue {
    let ints: [Int] = try args.map {
        guard case .int(let i) = $0 else { throw JinjaError.template("range() takes integers") }
        return i
    }
    let (start, stop, step): (Int, Int, Int)
    switch ints.count {
    case 1: (start, stop, step) = (0, ints[0], 1)
    case 2: (start, stop, step) = (ints[0], ints[1], 1)
    case 3: (start, stop, step) = (ints[0], ints[1], ints[2])
    default: throw JinjaError.template("range() takes 1 to 3 arguments")
    }
    if step == 0 { throw JinjaError.template("range() step must not be zero") }
    var out: [JValue] = []
    var i = start
    while step > 0 ? i < stop : i > stop { out.append(.int(i)); i += step }
    return .list(out)
}

private func call(_ target: JValue, _ args: [JValue], _ kwargs: [String: JValue]) throws -> JValue {
    switch target {
    case .function(let f): return try f(args, kwargs)
    case .method(let receiver, let name): return try callMethod(receiver, name, args)
    case .undefined: throw JinjaError.template("call of an undefined function")
    default: throw JinjaError.template("\(typeName(target)) is not callable")
    }
}

/// Python's str.strip(): whitespace (or the given characters) from the ends.
private func pyStrip(_ s: String, _ chars: JValue?, left: Bool, right: Bool) -> String {
    let drop: (Unicode.Scalar) -> Bool
    if case .string(let set)? = chars { drop = { set.unicodeScalars.contains($0) } } else { drop = { $0.properties.isWhitespace } }
    var scalars = Array(s.unicodeScalars)[...]
    if left { while let f = scalars.first, drop(f) { scalars = scalars.dropFirst() } }
    if right { while let l = scalars.last, drop(l) { scalars = scalars.dropLast() } }
    return String(String.UnicodeScalarView(scalars))
}

private func title(_ s: String) -> String {
    var out = ""
    var previousCased = false
    for c in s {
        out += previousCased ? c.lowercased() : c.uppercased()
        previousCased = c.isLetter
    }
    return out
}

private func stringArg(_ args: [JValue], _ i: Int) throws -> String {
    guard i < args.count, case .string(let s) = args[i] else { throw JinjaError.template("expected a string argument") }
    return s
}

private func callMethod(_ receiver: JValue, _ name: String, _ args: [JValue]) throws -> JValue {
    if case .dict(let keys, let values) = receiver {
        switch name {
        case "items": return .list(keys.map { .list([.string($0), values[$0]!]) })
        case "keys": return .list(keys.map { .string($0) })
        case "values": return .list(keys.map { values[$0]! })
        default:
            if case .string(let k)? = args.first, let v = values[k] { return v }
            return args.count > 1 ? args[1] : .none
        }
    }
    guard case .string(let s) = receiver else { throw JinjaError.template("\(typeName(receiver)) has no method \(name)") }
    switch name {
    case "strip": return .string(pyStrip(s, args.first, left: true, right: true))
    case "lstrip": return .string(pyStrip(s, args.first, left: true, right: false))
    case "rstrip": return .string(pyStrip(s, args.first, left: false, right: true))
    case "startswith": return .bool(s.unicodeScalars.starts(with: try stringArg(args, 0).unicodeScalars))
    case "endswith": return .bool(Array(s.unicodeScalars).reversed().starts(with: Array(try stringArg(args, 0).unicodeScalars).reversed()))
    case "upper": return .string(s.uppercased())
    case "lower": return .string(s.lowercased())
    case "title": return .string(title(s))
    case "capitalize": return .string(s.isEmpty ? s : s.prefix(1).uppercased() + s.dropFirst().lowercased())
    case "replace": return .string(s.replacingOccurrences(of: try stringArg(args, 0), with: try stringArg(args, 1)))
    default: // split
        if case .string(let sep)? = args.first {
            return .list(s.components(separatedBy: sep).map { .string($0) })
        }
        return .list(s.split(whereSeparator: { $0.isWhitespace }).map { .string(String($0)) })
    }
}

private func toJson(_ v: JValue) throws -> String {
    switch v {
    case .undefined, .none: return "null"
    case .bool(let b): return b ? "true" : "false"
    case .int(let i): return String(i)
    case .double(let d): return pythonFloat(d)
    case .string(let s):
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default: out += u.value < 0x20 ? String(format: "\\u%04x", u.value) : String(u)
            }
        }
        return out + "\""
    case .list(let l): return "[" + (try l.map(toJson)).joined(separator: ", ") + "]"
    case .dict(let keys, let values): return "{" + (try keys.map { try toJson(.string($0)) + ": " + toJson(values[$0]!) }).joined(separator: ", ") + "}"
    default: throw JinjaError.template("\(typeName(v)) is not JSON serializable")
    }
}

private func length(_ v: JValue) throws -> Int {
    switch v {
    case .string(let s): return s.unicodeScalars.count
    case .list(let l): return l.count
    case .dict(let keys, _): return keys.count
    case .undefined: return 0
    default: throw JinjaError.template("object of type \(typeName(v)) has no len()")
    }
}

private func applyFilter(_ name: String, _ v: JValue, _ args: [JValue], _ kwargs: [String: JValue]) throws -> JValue {
    switch name {
    case "trim": return .string(pyStrip(str(v), args.first, left: true, right: true))
    case "length", "count": return .int(try length(v))
    case "upper": return .string(str(v).uppercased())
    case "lower": return .string(str(v).lowercased())
    case "title": return .string(title(str(v)))
    case "capitalize": return try callMethod(.string(str(v)), "capitalize", [])
    case "string": return .string(str(v))
    case "first": return try iterate(v).first ?? .undefined
    case "last": return try iterate(v).last ?? .undefined
    case "join": return .string(try iterate(v).map(str).joined(separator: args.first.map(str) ?? ""))
    case "default", "d":
        let useFalsy = truthy(args.count > 1 ? args[1] : (kwargs["boolean"] ?? .bool(false)))
        if case .undefined = v { return args.first ?? .string("") }
        if useFalsy && !truthy(v) { return args.first ?? .string("") }
        return v
    case "tojson":
        if kwargs["indent"] != nil || !args.isEmpty { throw JinjaError.unsupported("unsupported Jinja filter arguments tojson(indent=…)") }
        return .string(try toJson(v))
    case "list": return .list(try iterate(v))
    case "reverse":
        if case .string(let s) = v { return .string(String(String.UnicodeScalarView(s.unicodeScalars.reversed()))) }
        return .list(try iterate(v).reversed())
    case "replace": return .string(str(v).replacingOccurrences(of: str(args[0]), with: str(args[1])))
    case "int":
        switch v {
        case .int: return v
        case .double(let d): return .int(Int(d))
        case .string(let s): return .int(Int(s.trimmingCharacters(in: .whitespaces)) ?? 0)
        case .bool(let b): return .int(b ? 1 : 0)
        default: return .int(0)
        }
    case "float":
        if let n = number(v) { return .double(n) }
        if case .string(let s) = v { return .double(Double(s.trimmingCharacters(in: .whitespaces)) ?? 0) }
        return .double(0)
    case "abs":
        switch v {
        case .int(let i): return .int(abs(i))
        case .double(let d): return .double(abs(d))
        default: throw JinjaError.template("bad operand for abs()")
        }
    default:
        throw JinjaError.unsupported("unsupported Jinja filter '\(name)'")
    }
}

private func applyTest(_ name: String, _ v: JValue, _ args: [JValue]) throws -> Bool {
    switch name {
    case "defined": if case .undefined = v { return false } else { return true }
    case "undefined": if case .undefined = v { return true } else { return false }
    case "none": if case .none = v { return true } else { return false }
    case "string": if case .string = v { return true } else { return false }
    case "number": switch v { case .int, .double: return true; default: return false }
    case "integer": if case .int = v { return true } else { return false }
    case "float": if case .double = v { return true } else { return false }
    case "boolean": if case .bool = v { return true } else { return false }
    case "true": if case .bool(true) = v { return true } else { return false }
    case "false": if case .bool(false) = v { return true } else { return false }
    case "mapping": if case .dict = v { return true } else { return false }
    case "sequence", "iterable": switch v { case .list, .string, .dict: return true; default: return false }
    case "odd": if case .int(let i) = v { return floorMod(i, 2) == 1 } else { return false }
    case "even": if case .int(let i) = v { return floorMod(i, 2) == 0 } else { return false }
    case "divisibleby":
        if case .int(let i) = v, case .int(let d)? = args.first { return floorMod(i, d) == 0 }
        return false
    case "eq", "equalto", "==": return equal(v, args.first ?? .undefined)
    case "ne", "!=": return !equal(v, args.first ?? .undefined)
    default: throw JinjaError.unsupported("unsupported Jinja test '\(name)'")
    }
}
