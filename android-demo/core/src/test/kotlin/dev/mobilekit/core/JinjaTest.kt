package dev.mobilekit.core

import org.junit.Assert.assertEquals
import org.junit.Assert.assertThrows
import org.junit.Assert.assertTrue
import org.junit.Test

/** Behaviours of the Jinja subset that the golden templates do not all reach. */
class JinjaTest {
    private fun render(template: String, vararg context: Pair<String, Any?>) = JinjaTemplate(template).render(mapOf(*context))

    @Test
    fun trimBlocksAndLstripBlocksLikeTransformers() {
        val template = "{% for x in xs %}\n    {% if x %}\n{{ x }}\n    {% endif %}\n{% endfor %}"
        assertEquals("a\nb\n", render(template, "xs" to listOf("a", "", "b")))
    }

    @Test
    fun dashStripsWhitespaceOnBothSides() {
        assertEquals("ab", render("a  \n {{- 'b' -}} \n  ", ))
    }

    @Test
    fun loopVariablesAndNamespaceAssignment() {
        val template = "{% set ns = namespace(n=0) %}{% for x in xs %}{% set ns.n = ns.n + x %}" +
            "{{ loop.index }}/{{ loop.length }}{{ ',' if not loop.last }}{% endfor %}={{ ns.n }}"
        assertEquals("1/3,2/3,3/3=6", render(template, "xs" to listOf(1, 2, 3)))
    }

    @Test
    fun setInsideALoopDoesNotLeak() {
        assertEquals("outer", render("{% set v = 'outer' %}{% for x in [1] %}{% set v = 'inner' %}{% endfor %}{{ v }}"))
    }

    @Test
    fun slicesIndexesAndMethods() {
        assertEquals("[2, 3]|3|cba|Hello World|x", render(
            "{{ xs[1:] }}|{{ xs[-1] }}|{{ 'abc'[::-1] }}|{{ 'hello world'.title() }}|{{ '  x '.strip() }}",
            "xs" to listOf(1, 2, 3)))
    }

    @Test
    fun testsFiltersAndPythonPrinting() {
        assertEquals("True|False|None|2|a-b|{\"k\": [1, \"x\"]}", render(
            "{{ x is defined }}|{{ y is defined }}|{{ none }}|{{ xs | length }}|{{ xs | join('-') }}|{{ d | tojson }}",
            "x" to 1, "xs" to listOf("a", "b"), "d" to mapOf("k" to listOf(1, "x"))))
    }

    @Test
    fun raiseExceptionIsTheTemplatesOwnError() {
        val error = assertThrows(JinjaTemplateError::class.java) { render("{{ raise_exception('no system role') }}") }
        assertEquals("no system role", error.message)
    }

    @Test
    fun unsupportedSyntaxIsNamed() {
        val error = assertThrows(JinjaUnsupported::class.java) { render("{% macro m() %}{% endmacro %}") }
        assertTrue(error.message!!.contains("macro"))
        assertThrows(JinjaUnsupported::class.java) { render("{{ 'a' | wordwrap }}") }
    }

    @Test
    fun brokenTemplatesFailAtParse() {
        assertThrows(JinjaTemplateError::class.java) { JinjaTemplate("{% if x %}never closed") }
        assertThrows(JinjaTemplateError::class.java) { JinjaTemplate("{{ 'unterminated }}") }
    }
}
