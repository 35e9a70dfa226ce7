package dev.mobilekit.core

/**
 * The subset of Jinja that Hugging Face chat templates use, rendered the way transformers
 * renders them (jinja2 with trim_blocks and lstrip_blocks, Python value semantics).
 *
 * Supported: text, {{ }}, {% if/elif/else %}, {% for a[, b] in x [if cond] %} with loop.*,
 * {% set x = … %} and {% set ns.x = … %}, {% break %}/{% continue %}, comments, "-" whitespace
 * control; literals, lists, dicts, attribute/index/slice access, + - * / // % ~, comparisons,
 * in / not in, and/or/not, inline if/else, the filters and tests in [FILTERS] and [TESTS],
 * str/dict methods in [callMethod], and raise_exception(), namespace(), range().
 * Anything else fails with [JinjaUnsupported] naming the construct: an app must never render a
 * prompt the model was not trained on. The golden vectors check this against transformers for
 * every recipe's template (mobilekit/goldens.py).
 */
class JinjaUnsupported(message: String) : Exception(message)

/** The template's own raise_exception(), or a template that is not valid Jinja. */
class JinjaTemplateError(message: String) : Exception(message)

object Undefined {
    override fun toString() = ""
}

/** jinja2's namespace(): the one mutable object a template may assign attributes on. */
class Namespace(val values: MutableMap<String, Any?>)

private class BoundMethod(val receiver: Any?, val name: String)

private fun interface Callable {
    fun call(args: List<Any?>, kwargs: Map<String, Any?>): Any?
}

class JinjaTemplate(source: String) {
    private val nodes: List<Node> = Parser(tokenize(source)).parseAll()

    /** Renders with `context` (values: String, Long/Int, Double, Boolean, null, List, Map). */
    fun render(context: Map<String, Any?>): String {
        val out = StringBuilder()
        val globals = mutableMapOf<String, Any?>(
            "raise_exception" to Callable { args, _ -> throw JinjaTemplateError(str(args.firstOrNull())) },
            "namespace" to Callable { _, kwargs -> Namespace(kwargs.toMutableMap()) },
            "range" to Callable { args, _ -> range(args) },
        )
        globals.putAll(context.mapValues { normalize(it.value) })
        Renderer(out).run(nodes, Scope(globals, null))
        return out.toString()
    }
}

// ---------------------------------------------------------------- lexing

private sealed class Chunk {
    data class Text(val text: String) : Chunk()
    data class Output(val code: String) : Chunk()
    data class Statement(val code: String) : Chunk()
}

private fun tokenize(source: String): List<Chunk> {
    val chunks = mutableListOf<Chunk>()
    var pos = 0
    var stripNext = false // a "-" before the previous tag's end: drop leading whitespace
    var trimNewline = false // trim_blocks: drop one newline after a block tag
    while (pos <= source.length) {
        val start = nextTagStart(source, pos)
        var text = source.substring(pos, if (start < 0) source.length else start)
        var lineStarting = pos == 0 || source[pos - 1] == '\n'
        if (stripNext) {
            text = text.trimStart()
        } else if (trimNewline && (text.startsWith("\n") || text.startsWith("\r\n"))) {
            text = text.substring(if (text.startsWith("\n")) 1 else 2)
            lineStarting = true
        }
        stripNext = false
        trimNewline = false
        if (start < 0) {
            if (text.isNotEmpty()) chunks += Chunk.Text(text)
            break
        }
        val kind = source[start + 1]
        val close = when (kind) { '{' -> "}}"; '%' -> "%}"; else -> "#}" }
        var bodyStart = start + 2
        if (source.startsWith("-", bodyStart)) {
            text = text.trimEnd()
            bodyStart++
        } else if (source.startsWith("+", bodyStart) && kind != '{') {
            throw JinjaUnsupported("unsupported Jinja whitespace control '{$kind+'")
        } else if (kind != '{') {
            // lstrip_blocks: spaces and tabs between a line start and a block tag go
            val lineStart = text.lastIndexOf('\n') + 1
            if ((lineStart > 0 || lineStarting) && text.substring(lineStart).all { it == ' ' || it == '\t' }) {
                text = text.substring(0, lineStart)
            }
        }
        if (text.isNotEmpty()) chunks += Chunk.Text(text)
        val end = if (kind == '#') source.indexOf(close, bodyStart) else findTagEnd(source, bodyStart, close)
        if (end < 0) throw JinjaTemplateError("unclosed Jinja tag at offset $start")
        var body = source.substring(bodyStart, end)
        if (body.endsWith("-")) {
            body = body.dropLast(1)
            stripNext = true
        } else if (kind != '{') {
            trimNewline = true
        }
        when (kind) {
            '{' -> chunks += Chunk.Output(body)
            '%' -> chunks += Chunk.Statement(body)
        }
        pos = end + 2
    }
    return chunks
}

private fun nextTagStart(source: String, from: Int): Int {
    var i = source.indexOf('{', from)
    while (i >= 0 && i + 1 < source.length) {
        if (source[i + 1] == '{' || source[i + 1] == '%' || source[i + 1] == '#') return i
        i = source.indexOf('{', i + 1)
    }
    return -1
}

