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
        ({"default_quant": {"executorch": "fp16"}}, "executorch offers fp32, int8, int4, auto"),
        ({"default_quant": {"executorch": "auto"}}, "needs \\[auto_goal.executorch\\]"),
        ({"auto_goal": {"executorch": {"max_size": "huge"}}}, "auto_goal.executorch.*is not a size"),
        ({"auto_goal": {"executorch": {"max_size": "90MB", "max_ppl_increase": 5}}}, "hold one of"),
        ({"auto_goal": {"tflite": {"max_size": "90MB"}}}, "must name a target"),
        ({"auto_goal": {"onnx": "90MB"}}, "auto_goal must be a table"),
        ({"default_quant": {"tflite": "int4"}}, "unknown target 'tflite'"),
        ({"budgets": {"int4": {"min_top3": 0.5}}}, "unknown budget metric"),
        ({"colour": "red"}, "unknown keys \\['colour'\\]"),
    ],
)
def test_bad_recipes_name_the_field(change, message):
    with pytest.raises(RecipeError, match=message):
        recipes.from_dict("x", {**GOOD, **change})


def test_auto_goal_is_the_default_goal_of_auto():
    from mobilekit import precision

    recipe = recipes.from_dict("x", {**GOOD, "default_quant": {"executorch": "auto", "onnx": "auto"},
                                     "auto_goal": {"executorch": {"max_size": "120MB"},
                                                   "onnx": {"max_ppl_increase": 5}}})
    assert recipe.goal_for("executorch") == precision.Goal(max_size_bytes=120_000_000)
    assert recipe.goal_for("onnx") == precision.Goal(max_ppl_increase_pct=5)
    assert recipe.goal_for("coreml") is None


def test_missing_keys_are_listed():
    with pytest.raises(RecipeError, match=r"missing keys \['license', 'revision'\]"):
        recipes.from_dict("x", {k: v for k, v in GOOD.items() if k not in ("license", "revision")})


def test_unknown_recipe():
    with pytest.raises(UnknownNameError, match="Unknown recipe 'gpt5'. Available: .*smollm2-135m"):
        recipes.get("gpt5")


def test_embedded_default():
    assert recipes.get("smollm2-135m").checkpoint_source == "embedded"


# --- every shipped recipe: pinned, offline, and sized as ARCHITECTURES.md says --------------

import json
import re
from types import SimpleNamespace

from click.testing import CliRunner

from mobilekit import families, validate
from mobilekit.cli import main
from mobilekit.errors import CheckpointError

