"""android-demo/ and ios-demo/ on Linux: their core logic against golden vectors written by
mobilekit, and every Kotlin and Swift source parsed.

- The Kotlin core (manifest, Jinja chat templates, stop strings, sampling) is compiled with
  kotlinc and its JUnit tests run against goldens written fresh from tiny bundles of every
  target, by android-demo/tests/run-linux-checks.sh (which also type-checks the engines against
  stubs of the runtimes).
- The committed goldens (ios-demo/.../Goldens, read by the Swift tests on a Mac and by Gradle)
  must equal fresh ones, so Python, Kotlin and Swift cannot drift apart.
- Swift cannot be compiled here (no Swift toolchain on Linux machines of this project): its
  sources are only parsed.
"""

import json
import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "ios-demo/MobileKitCore/Tests/MobileKitCoreTests/Goldens"
TEMPLATES = Path(__file__).with_name("chat_templates.json")
GOLDEN_FILES = ("prompts.json", "sampling.json", "stops.json", "manifests.json")


@pytest.fixture(scope="session")
def tiny_bundles(tiny_llama_dir, tmp_path_factory):
    """One unvalidated bundle per target of the tiny Llama, of the tiny LFM2 (a hybrid whose
    conv layers carry a conv state beside the attention layers' KV cache) and of the tiny
    Qwen3.5 (whose Gated DeltaNet layers carry a conv state and a recurrent matrix each)
    (about 60 s)."""
    from mobilekit import families, pipeline
    from mobilekit.tiny import make_tiny_checkpoint

    root = tmp_path_factory.mktemp("app-bundles")
    lfm2 = make_tiny_checkpoint(root / "lfm2-checkpoint", families.get("lfm2").tiny_config)
    qwen3_5 = make_tiny_checkpoint(root / "qwen3_5-checkpoint", families.get("qwen3_5").tiny_config)
    bundles = []
    for name, folder in (("tiny-llama", tiny_llama_dir), ("tiny-lfm2", lfm2), ("tiny-qwen3_5", qwen3_5)):
        context = pipeline.make_context(None, str(folder), 64)
        bundles += [pipeline.export(context, pipeline.ExportOptions(target=t, scheme="fp32", output=root / f"{name}-{t}",
                                                                    validate=False)).path
                    for t in ("executorch", "onnx", "coreml")]
    return bundles


@pytest.fixture(scope="session")
def fresh_goldens(tiny_bundles, tmp_path_factory):
    from mobilekit.cli import main

    out = tmp_path_factory.mktemp("goldens")
    args = ["goldens", str(out), "--templates", str(TEMPLATES)]
    for bundle in tiny_bundles:
        args += ["--bundle", str(bundle)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="session")
def linux_checks(fresh_goldens):
    """run-linux-checks.sh once per session (kotlinc needs ~40 s on 2 cores)."""
    return subprocess.run([str(ROOT / "android-demo/tests/run-linux-checks.sh"), str(fresh_goldens)],
                          capture_output=True, text=True, timeout=900)


def test_kotlin_core_passes_every_golden_and_engines_type_check(linux_checks):
    output = linux_checks.stdout + linux_checks.stderr
    closing = re.search(r"^(\d+) passed, (\d+) failed$", linux_checks.stdout.strip().splitlines()[-1])
    assert closing, output[-4000:]
    assert linux_checks.returncode == 0 and closing.group(2) == "0", output[-8000:]
    assert int(closing.group(1)) > 100  # one JUnit test per golden case, plus unit tests


@pytest.mark.parametrize("name", GOLDEN_FILES)
def test_committed_goldens_equal_fresh_ones(fresh_goldens, name):
    fresh = json.loads((fresh_goldens / name).read_text())
    committed = json.loads((COMMITTED / name).read_text())
    assert committed == fresh, (
        f"{COMMITTED / name} is stale. Regenerate: mobilekit goldens {COMMITTED.relative_to(ROOT)} "
        f"--templates tests/apps/chat_templates.json --bundle <tiny bundle per target> (see ios-demo/README.md)"
    )


def test_goldens_cover_every_recipe_template(fresh_goldens):
    from mobilekit import recipes

    cases = json.loads((fresh_goldens / "prompts.json").read_text())["cases"]
    sources = {case["name"].split("/")[0] for case in cases}
    own = {r.id for r in recipes.all_recipes() if r.chat_template}
    assert own <= sources, f"add {sorted(own - sources)} (with bos/eos token strings) to {TEMPLATES}"
    assert {"smollm2-135m", "gemma2-2b-it", "tinyllama-1.1b-chat", "qwen2-instruct"} <= sources
    # each manifest target, and templates that must be refused
    manifests = json.loads((fresh_goldens / "manifests.json").read_text())["cases"]
    assert {c["manifest"]["target"] for c in manifests if c["valid"]} == {"executorch", "onnx", "coreml"}
    assert any(c.get("unsupported") for c in cases) and any("error_contains" in c for c in cases)


def test_sampler_matches_published_splitmix64():
    from mobilekit.goldens import SplitMix64

    # first output for seed 0 in Vigna's reference splitmix64.c
    assert SplitMix64(0).next() == 0xE220A8397B1DCDAF


def _sources(suffixes):
    skip = {".toolchain", "build", ".build", ".gradle"}
    return sorted(p for folder in ("android-demo", "ios-demo") for p in (ROOT / folder).rglob("*")
                  if p.suffix in suffixes and not (skip & set(p.relative_to(ROOT).parts)))


def _syntax_errors(language_module, path: Path) -> list[str]:
    import tree_sitter

    parser = tree_sitter.Parser(tree_sitter.Language(language_module.language()))
    errors = []

    def walk(node):
        if node.is_error or node.is_missing:
            errors.append(f"{path.name}:{node.start_point[0] + 1}:{node.start_point[1] + 1} "
                          f"{'missing ' + node.type if node.is_missing else 'syntax error'}")
        elif node.has_error:
            for child in node.children:
                walk(child)

    walk(parser.parse(path.read_bytes()).root_node)
    return errors


KOTLIN = _sources({".kt", ".kts"})
SWIFT = _sources({".swift"})


def test_there_are_sources_to_parse():
    assert len(KOTLIN) >= 15 and len(SWIFT) >= 10


@pytest.mark.parametrize("path", KOTLIN, ids=lambda p: str(p.relative_to(ROOT)))
def test_kotlin_source_parses(path):
    import tree_sitter_kotlin

    assert _syntax_errors(tree_sitter_kotlin, path) == []


@pytest.mark.parametrize("path", SWIFT, ids=lambda p: str(p.relative_to(ROOT)))
def test_swift_source_parses(path):
    import tree_sitter_swift

    assert _syntax_errors(tree_sitter_swift, path) == []


def test_parse_check_catches_a_syntax_error(tmp_path):
    import tree_sitter_kotlin
    import tree_sitter_swift

    (tmp_path / "broken.kt").write_text("fun main( { val x = }\n")
    (tmp_path / "broken.swift").write_text("func f( -> { let = }\n")
    assert _syntax_errors(tree_sitter_kotlin, tmp_path / "broken.kt")
    assert _syntax_errors(tree_sitter_swift, tmp_path / "broken.swift")