/** The end of a tag, skipping string literals that contain the closing delimiter. */
private fun findTagEnd(source: String, from: Int, close: String): Int {
    var i = from
    var quote: Char? = null
    while (i < source.length) {
        val c = source[i]
        if (quote != null) {
            if (c == '\\') i++ else if (c == quote) quote = null
        } else if (c == '\'' || c == '"') {
            quote = c
        } else if (source.startsWith(close, i)) {
            return i
        }
        i++
    }
    return -1
}

private enum class T { NAME, STRING, INT, FLOAT, OP, END }

private data class Token(val type: T, val text: String, val value: Any? = null)

private val OPERATORS = listOf("//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">",
    "(", ")", "[", "]", "{", "}", ",", ".", ":", "|", "=")

private fun lex(code: String): List<Token> {
    val tokens = mutableListOf<Token>()
    var i = 0
    while (i < code.length) {
        val c = code[i]
        when {
            c.isWhitespace() -> i++
            c.isLetter() || c == '_' -> {
                val start = i
                while (i < code.length && (code[i].isLetterOrDigit() || code[i] == '_')) i++
                tokens += Token(T.NAME, code.substring(start, i))
            }
            c.isDigit() -> {
                val start = i
                while (i < code.length && (code[i].isDigit() || code[i] == '_')) i++
                if (i + 1 < code.length && code[i] == '.' && code[i + 1].isDigit()) {
                    i++
                    while (i < code.length && code[i].isDigit()) i++
                    tokens += Token(T.FLOAT, code.substring(start, i), code.substring(start, i).toDouble())
                } else {
                    tokens += Token(T.INT, code.substring(start, i), code.substring(start, i).replace("_", "").toLong())
                }
            }
            c == '\'' || c == '"' -> {
                val sb = StringBuilder()
                i++
                while (i < code.length && code[i] != c) {
                    if (code[i] == '\\' && i + 1 < code.length) {
                        i++
                        sb.append(
                            when (code[i]) {
                                'n' -> '\n'; 't' -> '\t'; 'r' -> '\r'; '\\' -> '\\'; '\'' -> '\''; '"' -> '"'
                                else -> throw JinjaUnsupported("unsupported string escape '\\${code[i]}'")
                            }
                        )
                    } else {
                        sb.append(code[i])
                    }
                    i++
                }
                if (i >= code.length) throw JinjaTemplateError("unterminated string in '$code'")
                i++
                tokens += Token(T.STRING, sb.toString(), sb.toString())
            }
            else -> {
                val op = OPERATORS.firstOrNull { code.startsWith(it, i) }
                    ?: throw JinjaTemplateError("unexpected character '$c' in '$code'")
                tokens += Token(T.OP, op)
                i += op.length
            }
        }
    }
    tokens += Token(T.END, "")
    return tokens
}

// ---------------------------------------------------------------- syntax tree

private sealed class Node {
    data class Text(val text: String) : Node()
    data class Output(val expr: Expr) : Node()
    data class If(val branches: List<Pair<Expr, List<Node>>>, val orElse: List<Node>) : Node()
    data class For(val names: List<String>, val iterable: Expr, val filter: Expr?, val body: List<Node>,
                   val orElse: List<Node>) : Node()
    data class Set(val name: String, val attribute: String?, val expr: Expr) : Node()
    object Break : Node()
    object Continue : Node()
}

private sealed class Expr {
    data class Literal(val value: Any?) : Expr()
    data class Name(val name: String) : Expr()
    data class ListExpr(val items: List<Expr>) : Expr()
    data class DictExpr(val items: List<Pair<Expr, Expr>>) : Expr()
    data class Attr(val target: Expr, val name: String) : Expr()
    data class Item(val target: Expr, val index: Expr) : Expr()
    data class Slice(val target: Expr, val start: Expr?, val stop: Expr?, val step: Expr?) : Expr()
    data class Call(val target: Expr, val args: List<Expr>, val kwargs: List<Pair<String, Expr>>) : Expr()
    data class Filter(val target: Expr, val name: String, val args: List<Expr>, val kwargs: List<Pair<String, Expr>>) : Expr()
    data class Test(val target: Expr, val name: String, val args: List<Expr>, val negated: Boolean) : Expr()
    data class Binary(val op: String, val left: Expr, val right: Expr) : Expr()
    data class Unary(val op: String, val operand: Expr) : Expr()
    data class Conditional(val condition: Expr, val then: Expr, val orElse: Expr?) : Expr()
}

private val UNSUPPORTED_TAGS = setOf("macro", "call", "include", "import", "from", "extends", "block", "filter",
    "with", "raw", "autoescape", "generation", "do")

private class Parser(private val chunks: List<Chunk>) {
    private var index = 0

    fun parseAll(): List<Node> {
        val (nodes, end) = parseBody(emptySet())
        if (end != null) throw JinjaTemplateError("unexpected {% $end %}")
        return nodes
    }