# Parameter counts of each recipe's checkpoint: /work/shared/ARCHITECTURES.md ([D] columns of
# §1-§11) unless marked; spec.num_parameters must be within 2% of them.
EXPECTED_PARAMETERS = {
    "smollm2-135m": 134.5e6,
    "tinyllama-1.1b-chat": 1.100e9,
    "mobilellama-1.4b-chat": 1.364e9,
    "mobilellama-1.4b-base": 1.364e9,
    "mobilellama-2.7b-chat": 2.702e9,
    "fox-1.6b": 1.665e9,
    "llama-3.1-8b-instruct": 8.030e9,
    "mistral-nemo-12b-instruct": 12.248e9,
    "qwen2-0.5b-instruct": 494.0e6,
    "qwen2-1.5b-instruct": 1.544e9,
    "qwen2-7b-instruct": 7.6e9,  # not in ARCHITECTURES.md: the Qwen2 model card's 7.6B
    "phi-3.5-mini-instruct": 3.821e9,
    "gemma2-2b-it": 2.614e9,
    "gemma3-270m": 268.1e6,
    "gemma3-1b": 1.0e9,  # not in ARCHITECTURES.md: Google's "1B" (698M + 302M embedding)
    "pythia-160m": 162.3e6,
    "pythia-410m": 405.3e6,
    "pythia-1b": 1.012e9,
    "pythia-1.4b": 1.415e9,
    "pythia-2.8b": 2.775e9,
    "cerebras-gpt-111m": 111.1e6,
    "cerebras-gpt-256m": 256.0e6,
    "cerebras-gpt-590m": 590.3e6,
    "cerebras-gpt-1.3b": 1.316e9,
    "cerebras-gpt-2.7b": 2.652e9,
    "lamini-gpt-774m": 774e6,
    "lamini-gpt-1.5b": 1.558e9,
    "phi-2": 2.780e9,
    "stablelm-zephyr-3b": 2.795e9,
    # families transformers lacks: ARCHITECTURES.md §12-14 (tests/reference pins the same counts)
    "openelm-270m": 271.5e6,
    "openelm-270m-instruct": 271.5e6,
    "openelm-450m": 457.2e6,
    "openelm-450m-instruct": 457.2e6,
    "openelm-1.1b": 1.080e9,
    "openelm-1.1b-instruct": 1.080e9,
    "openelm-3b": 3.037e9,
    "openelm-3b-instruct": 3.037e9,
    "minicpm-1b": 1.360e9,
    "minicpm-2b": 2.725e9,
    "dclm-1b": 1.440e9,
    "dclm-7b": 6.890e9,
    # issue 16, not in ARCHITECTURES.md: the model cards' counts (Qwen2.5 0.49B/1.54B/3.09B, Llama 3.2
    # 1.23B/3.21B) and SmolLM2's published 361,821,120 / 1,711,376,384 parameters
    "qwen2.5-0.5b-instruct": 494.0e6,
    "qwen2.5-1.5b-instruct": 1.544e9,
    "qwen2.5-3b-instruct": 3.086e9,
    "llama-3.2-1b-instruct": 1.236e9,
    "llama-3.2-3b-instruct": 3.213e9,
    "smollm2-360m-instruct": 361.8e6,
    "smollm2-1.7b-instruct": 1.711e9,
    # issue 17: the LFM2 model cards' 354,483,968 / 742,489,344 / 1,170,340,608 (LFM2.5 1.2B: LFM2 1.2B's shape)
    "lfm2-350m": 354.5e6,
    "lfm2-700m": 742.5e6,
    "lfm2-1.2b": 1.170e9,
    "lfm2.5-1.2b-instruct": 1.170e9,
    # the Qwen3 model cards: 0.6B / 1.7B / 4.0B (non-embedding 0.44B / 1.4B / 3.6B, which the
    # spec's counts less the tied embedding also give)
    "qwen3-0.6b": 0.6e9,
    "qwen3-1.7b": 1.7e9,
    "qwen3-4b-instruct-2507": 4.0e9,
    "smollm3-3b": 3.08e9,  # the SmolLM3 model card's "3B" (3.08B)
    "phi-4-mini-instruct": 3.836e9,
    "olmo2-1b-instruct": 1.485e9,  # the OLMo 2 1B model card's 1.5B  # 3,836,021,760, counted from its safetensors headers by a public test
    # the language model only (the cards' 0.8B / 2B count the vision tower too): transformers'
    # Qwen3_5ForCausalLM built at the pinned text_config on the meta device, counted
    "qwen3.5-0.8b": 0.752e9,
    "qwen3.5-2b": 1.882e9,
    # the language model only: transformers' Gemma3nForCausalLM built at the pinned text_config
    # on the meta device, counted (4,435,182,688 and 6,835,235,568: per-layer table included)
    "gemma-3n-e2b-it": 4.435e9,
    "gemma-3n-e4b-it": 6.835e9,
}


def test_every_promised_recipe_ships():
    assert set(recipes.names()) == set(EXPECTED_PARAMETERS)


@pytest.mark.parametrize("recipe_id", sorted(EXPECTED_PARAMETERS))
def test_recipe_is_pinned_and_its_stored_config_builds_its_spec(recipe_id):
    recipe = recipes.get(recipe_id)
    assert recipe.family in families.names()
    # a full commit id, or "main" with the notes saying it is unverified
    assert re.fullmatch(r"[0-9a-f]{40}", recipe.revision) or (
        recipe.revision == "main" and "main" in recipe.notes), recipe.revision
    assert recipe.config, "every recipe stores its checkpoint's config"
    claimed = families.for_architecture(recipe.config.get("architectures"), recipe.config.get("model_type"))
    assert claimed.name == recipe.family
    spec = recipe.spec()
    assert spec.num_parameters == pytest.approx(EXPECTED_PARAMETERS[recipe_id], rel=0.02)
    assert recipe.max_seq_len <= spec.max_exportable_context


