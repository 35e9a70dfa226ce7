"""Adding a family is one module: the registry, the architecture / model_type / GGUF lookups,
the tiny checkpoints and the recipe shrinker all read what a family module registers, and
nothing else lists families (issue 15, part 4)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from mobilekit import checkpoint, families, tiny

# A test-only family, written as a contributor would write mobilekit/families/toy.py: a Llama
# under another architecture name that transformers lacks (so tiny checkpoints are built from
# its checkpoint_shapes, not by transformers), with its own shrinker.
TOY_MODULE = textwrap.dedent('''
    from mobilekit.families import Family, llama, minicpm, register

    TINY_CONFIG = {**llama.TINY_CONFIG, "architectures": ["ToyForCausalLM"], "model_type": "toy"}


    def shrink_to_tiny(config):
        return {**config, "hidden_size": 64, "num_hidden_layers": 2, "toy_shrunk": True}


    register(Family(
        name="toy",
        architectures=("ToyForCausalLM",),
        spec_from_config=llama.spec_from_config,
        convert_weights=llama.convert_weights,
        tiny_config=TINY_CONFIG,
        shrink_to_tiny=shrink_to_tiny,
        model_types=("toy",),
        gguf_architectures={"toy": "ToyForCausalLM"},
        checkpoint_shapes=minicpm.checkpoint_shapes,  # MiniCPM stores Llama's names and shapes
    ))
''')


@pytest.fixture
def extra_family_module(tmp_path, monkeypatch):
    """write(stem, source): one more module on the families package's path, as if it were a
    file in mobilekit/families/; the registry and the package are restored afterwards."""
    families.names()  # the real families are registered before the registry is copied
    monkeypatch.setattr(families, "_REGISTRY", dict(families._REGISTRY))
    monkeypatch.setattr(families, "__path__", [*families.__path__, str(tmp_path)])
    families._registry.cache_clear()  # the package is listed once; list it again with tmp_path
    written = []

    def write(stem: str, source: str) -> None:
        (tmp_path / f"{stem}.py").write_text(source)
        written.append(stem)

    yield write
    for stem in written:
        sys.modules.pop(f"mobilekit.families.{stem}", None)
        if hasattr(families, stem):
            delattr(families, stem)
    families._registry.cache_clear()  # monkeypatch restores the real registry and path next


def test_a_new_family_is_one_module(extra_family_module, tmp_path):
    extra_family_module("toy", TOY_MODULE)

    assert "toy" in families.names() and families.names() == sorted(families.names())
    toy = families.get("toy")
    assert families.for_architecture(["ToyForCausalLM"]) is toy
    assert families.for_architecture(None, "toy") is toy  # a config.json without architectures
    assert families.gguf_architectures()["toy"] == "ToyForCausalLM"
    recipe = SimpleNamespace(family="toy", config={**toy.tiny_config, "hidden_size": 4096, "num_hidden_layers": 32})
    assert tiny.recipe_tiny_config(recipe)["toy_shrunk"]

    # A tiny checkpoint of it is written from its checkpoint_shapes, claimed by it and loads.
    folder = tiny.make_tiny_checkpoint(tmp_path / "toy-checkpoint", toy.tiny_config, tokenizer=False)
    ckpt = checkpoint.resolve(str(folder))
    assert ckpt.family is toy
    assert ckpt.build_decoder() is not None


def test_a_module_must_register_the_family_it_is_named_after(extra_family_module):
    extra_family_module("toy", TOY_MODULE.replace('name="toy"', 'name="toy2"'))
    with pytest.raises(ValueError, match="registers no family named 'toy'"):
        families.names()


def test_two_families_cannot_claim_one_architecture(extra_family_module):
    extra_family_module("toy", TOY_MODULE.replace('("ToyForCausalLM",)', '("LlamaForCausalLM",)'))
    with pytest.raises(ValueError, match=r"'llama' and 'toy' both claim architectures \['LlamaForCausalLM'\]"):
        families.names()


def test_shared_helper_modules_are_not_families():
    assert "_tiny" not in families.names()


def test_unknown_family_lists_the_registered_ones():
    from mobilekit.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="Unknown family 'bert'. Available: gemma2, gemma3, gemma3n, gpt2"):
        families.get("bert")


def test_every_family_transformers_lacks_has_an_independent_reference():
    from reference import MODULES

    lacking = [name for name in families.names() if families.get(name).hf_reference_class is None]
    assert lacking == MODULES
    assert all(families.get(name).checkpoint_shapes is not None for name in lacking)


def test_the_registry_does_not_import_torch():
    code = ("import sys, mobilekit.families as f; [f.get(n) for n in f.names()]; f.gguf_architectures(); "
            "print('torch' in sys.modules)")
    # the mobilekit under test, not another checkout installed in the venv
    root = str(Path(families.__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == "False"