    /** Nodes up to a statement whose keyword is in `stops` (returned with its tokens). */
    private fun parseBody(stops: Set<String>): Pair<List<Node>, String?> {
        val nodes = mutableListOf<Node>()
        while (index < chunks.size) {
            when (val chunk = chunks[index++]) {
                is Chunk.Text -> nodes += Node.Text(chunk.text)
                is Chunk.Output -> nodes += Node.Output(ExprParser(lex(chunk.code)).parseComplete())
                is Chunk.Statement -> {
                    val tokens = lex(chunk.code)
                    val keyword = tokens.first().text
                    if (keyword in stops) {
                        index--
                        return nodes to keyword
                    }
                    nodes += parseStatement(keyword, tokens)
                }
            }
        }
        if (stops.isNotEmpty()) throw JinjaTemplateError("missing {% ${stops.last()} %}")
        return nodes to null
    }

    private fun statementTokens(): List<Token> = lex((chunks[index++] as Chunk.Statement).code)

    private fun parseStatement(keyword: String, tokens: List<Token>): Node = when (keyword) {
        "if" -> {
            val branches = mutableListOf<Pair<Expr, List<Node>>>()
            var condition = ExprParser(tokens.drop(1)).parseComplete()
            var orElse = emptyList<Node>()
            while (true) {
                val (body, end) = parseBody(setOf("elif", "else", "endif"))
                branches += condition to body
                val next = statementTokens()
                when (end) {
                    "elif" -> condition = ExprParser(next.drop(1)).parseComplete()
                    "else" -> {
                        orElse = parseBody(setOf("endif")).first
                        statementTokens()
                        break
                    }
                    else -> break
                }
            }
            Node.If(branches, orElse)
        }
        "for" -> {
            val parser = ExprParser(tokens.drop(1))
            val names = mutableListOf(parser.expectName())
            while (parser.accept(",")) names += parser.expectName()
            parser.expectKeyword("in")
            val iterable = parser.parseExpression(allowConditional = false)
            val filter = if (parser.acceptKeyword("if")) parser.parseExpression() else null
            if (parser.acceptKeyword("recursive")) throw JinjaUnsupported("unsupported Jinja for-loop option 'recursive'")
            parser.expectEnd()
            val (body, end) = parseBody(setOf("else", "endfor"))
            statementTokens()
            val orElse = if (end == "else") parseBody(setOf("endfor")).first.also { statementTokens() } else emptyList()
            Node.For(names, iterable, filter, body, orElse)
        }
        "set" -> {
            val parser = ExprParser(tokens.drop(1))
            val name = parser.expectName()
            val attribute = if (parser.accept(".")) parser.expectName() else null
            if (!parser.accept("=")) throw JinjaUnsupported("unsupported Jinja block assignment {% set $name %}…{% endset %}")
            Node.Set(name, attribute, parser.parseComplete())
        }
        "break" -> Node.Break
        "continue" -> Node.Continue
        in UNSUPPORTED_TAGS -> throw JinjaUnsupported("unsupported Jinja tag '$keyword'")
        else -> throw JinjaTemplateError("unknown Jinja tag '$keyword'")
    }
}

private class ExprParser(private val tokens: List<Token>) {
    private var pos = 0
    private val peek get() = tokens[pos]

    fun parseComplete(): Expr = parseExpression().also { expectEnd() }

    fun expectEnd() {
        if (peek.type != T.END) throw JinjaTemplateError("unexpected '${peek.text}' in expression")
    }

    fun accept(op: String): Boolean = (peek.type == T.OP && peek.text == op).also { if (it) pos++ }

    fun acceptKeyword(word: String): Boolean = (peek.type == T.NAME && peek.text == word).also { if (it) pos++ }

    fun expectKeyword(word: String) {
        if (!acceptKeyword(word)) throw JinjaTemplateError("expected '$word', found '${peek.text}'")
    }

    fun expect(op: String) {
        if (!accept(op)) throw JinjaTemplateError("expected '$op', found '${peek.text}'")
    }

    fun expectName(): String {
        if (peek.type != T.NAME) throw JinjaTemplateError("expected a name, found '${peek.text}'")
        return tokens[pos++].text
    }

    fun parseExpression(allowConditional: Boolean = true): Expr {
        val value = parseOr()
        if (allowConditional && acceptKeyword("if")) {
            val condition = parseOr()
            val orElse = if (acceptKeyword("else")) parseExpression() else null
            return Expr.Conditional(condition, value, orElse)
        }
        return value
    }

    private fun parseOr(): Expr {
        var left = parseAnd()
        while (acceptKeyword("or")) left = Expr.Binary("or", left, parseAnd())
        return left
    }

    private fun parseAnd(): Expr {
        var left = parseNot()
        while (acceptKeyword("and")) left = Expr.Binary("and", left, parseNot())
        return left
    }

    private fun parseNot(): Expr = if (acceptKeyword("not")) Expr.Unary("not", parseNot()) else parseCompare()

    private fun parseCompare(): Expr {
        var left = parseMath1()
        while (true) {
            left = when {
                peek.type == T.OP && peek.text in setOf("==", "!=", "<", ">", "<=", ">=") -> {
                    val op = tokens[pos++].text
                    Expr.Binary(op, left, parseMath1())
                }
                acceptKeyword("in") -> Expr.Binary("in", left, parseMath1())
                peek.type == T.NAME && peek.text == "not" && tokens[pos + 1].text == "in" -> {
                    pos += 2
                    Expr.Binary("not in", left, parseMath1())
                }
                else -> return left
            }
        }
    }

