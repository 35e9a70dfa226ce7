import pytest

from mobilekit import recipes
from mobilekit.errors import RecipeError, UnknownNameError

GOOD = {
    "name": "X", "family": "llama", "repo": "a/b", "revision": "abc", "license": "MIT", "max_seq_len": 512,
    "default_quant": {"executorch": "int4"},
}


def test_from_dict_builds_a_frozen_recipe():
    recipe = recipes.from_dict("x", GOOD)
    assert recipe.id == "x" and recipe.default_quant["executorch"] == "int4"
    assert recipe.checkpoint_source == "a/b@abc"
    with pytest.raises(Exception):
        recipe.name = "y"


@pytest.mark.parametrize(
    "change, message",
    [
        ({"family": "bert"}, "family 'bert' is not one of"),
        ({"repo": "nope"}, "must be owner/name"),
        ({"max_seq_len": 4}, "max_seq_len 4 must be in"),
        ({"default_quant": {"executorch": "fp16"}}, "executorch offers fp32, int8, int4"),
        ({"default_quant": {"tflite": "int4"}}, "unknown target 'tflite'"),
        ({"budgets": {"int4": {"min_top3": 0.5}}}, "unknown budget metric"),
        ({"colour": "red"}, "unknown keys \\['colour'\\]"),
    ],
)
def test_bad_recipes_name_the_field(change, message):
    with pytest.raises(RecipeError, match=message):
        recipes.from_dict("x", {**GOOD, **change})


def test_missing_keys_are_listed():
    with pytest.raises(RecipeError, match=r"missing keys \['license', 'revision'\]"):
        recipes.from_dict("x", {k: v for k, v in GOOD.items() if k not in ("license", "revision")})


def test_unknown_recipe():
    with pytest.raises(UnknownNameError, match="Unknown recipe 'gpt5'. Available: .*smollm2-135m"):
        recipes.get("gpt5")


def test_embedded_default():
    assert recipes.get("smollm2-135m").checkpoint_source == "embedded"
