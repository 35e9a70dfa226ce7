"""The families transformers lacks (MiniCPM, OpenELM, open_lm/DCLM), beyond the stage-1 and
every-target tests they share with the others in test_more_families.py: the spec fields they
added, their config layouts and refusals, the tokenizer sources (OpenELM ships none), the
reference used without transformers, and per-layer KV caches in what the targets write."""

import dataclasses
import json
import math
import shutil

import pytest
import torch
from click.testing import CliRunner
from reference import module, open_lm as open_lm_reference, reference_for, save_checkpoint, tiny_configs

from mobilekit import checkpoint, families, pipeline, recipes
from mobilekit.cli import main
from mobilekit.errors import CheckpointError
from mobilekit.modeling import DecoderSpec, EagerDecoder
from mobilekit.tiny import make_tiny_checkpoint, save_tiny_tokenizer

# every family transformers lacks (each has its independent reference in tests/reference)
FAMILIES = [name for name in families.names() if families.get(name).hf_reference_class is None]
TINY_CONFIGS = {name: families.get(name).tiny_config for name in FAMILIES}


def ids(length=48, seed=0):
    return torch.randint(0, 512, (1, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", FAMILIES)
def test_tiny_configs_and_weight_names_are_the_references(name):
    config = TINY_CONFIGS[name]
    assert tiny_configs()[name] == config
    family = families.get(name)
    assert family.hf_reference_class is None
    shapes = family.checkpoint_shapes(config)
    assert shapes == module(name).checkpoint_shapes(config)
    # the spec's parameter count is the checkpoint's own
    assert family.spec_from_config(config).num_parameters == sum(math.prod(s) for s in shapes.values())


def test_openelm_spec_varies_per_layer_and_round_trips():
    spec = families.get("openelm").spec_from_config(TINY_CONFIGS["openelm"])
    assert spec.layer_num_heads == (2, 4, 4, 4) and spec.layer_num_kv_heads == (1, 2, 2, 2)
    assert spec.layer_intermediate_sizes == (32, 128, 192, 256)
    assert (spec.num_heads, spec.num_kv_heads, spec.intermediate_size) == (4, 2, 256)
    assert spec.norm_eps == 1e-6 and spec.qk_norm and spec.qk_norm_width == "head" and spec.tie_word_embeddings
    stored = json.loads(json.dumps(dataclasses.asdict(spec)))  # as a manifest stores it
    assert DecoderSpec.from_dict(stored) == spec


def test_open_lm_and_minicpm_spec_fields():
    dclm = families.get("open_lm").spec_from_config(TINY_CONFIGS["open_lm"])
    assert (dclm.norm, dclm.norm_bias, dclm.qk_norm_width, dclm.intermediate_size) == ("layer", False, "full", 256)
    minicpm = families.get("minicpm").spec_from_config(TINY_CONFIGS["minicpm"])
    assert minicpm.embedding_scale == 12.0 and minicpm.logit_divisor == 2.0
    assert minicpm.residual_scale == pytest.approx(1.4 / math.sqrt(3))
    # MiniCPM-2B's config has no tie_word_embeddings key: the remote class's default (tied)
    untied_key = {k: v for k, v in TINY_CONFIGS["minicpm"].items() if k != "tie_word_embeddings"}
    assert families.get("minicpm").spec_from_config(untied_key).tie_word_embeddings


@pytest.mark.parametrize("change, message", [
    ({"layer_num_heads": (4, 4), "layer_num_kv_heads": (2, 2)}, "needs one per layer"),
    ({"layer_num_heads": (2, 2, 2), "layer_num_kv_heads": (1, 1, 1)}, r"num_heads \(4\) must be the largest"),
    ({"layer_num_heads": (4, 4, 4)}, "set together"),
    ({"layer_num_heads": (4, 3, 4), "layer_num_kv_heads": (2, 2, 2)}, "in layer 1"),
    ({"norm_bias": False}, 'needs norm "layer"'),
    ({"qk_norm_width": "full"}, "needs qk_norm"),
    ({"qk_norm_width": "both", "qk_norm": True}, "must be one of head, full"),
    ({"residual_scale": 0.0}, "must be positive"),
    ({"layer_types": ("conv", "full", "conv"), "conv_kernel": 1}, "conv_kernel must be a whole number of at least 2"),
    ({"layer_types": ("conv", "full", "mamba")}, "layer_types must name each of the 3 layers one of full, sliding, conv"),
    ({"pre_norms": False}, "pre_norms False .* needs sandwich_norms"),
    ({"nope_layers": (3,)}, r"nope_layers \[3\] must be layer indices below 3"),
])
def test_spec_invariants_name_the_field(change, message):
    base = dict(vocab_size=512, hidden_size=64, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=16,
                intermediate_size=128, max_position_embeddings=256)
    with pytest.raises(CheckpointError, match=message):
        DecoderSpec(**{**base, **change})


def test_open_lm_nested_layout_and_stored_rotary_buffers(tmp_path):
    """The early `params_args_dict` layout gives the same spec; a state dict carrying open_lm's
    persistent rotary buffers (as saved files do) loads, and matches the reference."""
    flat = TINY_CONFIGS["open_lm"]
    nested = open_lm_reference.nested(flat)
    family = families.get("open_lm")
    assert family.spec_from_config(nested) == family.spec_from_config(flat)
    state = open_lm_reference.random_state_dict(flat, seed=3)
    assert any(k.endswith("pos_embed.inv_freq") for k in state)
    folder = save_checkpoint(tmp_path / "nested", nested, state, tokenizer=False)
    ours = EagerDecoder(checkpoint.resolve(str(folder)).build_decoder())(ids())
    torch.testing.assert_close(ours, reference_for(folder, "open_lm").forward(ids()), atol=2e-5, rtol=1e-4)
    state["model.layers.1.attention.pos_embed.inv_freq"] = state["model.layers.1.attention.pos_embed.inv_freq"] * 2
    bad = save_checkpoint(tmp_path / "bad", flat, state, tokenizer=False)
    with pytest.raises(CheckpointError, match="not the rotary frequencies of theta 10000"):
        checkpoint.resolve(str(bad)).build_decoder()


@pytest.mark.parametrize("name, change, message", [
    ("open_lm", {"qk_norm": False}, "apply_qk_norm True and qk_norm False"),
    ("open_lm", {"ffn_type": "gelu"}, "ffn_type 'gelu' is not supported"),
    ("open_lm", {"n_heads_kv": 2}, "n_heads_kv"),
    ("open_lm", {"post_embed_norm": True}, "post_embed_norm"),
    ("openelm", {"num_kv_heads": [1, 1, 2, 2]}, r"stores num_kv_heads \[1, 1, 2, 2\], but its multipliers give"),
    ("openelm", {"normalization_layer_name": "layer_norm"}, "supported: rms_norm"),
    ("minicpm", {"rope_scaling": {"type": "dynamic", "factor": 4.0}}, "rope scaling"),
])
def test_unsupported_configs_are_refused(name, change, message):
    with pytest.raises(CheckpointError, match=message):
        families.get(name).spec_from_config({**TINY_CONFIGS[name], **change})


def test_open_lm_needs_its_own_schema():
    with pytest.raises(CheckpointError, match="not an open_lm-schema config"):
        families.get("open_lm").spec_from_config({"model_type": "openlm", "hidden_size": 64})


def test_coreml_wrapper_reads_and_writes_each_layers_kv_heads(tmp_path):
    """The module Core ML converts keeps one state sized for the largest layer; each OpenELM
    layer writes and reads its own first kv heads. Run eagerly (fp32, fp32 cache) token by
    token, it must give the full forward's logits."""
    from coreml_helpers import WrapperSession

    folder = make_tiny_checkpoint(tmp_path / "openelm", TINY_CONFIGS["openelm"], tokenizer=False)
    decoder = checkpoint.resolve(str(folder)).build_decoder()
    x = ids(24, seed=1)
    full = EagerDecoder(decoder)(x)[0]
    session = WrapperSession(decoder, 64, cache_dtype=torch.float32)
    session.reset()
    steps = [session.step(x[0, :8].tolist())] + [session.step([int(t)]) for t in x[0, 8:]]
    torch.testing.assert_close(torch.tensor(steps[0]), full[7], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(steps[-1]), full[-1], atol=2e-5, rtol=1e-4)


# --- tokenizers: OpenELM ships none ----------------------------------------------------------


@pytest.fixture(scope="module")
def openelm_without_tokenizer(tmp_path_factory):
    """A tiny OpenELM folder in the hub's layout: config.json + model.safetensors, no tokenizer."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("openelm-bare"), TINY_CONFIGS["openelm"], tokenizer=False)


def test_missing_tokenizer_says_which_files_to_provide(openelm_without_tokenizer):
    with pytest.raises(CheckpointError) as failure:
        pipeline.make_context(None, str(openelm_without_tokenizer), 64)
    message = str(failure.value)
    for needed in ("has no tokenizer", "Llama-2 tokenizer", "tokenizer.model", "--tokenizer", "32000 ids"):
        assert needed in message
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(openelm_without_tokenizer), "--target", "onnx"])
    assert result.exit_code == 1 and "tokenizer.model" in result.output


def test_tokenizer_option_exports_with_a_foreign_tokenizer(openelm_without_tokenizer, tmp_path):
    tokenizer_dir = tmp_path / "tok"
    save_tiny_tokenizer(tokenizer_dir, 512)
    out = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(openelm_without_tokenizer), "--tokenizer",
                                       str(tokenizer_dir), "--target", "onnx", "--quant", "fp32",
                                       "--max-seq-len", "64", "--no-validate", "--output", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "mobilekit.json").read_text())
    assert manifest["tokenizer_source"] == {"kind": "option", "option": str(tokenizer_dir.resolve())}
    assert (out / "tokenizer.json").is_file() and manifest["family"] == "openelm"
    kv = manifest["io"]["kv_cache"]
    assert kv["kv_heads_per_layer"] == [1, 2, 2, 2] and kv["kv_heads"] == 2
    pasts = {i["name"]: i["shape"] for i in manifest["io"]["inputs"] if i["name"].startswith("past_key_values.")}
    assert pasts["past_key_values.0.key"][1] == 1 and pasts["past_key_values.3.value"][1] == 2
    # `validate` finds the tokenizer the export was given, and says stage 1 has no reference here
    report = tmp_path / "validation.json"
    result = CliRunner().invoke(main, ["validate", str(out), "--report", str(report)])
    assert result.exit_code == 0, result.output
    validation = json.loads(report.read_text())
    assert "skipped" in validation["stage1"] and validation["stage2"]["app_runtime"]["greedy_match"] == 1.0
    # a tokenizer whose special ids disagree with config.json is not this model's
    with pytest.raises(CheckpointError, match="has eos_token_id 2, but .* says 7: it is not this model's tokenizer"):
        _context_with_config(openelm_without_tokenizer, tmp_path, tokenizer_dir, eos_token_id=7)


def _context_with_config(folder, tmp_path, tokenizer_dir, **changes):
    copy = tmp_path / "changed"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, **changes}))
    return pipeline.make_context(None, str(copy), 64, tokenizer=str(tokenizer_dir))


def _sentencepiece_tokenizer(folder):
    """A real SentencePiece tokenizer.model with Llama-2's special ids (<unk> 0, <s> 1, </s> 2)."""
    import sentencepiece as spm

    from mobilekit.validate import eval_text

    folder.mkdir(parents=True)
    (folder / "corpus.txt").write_text(eval_text())
    spm.SentencePieceTrainer.train(input=str(folder / "corpus.txt"), model_prefix=str(folder / "tokenizer"),
                                   vocab_size=512, model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   byte_fallback=True, minloglevel=2)
    return folder / "tokenizer.model"


def test_design_card_example_runs_as_written(openelm_without_tokenizer, tmp_path, monkeypatch):
    """`mobilekit export openelm-270m --target coreml`, word for word, with the hub replaced at its
    boundary: the recipe's checkpoint resolves to a tiny OpenELM folder in the hub's layout (no
    tokenizer), and its [tokenizer] repo serves a SentencePiece tokenizer.model. Everything between
    runs as on a machine with hub access: recipe -> checkpoint -> tokenizer fetched, sha256-checked
    and given the recipe's tokenizer_config -> Core ML export -> validation -> bundle."""
    import huggingface_hub

    real = recipes.get("openelm-270m")
    served = _sentencepiece_tokenizer(tmp_path / "tinyllama")
    digest = checkpoint.sha256_file(served)
    tiny_recipe = dataclasses.replace(  # the real recipe's tokenizer table, for the tiny model
        real, max_seq_len=64, config={},
        tokenizer={**real.tokenizer, "files": ["tokenizer.model"], "sha256": {"tokenizer.model": digest}})
    monkeypatch.setattr(recipes, "get", lambda rid: tiny_recipe if rid == "openelm-270m" else real)
    monkeypatch.setattr(pipeline, "resolve", lambda source, with_code=False: checkpoint.Checkpoint(
        path=openelm_without_tokenizer, source={"kind": "hub", "repo": real.repo, "revision": real.revision}))
    fetched = []

    def hub_download(repo, name, revision=None, **_):
        fetched.append((repo, name, revision))
        return str(served.parent / name)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub_download)
    monkeypatch.setenv("MOBILEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(main, ["export", "openelm-270m", "--target", "coreml"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert fetched == [(real.tokenizer["repo"], "tokenizer.model", real.tokenizer["revision"])]
    bundle = tmp_path / "out" / "openelm-270m-coreml-fp16"
    manifest = json.loads((bundle / "mobilekit.json").read_text())
    assert manifest["tokenizer_source"]["kind"] == "recipe" and manifest["tokenizer_source"]["sha256"] == {
        "tokenizer.model": digest}
    config = json.loads((bundle / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "LlamaTokenizer" and "chat_template" not in config
    assert (bundle / "tokenizer.model").is_file() and (bundle / "tokenizer.json").is_file()
    assert manifest["bos_id"] == 1 and manifest["eos_ids"] == [2] and manifest["add_bos"]
    assert manifest["io"]["kv_cache"]["kv_heads_per_layer"] == [1, 2, 2, 2]
    validation = manifest["validation"]
    assert validation["passed"] and "skipped" in validation["stage1"]  # no independent reference for a real model
    assert "mobilekit decoder eager fp32" in validation["reference"] and "stage 1 is skipped" in validation["reference"]
    assert validation["stage2"]["metrics"]["top1_agreement"] == 1.0

    # a tokenizer.model that is not the pinned one is refused, and nothing is cached
    shutil.rmtree(tmp_path / "cache")
    tiny_recipe = dataclasses.replace(tiny_recipe, tokenizer={**tiny_recipe.tokenizer, "sha256": {"tokenizer.model": "0" * 64}})
    result = CliRunner().invoke(main, ["export", "openelm-270m", "--target", "coreml", "--output", "x"])
    assert result.exit_code == 1 and "but the recipe pins 0000" in result.output
    assert not list((tmp_path / "cache" / "tokenizers").iterdir())


def test_trust_remote_code_needs_modeling_code(openelm_without_tokenizer):
    ckpt = checkpoint.resolve(str(openelm_without_tokenizer))
    with pytest.raises(CheckpointError, match="no transformers reference"):
        ckpt.load_reference()
    with pytest.raises(CheckpointError, match=r"has no modeling_\*\.py"):
        ckpt.load_reference(trust_remote_code=True)