    private fun parseMath1(): Expr {
        var left = parseConcat()
        while (peek.type == T.OP && (peek.text == "+" || peek.text == "-")) {
            val op = tokens[pos++].text
            left = Expr.Binary(op, left, parseConcat())
        }
        return left
    }

    private fun parseConcat(): Expr {
        var left = parseMath2()
        while (accept("~")) left = Expr.Binary("~", left, parseMath2())
        return left
    }

    private fun parseMath2(): Expr {
        var left = parseUnary()
        while (peek.type == T.OP && peek.text in setOf("*", "/", "//", "%")) {
            val op = tokens[pos++].text
            left = Expr.Binary(op, left, parseUnary())
        }
        if (peek.type == T.OP && peek.text == "**") throw JinjaUnsupported("unsupported Jinja operator '**'")
        return left
    }

    private fun parseUnary(): Expr {
        if (accept("-")) return parseFilters(Expr.Unary("-", parseUnary()))
        if (accept("+")) return parseUnary()
        return parseFilters(parsePostfix(parsePrimary()))
    }

    private fun parsePrimary(): Expr {
        val token = tokens[pos++]
        return when (token.type) {
            T.STRING -> {
                var text = token.value as String
                while (peek.type == T.STRING) text += tokens[pos++].value as String
                Expr.Literal(text)
            }
            T.INT, T.FLOAT -> Expr.Literal(token.value)
            T.NAME -> when (token.text) {
                "true", "True" -> Expr.Literal(true)
                "false", "False" -> Expr.Literal(false)
                "none", "None" -> Expr.Literal(null)
                else -> Expr.Name(token.text)
            }
            T.OP -> when (token.text) {
                "(" -> {
                    val inner = parseExpression()
                    if (accept(",")) throw JinjaUnsupported("unsupported Jinja tuple literal")
                    expect(")")
                    inner
                }
                "[" -> {
                    val items = mutableListOf<Expr>()
                    while (!accept("]")) {
                        items += parseExpression()
                        if (!accept(",")) {
                            expect("]")
                            break
                        }
                    }
                    Expr.ListExpr(items)
                }
                "{" -> {
                    val items = mutableListOf<Pair<Expr, Expr>>()
                    while (!accept("}")) {
                        val key = parseExpression()
                        expect(":")
                        items += key to parseExpression()
                        if (!accept(",")) {
                            expect("}")
                            break
                        }
                    }
                    Expr.DictExpr(items)
                }
                else -> throw JinjaTemplateError("unexpected '${token.text}' in expression")
            }
            T.END -> throw JinjaTemplateError("unexpected end of expression")
        }
    }

    private fun parsePostfix(start: Expr): Expr {
        var expr = start
        while (true) {
            expr = when {
                accept(".") -> {
                    if (peek.type == T.INT) Expr.Item(expr, Expr.Literal(tokens[pos++].value)) else Expr.Attr(expr, expectName())
                }
                accept("[") -> parseSubscript(expr)
                accept("(") -> parseCall(expr)
                else -> return expr
            }
        }
    }

    private fun parseSubscript(target: Expr): Expr {
        val start = if (peek.text == ":") null else parseExpression()
        if (accept("]")) return Expr.Item(target, start!!)
        expect(":")
        val stop = if (peek.text == ":" || peek.text == "]") null else parseExpression()
        val step = if (accept(":") && peek.text != "]") parseExpression() else null
        expect("]")
        return Expr.Slice(target, start, stop, step)
    }

    private fun parseArguments(): Pair<List<Expr>, List<Pair<String, Expr>>> {
        val args = mutableListOf<Expr>()
        val kwargs = mutableListOf<Pair<String, Expr>>()
        while (!accept(")")) {
            if (peek.type == T.NAME && tokens[pos + 1].text == "=") {
                val name = tokens[pos].text
                pos += 2
                kwargs += name to parseExpression()
            } else {
                args += parseExpression()
            }
            if (!accept(",")) {
                expect(")")
                break
            }
        }
        return args to kwargs
    }

    private fun parseCall(target: Expr): Expr {
        val (args, kwargs) = parseArguments()
        return Expr.Call(target, args, kwargs)
    }

    private fun parseFilters(start: Expr): Expr {
        var expr = start
        while (true) {
            expr = when {
                accept("|") -> {
                    val name = expectName()
                    val (args, kwargs) = if (accept("(")) parseArguments() else emptyList<Expr>() to emptyList()
                    Expr.Filter(expr, name, args, kwargs)
                }
                acceptKeyword("is") -> {
                    val negated = acceptKeyword("not")
                    val name = expectName()
                    val args = if (accept("(")) parseArguments().first else emptyList()
                    Expr.Test(expr, name, args, negated)
                }
                accept("(") -> parseCall(expr)
                else -> return expr
            }
        }
    }
}

// ---------------------------------------------------------------- evaluation

private class Scope(val vars: MutableMap<String, Any?>, val parent: Scope?) {
    fun lookup(name: String): Any? {
        var scope: Scope? = this
        while (scope != null) {
            if (name in scope.vars) return scope.vars[name]
            scope = scope.parent
        }
        return Undefined
    }
}

private class BreakSignal : RuntimeException()
private class ContinueSignal : RuntimeException()

