import XCTest

@testable import MobileKitCore

/// Behaviours the golden vectors do not all reach (mirrors android-demo's JinjaTest/SamplerTest).
final class CoreTests: XCTestCase {
    private func render(_ template: String, _ context: [String: Any?] = [:]) throws -> String {
        try JinjaTemplate(template).render(context)
    }

    func testTrimBlocksAndLstripBlocks() throws {
        let template = "{% for x in xs %}\n    {% if x %}\n{{ x }}\n    {% endif %}\n{% endfor %}"
        XCTAssertEqual(try render(template, ["xs": ["a", "", "b"]]), "a\nb\n")
    }

    func testLoopNamespaceAndScoping() throws {
        let template = "{% set ns = namespace(n=0) %}{% for x in xs %}{% set ns.n = ns.n + x %}"
            + "{{ loop.index }}/{{ loop.length }}{{ ',' if not loop.last }}{% endfor %}={{ ns.n }}"
        XCTAssertEqual(try render(template, ["xs": [1, 2, 3]]), "1/3,2/3,3/3=6")
        XCTAssertEqual(try render("{% set v = 'outer' %}{% for x in [1] %}{% set v = 'inner' %}{% endfor %}{{ v }}"), "outer")
    }

    func testSlicesMethodsAndPrinting() throws {
        XCTAssertEqual(try render("{{ xs[1:] }}|{{ xs[-1] }}|{{ 'abc'[::-1] }}|{{ none }}|{{ x is defined }}", ["xs": [1, 2, 3]]),
                       "[2, 3]|3|cba|None|False")
    }

    func testErrorsAreNamed() {
        XCTAssertThrowsError(try render("{{ raise_exception('no system role') }}")) { error in
            XCTAssertEqual(error as? JinjaError, .template("no system role"))
        }
        XCTAssertThrowsError(try render("{% macro m() %}{% endmacro %}")) { error in
            XCTAssertEqual(error as? JinjaError, .unsupported("unsupported Jinja tag 'macro'"))
        }
    }

    func testSamplerSeedsAndGreedy() {
        let logits: [Float] = [0.5, 2.0, 1.9, -1.0, 2.0]
        var greedy = Sampler(SamplingConfig())
        XCTAssertEqual(greedy.sample(logits), 1)
        func draws(_ seed: UInt64) -> [Int] {
            var s = Sampler(SamplingConfig(temperature: 1.5, topP: 1, seed: seed))
            return (0..<40).map { _ in s.sample(logits) }
        }
        XCTAssertEqual(draws(42), draws(42))
        XCTAssertNotEqual(draws(42), draws(43))
    }

    func testStopFilterHoldsThenReleases() {
        let filter = StopStringFilter(["<|im_end|>"])
        XCTAssertEqual(filter.feed("Hi <|im"), "Hi ")
        XCTAssertEqual(filter.feed("x"), "<|imx")
        XCTAssertFalse(filter.stopped)
    }
}
