import re

import pytest

from mobilekit import families, quantize, recipes, targets
from mobilekit.errors import SchemeNotSupported, UnknownNameError, UnsupportedArchitectureError


def test_target_registry_names_match_modules():
    assert targets.names() == ["coreml", "executorch", "onnx"]
    for name in targets.names():
        assert targets.get(name).name == name


def test_unknown_target_lists_available():
    with pytest.raises(UnknownNameError, match=r"Unknown target 'onx'\. Available: coreml, executorch, onnx"):
        targets.get("onx")


def test_unknown_scheme_and_family():
    with pytest.raises(UnknownNameError, match="Unknown quant scheme 'int3'. Available: auto, fp16, fp32, int4, int8"):
        quantize.get("int3")
    with pytest.raises(UnknownNameError, match="Unknown family 'bert'"):
        families.get("bert")


def test_scheme_a_target_does_not_offer():
    with pytest.raises(SchemeNotSupported, match="does not offer quant scheme 'fp16'. It offers: fp32, int8, int4"):
        targets.get("executorch").check_scheme("fp16")


def test_family_claims_architectures():
    assert families.for_architecture(["LlamaForCausalLM"]).name == "llama"
    assert families.for_architecture(["MistralForCausalLM"]).name == "llama"
    with pytest.raises(UnsupportedArchitectureError, match="Supported: .*LlamaForCausalLM"):
        families.for_architecture(["BertModel"])
    # Cerebras-GPT-2.7B's config.json has no `architectures`: its model_type decides
    assert families.for_architecture(None, "gpt2").name == "gpt2"
    assert families.for_architecture([], "gemma3_text").name == "gemma3"
    with pytest.raises(UnsupportedArchitectureError, match="Supported: .*GPT2LMHeadModel"):
        families.for_architecture(["GPT2Model"], "gpt2")  # a headless model is not claimed


def test_every_recipe_parses_and_names_a_registered_family():
    ids = recipes.names()
    assert {"smollm2-135m", "tinyllama-1.1b-chat", "mobilellama-1.4b-chat"} <= set(ids)
    for recipe in recipes.all_recipes():
        assert recipe.family in families.names()
        for target, scheme in recipe.default_quant.items():
            assert scheme in targets.get(target).offered_schemes()


def test_budgets_are_ordered_by_scheme_strictness():
    fp32, int8, int4 = (quantize.get(s).budget for s in ("fp32", "int8", "int4"))
    assert fp32.min_top1_agreement >= int8.min_top1_agreement >= int4.min_top1_agreement
    assert fp32.max_ppl_increase_pct <= int8.max_ppl_increase_pct <= int4.max_ppl_increase_pct


@pytest.mark.parametrize("name", targets.names())
def test_a_missing_module_names_itself_and_the_install_command(name, monkeypatch):
    """One availability check for every target (Target.check_available over its
    required_modules): a module that cannot be imported is named, with the pip command."""
    import sys

    from mobilekit.errors import TargetUnavailable

    target = targets.get(name)
    missing = target.required_modules[-1]
    monkeypatch.setitem(sys.modules, missing, None)
    with pytest.raises(TargetUnavailable, match=rf"{missing} .*{re.escape(target.install)}"):
        target.check_available()