private class Renderer(private val out: StringBuilder) {
    fun run(nodes: List<Node>, scope: Scope) {
        for (node in nodes) when (node) {
            is Node.Text -> out.append(node.text)
            is Node.Output -> out.append(str(eval(node.expr, scope)))
            is Node.If -> {
                val branch = node.branches.firstOrNull { truthy(eval(it.first, scope)) }
                run(branch?.second ?: node.orElse, scope)
            }
            is Node.For -> runFor(node, scope)
            is Node.Set -> {
                val value = eval(node.expr, scope)
                if (node.attribute == null) {
                    scope.vars[node.name] = value
                } else {
                    val target = scope.lookup(node.name) as? Namespace
                        ?: throw JinjaTemplateError("cannot set attribute '${node.attribute}' of '${node.name}': not a namespace")
                    target.values[node.attribute] = value
                }
            }
            Node.Break -> throw BreakSignal()
            Node.Continue -> throw ContinueSignal()
        }
    }

    private fun runFor(node: Node.For, scope: Scope) {
        val all = iterate(eval(node.iterable, scope))
        val loopScope = Scope(mutableMapOf(), scope) // jinja2: assignments in a loop stay in the loop
        val items = if (node.filter == null) all else all.filter { item ->
            bind(node.names, item, loopScope)
            truthy(eval(node.filter, loopScope))
        }
        if (items.isEmpty()) {
            run(node.orElse, scope)
            return
        }
        for ((i, item) in items.withIndex()) {
            bind(node.names, item, loopScope)
            loopScope.vars["loop"] = mapOf(
                "index" to (i + 1).toLong(), "index0" to i.toLong(), "first" to (i == 0), "last" to (i == items.size - 1),
                "length" to items.size.toLong(), "revindex" to (items.size - i).toLong(),
                "revindex0" to (items.size - i - 1).toLong(),
                "previtem" to (if (i > 0) items[i - 1] else Undefined),
                "nextitem" to (if (i < items.size - 1) items[i + 1] else Undefined),
            )
            try {
                run(node.body, loopScope)
            } catch (_: ContinueSignal) {
                continue
            } catch (_: BreakSignal) {
                break
            }
        }
    }

    private fun bind(names: List<String>, item: Any?, scope: Scope) {
        if (names.size == 1) {
            scope.vars[names[0]] = item
            return
        }
        val parts = iterate(item)
        if (parts.size != names.size) throw JinjaTemplateError("cannot unpack ${parts.size} values into ${names.size} names")
        names.zip(parts).forEach { (n, v) -> scope.vars[n] = v }
    }

    fun eval(expr: Expr, scope: Scope): Any? = when (expr) {
        is Expr.Literal -> expr.value
        is Expr.Name -> scope.lookup(expr.name)
        is Expr.ListExpr -> expr.items.map { eval(it, scope) }
        is Expr.DictExpr -> LinkedHashMap<Any?, Any?>().apply { expr.items.forEach { put(eval(it.first, scope), eval(it.second, scope)) } }
        is Expr.Attr -> attribute(eval(expr.target, scope), expr.name)
        is Expr.Item -> item(eval(expr.target, scope), eval(expr.index, scope))
        is Expr.Slice -> slice(eval(expr.target, scope), expr.start?.let { eval(it, scope) },
            expr.stop?.let { eval(it, scope) }, expr.step?.let { eval(it, scope) })
        is Expr.Call -> call(eval(expr.target, scope), expr.args.map { eval(it, scope) },
            expr.kwargs.associate { it.first to eval(it.second, scope) })
        is Expr.Filter -> filter(expr.name, eval(expr.target, scope), expr.args.map { eval(it, scope) },
            expr.kwargs.associate { it.first to eval(it.second, scope) })
        is Expr.Test -> test(expr.name, eval(expr.target, scope), expr.args.map { eval(it, scope) }) != expr.negated
        is Expr.Unary -> when (expr.op) {
            "not" -> !truthy(eval(expr.operand, scope))
            else -> when (val v = eval(expr.operand, scope)) {
                is Long -> -v
                is Double -> -v
                else -> throw JinjaTemplateError("bad operand for unary -: ${typeName(v)}")
            }
        }
        is Expr.Conditional -> if (truthy(eval(expr.condition, scope))) eval(expr.then, scope)
        else expr.orElse?.let { eval(it, scope) } ?: Undefined
        is Expr.Binary -> when (expr.op) {
            "and" -> eval(expr.left, scope).let { if (!truthy(it)) it else eval(expr.right, scope) }
            "or" -> eval(expr.left, scope).let { if (truthy(it)) it else eval(expr.right, scope) }
            else -> binary(expr.op, eval(expr.left, scope), eval(expr.right, scope))
        }
    }
}

// ---------------------------------------------------------------- Python value semantics

internal fun normalize(value: Any?): Any? = when (value) {
    is Int -> value.toLong()
    is Float -> value.toDouble()
    is Map<*, *> -> LinkedHashMap<Any?, Any?>().apply { value.forEach { (k, v) -> put(k, normalize(v)) } }
    is List<*> -> value.map { normalize(it) }
    else -> value
}