@pytest.mark.parametrize("recipe_id", sorted(EXPECTED_PARAMETERS))
def test_info_works_offline(recipe_id, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("info must not reach the hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    result = CliRunner().invoke(main, ["info", recipe_id], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    millions = recipes.get(recipe_id).spec().num_parameters / 1e6
    assert f"{millions:.1f}M parameters" in result.output
    assert "unknown until" not in result.output


def test_list_shows_every_recipe():
    result = CliRunner().invoke(main, ["list"], catch_exceptions=False)
    assert result.exit_code == 0
    for recipe_id in EXPECTED_PARAMETERS:
        assert recipe_id in result.output


def _as_downloaded(recipe) -> dict:
    """The recipe's config as json.load would return it from config.json, plus unrelated keys."""
    return {**json.loads(json.dumps(dict(recipe.config))), "torch_dtype": "bfloat16", "use_cache": True}


def test_check_config_accepts_the_pinned_config():
    for recipe in recipes.all_recipes():
        recipes.check_config(recipe, _as_downloaded(recipe))
    # JSON's 10000 and TOML's 10000.0 are the same number
    recipe = recipes.get("tinyllama-1.1b-chat")
    recipes.check_config(recipe, {**_as_downloaded(recipe), "rope_theta": 10000})


def test_check_config_names_the_differing_keys():
    recipe = recipes.get("gemma3-270m")
    wrong = {**_as_downloaded(recipe), "num_hidden_layers": 26, "sliding_window": 1024}
    del wrong["rope_local_base_freq"]
    with pytest.raises(CheckpointError, match=r"3 key\(s\)") as failure:
        recipes.check_config(recipe, wrong)
    message = str(failure.value)
    assert "num_hidden_layers: recipe 18, checkpoint 26" in message
    assert "sliding_window: recipe 512, checkpoint 1024" in message
    assert "rope_local_base_freq: recipe 10000.0, checkpoint (missing)" in message
    assert "google/gemma-3-270m@9b0cfec8" in message


def test_check_config_tells_null_from_a_value_and_bool_from_int():
    recipe = recipes.get("mistral-nemo-12b-instruct")
    with pytest.raises(CheckpointError, match="sliding_window: recipe None, checkpoint 4096"):
        recipes.check_config(recipe, {**_as_downloaded(recipe), "sliding_window": 4096})
    recipe = recipes.get("pythia-160m")
    with pytest.raises(CheckpointError, match="use_parallel_residual"):
        recipes.check_config(recipe, {**_as_downloaded(recipe), "use_parallel_residual": 1})


def test_null_keys_and_bad_config_tables():
    recipe = recipes.from_dict("x", {**GOOD, "config": {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "_null": ["rope_scaling"]}})
    assert recipe.config["rope_scaling"] is None
    with pytest.raises(RecipeError, match="needs architectures or model_type"):
        recipes.from_dict("x", {**GOOD, "config": {"hidden_size": 8}})
    with pytest.raises(RecipeError, match="describes a gemma2 checkpoint"):
        recipes.from_dict("x", {**GOOD, "config": {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2"}})
    with pytest.raises(RecipeError, match="special_ids 'both' must be one of config, tokenizer"):
        recipes.from_dict("x", {**GOOD, "special_ids": "both"})


def _tokenizer(eos: int, added: dict):
    return SimpleNamespace(eos_token_id=eos, get_added_vocab=lambda: dict(added))


def test_fox_stop_ids_come_from_the_tokenizer_only():
    fox = recipes.get("fox-1.6b")
    assert fox.special_ids == "tokenizer"
    # Fox-1's config.json: bos 1, eos 2; its Gemma tokenizer: <eos> = 1, <bos> = 2
    tokenizer = _tokenizer(1, {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3})
    config = dict(fox.config)
    assert config["eos_token_id"] == 2
    assert validate.stop_ids(tokenizer, config, fox) == {1}
    assert validate.stop_ids(tokenizer, config) == {1, 2}  # without the recipe: config + tokenizer


@pytest.mark.parametrize("recipe_id", ["llama-3.1-8b-instruct", "llama-3.2-1b-instruct", "llama-3.2-3b-instruct"])
def test_llama3_stops_on_all_three_eos_ids(recipe_id):
    recipe = recipes.get(recipe_id)
    tokenizer = _tokenizer(128009, {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001,
                                    "<|eom_id|>": 128008, "<|eot_id|>": 128009})
    assert validate.stop_ids(tokenizer, dict(recipe.config), recipe) == {128001, 128008, 128009}


def test_llama32_recipes_scale_rope_by_32_and_tie_the_head():
    for recipe_id in ("llama-3.2-1b-instruct", "llama-3.2-3b-instruct"):
        spec = recipes.get(recipe_id).spec()
        assert spec.tie_word_embeddings
        assert (spec.rope_scaling.factor, spec.rope_scaling.low_freq_factor, spec.rope_scaling.high_freq_factor,
                spec.rope_scaling.original_max_position_embeddings) == (32.0, 1.0, 4.0, 8192)


def test_single_token_stop_strings_become_stop_ids():
    recipe = recipes.get("gemma3-270m")
    tokenizer = _tokenizer(1, {"<eos>": 1, "<bos>": 2, "<start_of_turn>": 105, "<end_of_turn>": 106})
    assert validate.stop_ids(tokenizer, {"eos_token_id": 1}, recipe) == {1, 106}


def test_lamini_prompt_is_the_alpaca_wrapper():
    from mobilekit import chat

    recipe = recipes.get("lamini-gpt-774m")
    text = chat.format_prompt({"chat_template": recipe.chat_template}, "Name three colours.")
    assert text == ("Below is an instruction that describes a task. Write a response that appropriately "
                    "completes the request.\n\n### Instruction:\nName three colours.\n\n### Response:")
    assert recipes.get("lamini-gpt-1.5b").chat_template == recipe.chat_template


def test_resolve_spec_uses_a_stored_config_without_the_hub(monkeypatch):
    import huggingface_hub

    from mobilekit.checkpoint import resolve_spec

    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("no download")))
    recipe = recipes.get("phi-2")
    assert resolve_spec(recipe.checkpoint_source, dict(recipe.config)) == recipe.spec()


def test_check_checkpoint_compares_only_the_pinned_hub_snapshot():
    recipe = recipes.get("pythia-160m")
    wrong = {**_as_downloaded(recipe), "hidden_size": 1024}
    pinned = {"kind": "hub", "repo": recipe.repo, "revision": recipe.revision}
    with pytest.raises(CheckpointError, match="hidden_size: recipe 768, checkpoint 1024"):
        recipes.check_checkpoint(recipe, SimpleNamespace(source=pinned, config=wrong))
    recipes.check_checkpoint(recipe, SimpleNamespace(source=pinned, config=_as_downloaded(recipe)))
    for other in ({"kind": "local", "path": "/x"}, {"kind": "embedded", "file": "x.gguf"},
                  {**pinned, "revision": "main"}, {**pinned, "repo": "someone/fine-tune"}):
        recipes.check_checkpoint(recipe, SimpleNamespace(source=other, config=wrong))


def test_recipes_beyond_transformers_pin_their_tokenizer_sources():
    """OpenELM's repos ship no tokenizer: every openelm recipe names the Llama-2 tokenizer by
    repo, pinned revision and sha256, with Llama-2's tokenizer_config (no chat template); DCLM
    falls back to the GPT-NeoX-20B tokenizer of the pinned Pythia revision."""
    llama2 = "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347"
    for recipe in recipes.all_recipes():
        if recipe.family == "openelm":
            table = recipe.tokenizer
            assert re.fullmatch(r"[0-9a-f]{40}", table["revision"])
            assert table["sha256"]["tokenizer.model"] == llama2
            assert "tokenizer.model" in table["files"]
            assert table["config"]["bos_token"] == "<s>" and "chat_template" not in table["config"]
            assert recipe.config["bos_token_id"] == 1 and recipe.config["eos_token_id"] == 2
        elif recipe.family == "open_lm":
            assert recipe.tokenizer["repo"] == recipes.get("pythia-160m").repo
            assert recipe.tokenizer["revision"] == recipes.get("pythia-160m").revision
    assert recipes.get("openelm-270m").spec().layer_num_kv_heads == (3,) * 5 + (4,) * 7 + (5,) * 4


def test_bad_tokenizer_tables_name_the_problem():
    table = {"repo": "a/b", "revision": "abc", "files": ["tokenizer.model"]}
    with pytest.raises(RecipeError, match=r"\[tokenizer\] lacks \['files'\]"):
        recipes.from_dict("x", {**GOOD, "tokenizer": {"repo": "a/b", "revision": "abc"}})
    with pytest.raises(RecipeError, match="sha256 names files not in files"):
        recipes.from_dict("x", {**GOOD, "tokenizer": {**table, "sha256": {"tokenizer.json": "00"}}})
    with pytest.raises(RecipeError, match="unknown keys \\['url'\\]"):
        recipes.from_dict("x", {**GOOD, "tokenizer": {**table, "url": "x"}})