private fun typeName(v: Any?): String = when (v) {
    null -> "NoneType"; Undefined -> "Undefined"; is String -> "str"; is Long -> "int"; is Double -> "float"
    is Boolean -> "bool"; is List<*> -> "list"; is Map<*, *> -> "dict"; else -> v::class.simpleName ?: "object"
}

internal fun truthy(v: Any?): Boolean = when (v) {
    null, Undefined -> false
    is Boolean -> v
    is Long -> v != 0L
    is Double -> v != 0.0
    is String -> v.isNotEmpty()
    is List<*> -> v.isNotEmpty()
    is Map<*, *> -> v.isNotEmpty()
    else -> true
}

/** Python's str() of a value, as {{ }} prints it. */
internal fun str(v: Any?): String = when (v) {
    is String -> v
    Undefined -> ""
    else -> repr(v)
}

private fun repr(v: Any?): String = when (v) {
    null -> "None"
    Undefined -> ""
    is Boolean -> if (v) "True" else "False"
    is Long -> v.toString()
    is Double -> pythonFloat(v)
    is String -> "'" + v.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"
    is List<*> -> v.joinToString(", ", "[", "]") { repr(it) }
    is Map<*, *> -> v.entries.joinToString(", ", "{", "}") { repr(it.key) + ": " + repr(it.value) }
    else -> v.toString()
}

private fun pythonFloat(d: Double): String = when {
    d.isNaN() -> "nan"
    d.isInfinite() -> if (d > 0) "inf" else "-inf"
    d == Math.floor(d) && Math.abs(d) < 1e16 -> d.toLong().toString() + ".0"
    else -> d.toString()
}

private fun equal(a: Any?, b: Any?): Boolean = when {
    a is Long && b is Double -> a.toDouble() == b
    a is Double && b is Long -> a == b.toDouble()
    a is Boolean && b is Long -> (if (a) 1L else 0L) == b
    a is Long && b is Boolean -> a == (if (b) 1L else 0L)
    a is List<*> && b is List<*> -> a.size == b.size && a.indices.all { equal(a[it], b[it]) }
    else -> a == b
}

private fun number(v: Any?): Double? = when (v) {
    is Long -> v.toDouble(); is Double -> v; is Boolean -> if (v) 1.0 else 0.0; else -> null
}

private fun compare(a: Any?, b: Any?): Int {
    val x = number(a)
    val y = number(b)
    if (x != null && y != null) return x.compareTo(y)
    if (a is String && b is String) return a.compareTo(b)
    throw JinjaTemplateError("cannot compare ${typeName(a)} with ${typeName(b)}")
}

private fun floorMod(a: Long, b: Long): Long = Math.floorMod(a, b)

private fun binary(op: String, a: Any?, b: Any?): Any? = when (op) {
    "==" -> equal(a, b)
    "!=" -> !equal(a, b)
    "<" -> compare(a, b) < 0
    ">" -> compare(a, b) > 0
    "<=" -> compare(a, b) <= 0
    ">=" -> compare(a, b) >= 0
    "in" -> contains(b, a)
    "not in" -> !contains(b, a)
    "~" -> str(a) + str(b)
    "+" -> when {
        a is String && b is String -> a + b
        a is List<*> && b is List<*> -> a + b
        a is Long && b is Long -> a + b
        number(a) != null && number(b) != null && a !is Boolean && b !is Boolean -> number(a)!! + number(b)!!
        else -> throw JinjaTemplateError("unsupported operand types for +: ${typeName(a)} and ${typeName(b)}")
    }
    else -> arithmetic(op, a, b)
}

private fun arithmetic(op: String, a: Any?, b: Any?): Any? {
    if (op == "*" && a is String && b is Long) return a.repeat(maxOf(0, b.toInt()))
    if (a is Long && b is Long && op != "/") {
        if ((op == "//" || op == "%") && b == 0L) throw JinjaTemplateError("integer division or modulo by zero")
        return when (op) { "-" -> a - b; "*" -> a * b; "//" -> Math.floorDiv(a, b); else -> floorMod(a, b) }
    }
    val x = number(a) ?: throw JinjaTemplateError("unsupported operand type for $op: ${typeName(a)}")
    val y = number(b) ?: throw JinjaTemplateError("unsupported operand type for $op: ${typeName(b)}")
    return when (op) {
        "-" -> x - y
        "*" -> x * y
        "/" -> if (y == 0.0) throw JinjaTemplateError("division by zero") else x / y
        "//" -> Math.floor(x / y)
        else -> x - y * Math.floor(x / y)
    }
}

private fun contains(container: Any?, item: Any?): Boolean = when (container) {
    is String -> item is String && container.contains(item)
    is List<*> -> container.any { equal(it, item) }
    is Map<*, *> -> container.containsKey(item)
    Undefined -> false
    else -> throw JinjaTemplateError("argument of type ${typeName(container)} is not iterable")
}

private fun iterate(v: Any?): List<Any?> = when (v) {
    is List<*> -> v
    is Map<*, *> -> v.keys.toList()
    is String -> v.codePoints().toArray().map { String(Character.toChars(it)) }
    Undefined -> emptyList()
    else -> throw JinjaTemplateError("${typeName(v)} is not iterable")
}

private fun attribute(target: Any?, name: String): Any? = when (target) {
    is Namespace -> if (name in target.values) target.values[name] else Undefined
    is Map<*, *> -> if (target.containsKey(name)) target[name] else if (name in DICT_METHODS) BoundMethod(target, name) else Undefined
    is String -> if (name in STRING_METHODS) BoundMethod(target, name) else Undefined
    Undefined -> throw JinjaTemplateError("'$name' of an undefined value")
    else -> Undefined
}

private fun item(target: Any?, index: Any?): Any? = when (target) {
    is List<*> -> (index as? Long)?.let { i -> val j = if (i < 0) i + target.size else i; if (j in 0 until target.size) target[j.toInt()] else Undefined }
        ?: throw JinjaTemplateError("list indices must be integers, not ${typeName(index)}")
    is String -> {
        val points = iterate(target)
        (index as? Long)?.let { i -> val j = if (i < 0) i + points.size else i; if (j in 0 until points.size) points[j.toInt()] else Undefined }
            ?: throw JinjaTemplateError("string indices must be integers")
    }
    is Map<*, *> -> if (target.containsKey(index)) target[index] else Undefined
    is Namespace -> attribute(target, str(index))
    Undefined -> throw JinjaTemplateError("index ${repr(index)} of an undefined value")
    else -> Undefined
}

private fun slice(target: Any?, start: Any?, stop: Any?, step: Any?): Any? {
    val items = when (target) { is List<*> -> target; is String -> iterate(target); else -> throw JinjaTemplateError("cannot slice ${typeName(target)}") }
    val n = items.size
    val s = (step as? Long) ?: 1L
    if (s == 0L) throw JinjaTemplateError("slice step cannot be zero")
    fun clamp(v: Any?, default: Long, low: Long, high: Long): Long {
        if (v == null) return default
        var i = v as? Long ?: throw JinjaTemplateError("slice indices must be integers")
        if (i < 0) i += n
        return i.coerceIn(low, high)
    }
    val picked = mutableListOf<Any?>()
    if (s > 0) {
        var i = clamp(start, 0, 0, n.toLong())
        val end = clamp(stop, n.toLong(), 0, n.toLong())
        while (i < end) { picked += items[i.toInt()]; i += s }
    } else {
        var i = clamp(start, n - 1L, -1, n - 1L)
        val end = clamp(stop, -1, -1, n - 1L).let { if (stop == null) -1 else it }
        while (i > end) { picked += items[i.toInt()]; i += s }
    }
    return if (target is String) picked.joinToString("") { it as String } else picked
}

private fun range(args: List<Any?>): List<Any?> {
    val ints = args.map { it as? Long ?: throw JinjaTemplateError("range() takes integers") }
    val (start, stop, step) = when (ints.size) {
        1 -> Triple(0L, ints[0], 1L); 2 -> Triple(ints[0], ints[1], 1L); 3 -> Triple(ints[0], ints[1], ints[2])
        else -> throw JinjaTemplateError("range() takes 1 to 3 arguments")
    }
    if (step == 0L) throw JinjaTemplateError("range() step must not be zero")
    val out = mutableListOf<Any?>()
    var i = start
    while (if (step > 0) i < stop else i > stop) { out += i; i += step }
    return out
}

private val STRING_METHODS = setOf("strip", "lstrip", "rstrip", "startswith", "endswith", "split", "upper", "lower",
    "title", "capitalize", "replace")
private val DICT_METHODS = setOf("items", "keys", "values", "get")

private fun call(target: Any?, args: List<Any?>, kwargs: Map<String, Any?>): Any? = when (target) {
    is Callable -> target.call(args, kwargs)
    is BoundMethod -> callMethod(target.receiver, target.name, args)
    Undefined -> throw JinjaTemplateError("call of an undefined function")
    else -> throw JinjaTemplateError("${typeName(target)} is not callable")
}

/** Python's str.strip(): whitespace (or the given characters) from the ends. */
private fun pyStrip(s: String, chars: Any?, left: Boolean, right: Boolean): String {
    val drop: (Char) -> Boolean = if (chars is String) { c -> c in chars } else { c -> c.isWhitespace() }
    var a = 0
    var b = s.length
    if (left) while (a < b && drop(s[a])) a++
    if (right) while (b > a && drop(s[b - 1])) b--
    return s.substring(a, b)
}

private fun title(s: String): String {
    val sb = StringBuilder()
    var previousCased = false
    for (c in s) {
        sb.append(if (previousCased) c.lowercaseChar() else c.uppercaseChar())
        previousCased = c.isLetter()
    }
    return sb.toString()
}

private fun callMethod(receiver: Any?, name: String, args: List<Any?>): Any? {
    if (receiver is Map<*, *>) return when (name) {
        "items" -> receiver.entries.map { listOf(it.key, it.value) }
        "keys" -> receiver.keys.toList()
        "values" -> receiver.values.toList()
        else -> if (receiver.containsKey(args.firstOrNull())) receiver[args.first()] else args.getOrNull(1)
    }
    val s = receiver as String
    return when (name) {
        "strip" -> pyStrip(s, args.firstOrNull(), left = true, right = true)
        "lstrip" -> pyStrip(s, args.firstOrNull(), left = true, right = false)
        "rstrip" -> pyStrip(s, args.firstOrNull(), left = false, right = true)
        "startswith" -> s.startsWith(args[0] as String)
        "endswith" -> s.endsWith(args[0] as String)
        "upper" -> s.uppercase()
        "lower" -> s.lowercase()
        "title" -> title(s)
        "capitalize" -> if (s.isEmpty()) s else s.substring(0, 1).uppercase() + s.substring(1).lowercase()
        "replace" -> s.replace(args[0] as String, args[1] as String)
        else -> { // split
            val sep = args.firstOrNull()
            if (sep == null) s.trim().split(Regex("\\s+")).filter { it.isNotEmpty() } else s.split(sep as String)
        }
    }
}

private fun toJson(v: Any?): String = when (v) {
    null, Undefined -> "null"
    is Boolean -> v.toString()
    is Long -> v.toString()
    is Double -> pythonFloat(v)
    is String -> buildString {
        append('"')
        for (c in v) when (c) {
            '"' -> append("\\\""); '\\' -> append("\\\\"); '\n' -> append("\\n"); '\r' -> append("\\r"); '\t' -> append("\\t")
            '\b' -> append("\\b"); '\u000C' -> append("\\f")
            else -> if (c < ' ') append(String.format("\\u%04x", c.code)) else append(c)
        }
        append('"')
    }
    is List<*> -> v.joinToString(", ", "[", "]") { toJson(it) }
    is Map<*, *> -> v.entries.joinToString(", ", "{", "}") { toJson(str(it.key)) + ": " + toJson(it.value) }
    else -> throw JinjaTemplateError("${typeName(v)} is not JSON serializable")
}

private fun length(v: Any?): Long = when (v) {
    is String -> v.codePointCount(0, v.length).toLong()
    is List<*> -> v.size.toLong()
    is Map<*, *> -> v.size.toLong()
    Undefined -> 0L
    else -> throw JinjaTemplateError("object of type ${typeName(v)} has no len()")
}

private val FILTERS = setOf("trim", "length", "count", "upper", "lower", "title", "capitalize", "string", "first",
    "last", "join", "default", "d", "tojson", "list", "reverse", "replace", "int", "float", "abs")

private fun filter(name: String, v: Any?, args: List<Any?>, kwargs: Map<String, Any?>): Any? = when (name) {
    "trim" -> pyStrip(str(v), args.firstOrNull(), left = true, right = true)
    "length", "count" -> length(v)
    "upper" -> str(v).uppercase()
    "lower" -> str(v).lowercase()
    "title" -> title(str(v))
    "capitalize" -> callMethod(str(v), "capitalize", emptyList())
    "string" -> str(v)
    "first" -> iterate(v).firstOrNull() ?: Undefined
    "last" -> iterate(v).lastOrNull() ?: Undefined
    "join" -> iterate(v).joinToString(args.firstOrNull()?.let { str(it) } ?: "") { str(it) }
    "default", "d" -> {
        val useFalsy = truthy(args.getOrNull(1) ?: kwargs["boolean"])
        if (v === Undefined || (useFalsy && !truthy(v))) args.firstOrNull() ?: "" else v
    }
    "tojson" -> if (kwargs["indent"] != null || args.isNotEmpty()) throw JinjaUnsupported("unsupported Jinja filter arguments tojson(indent=…)") else toJson(v)
    "list" -> iterate(v)
    "reverse" -> if (v is String) v.reversed() else iterate(v).reversed()
    "replace" -> str(v).replace(str(args[0]), str(args[1]))
    "int" -> when (v) { is Long -> v; is Double -> v.toLong(); is String -> v.trim().toLongOrNull() ?: 0L; is Boolean -> if (v) 1L else 0L; else -> 0L }
    "float" -> number(v) ?: (v as? String)?.trim()?.toDoubleOrNull() ?: 0.0
    "abs" -> when (v) { is Long -> Math.abs(v); is Double -> Math.abs(v); else -> throw JinjaTemplateError("bad operand for abs()") }
    else -> throw JinjaUnsupported("unsupported Jinja filter '$name'").also { check(name !in FILTERS) }
}

private fun test(name: String, v: Any?, args: List<Any?>): Boolean = when (name) {
    "defined" -> v !== Undefined
    "undefined" -> v === Undefined
    "none" -> v == null
    "string" -> v is String
    "number" -> (v is Long || v is Double) && v !is Boolean
    "integer" -> v is Long
    "float" -> v is Double
    "boolean" -> v is Boolean
    "true" -> v == true
    "false" -> v == false
    "mapping" -> v is Map<*, *>
    "sequence" -> v is List<*> || v is String || v is Map<*, *>
    "iterable" -> v is List<*> || v is String || v is Map<*, *>
    "odd" -> (v as? Long)?.let { Math.floorMod(it, 2L) == 1L } ?: false
    "even" -> (v as? Long)?.let { Math.floorMod(it, 2L) == 0L } ?: false
    "divisibleby" -> (v as? Long)?.let { Math.floorMod(it, args[0] as Long) == 0L } ?: false
    "eq", "equalto", "==" -> equal(v, args.firstOrNull())
    "ne", "!=" -> !equal(v, args.firstOrNull())
    else -> throw JinjaUnsupported("unsupported Jinja test '$name'")
}
