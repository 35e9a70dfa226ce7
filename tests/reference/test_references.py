"""The independent references themselves: shapes, causality, determinism, the checkpoint
layouts they read, the real checkpoints' sizes (no weights), and, where a configuration
reduces to an architecture transformers implements, agreement with transformers."""

import math

import pytest
import torch

from pathlib import Path

from reference import (MODULES, ReferenceLM, load_checkpoint, minicpm, module, open_lm, openelm, reference_for,
                       save_checkpoint, tiny_configs)

FAMILIES = MODULES
VOCAB = 512


def build(family, config=None, seed=0):
    mod = module(family)
    config = config or mod.TINY_CONFIG
    return mod.Reference(config, mod.random_state_dict(config, seed=seed))


def ids(batch, length, seed=0):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_shape_determinism_and_batch_independence(family):
    ref = build(family)
    x = ids(2, 24)
    logits = ref.forward(x)
    assert logits.shape == (2, 24, VOCAB) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert torch.equal(logits, ref.forward(x))
    torch.testing.assert_close(ref.forward(x[1:]), logits[1:], atol=1e-5, rtol=1e-5)
    # random weights at std 0.08 must give peaked, position-dependent logits, not noise near 0
    assert logits.std() > 0.25
    assert not torch.allclose(logits[0, 5], logits[0, 6])


@pytest.mark.parametrize("family", FAMILIES)
def test_causal(family):
    ref = build(family)
    x = ids(1, 20)
    changed = x.clone()
    changed[0, 12:] = (changed[0, 12:] + 7) % VOCAB
    a, b = ref.forward(x), ref.forward(changed)
    torch.testing.assert_close(a[0, :12], b[0, :12], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[0, 12:], b[0, 12:])


@pytest.mark.parametrize("family", FAMILIES)
def test_seed_changes_weights(family):
    x = ids(1, 8)
    assert not torch.allclose(build(family, seed=0).forward(x), build(family, seed=1).forward(x))


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_round_trip(family, tmp_path):
    mod = module(family)
    state = mod.random_state_dict(mod.TINY_CONFIG)
    save_checkpoint(tmp_path, mod.TINY_CONFIG, state)
    config, loaded = load_checkpoint(tmp_path)
    assert config == mod.TINY_CONFIG and set(loaded) == set(state)
    x = ids(1, 16)
    torch.testing.assert_close(reference_for(tmp_path, family).forward(x), mod.Reference(config, state).forward(x))


@pytest.mark.parametrize("family", FAMILIES)
def test_refuses_state_dicts_that_do_not_match(family):
    mod = module(family)
    state = mod.random_state_dict(mod.TINY_CONFIG)
    name = next(n for n in state if ".layers.1." in n and n.endswith("weight") and state[n].ndim == 2)
    with pytest.raises(ValueError, match="missing"):
        mod.Reference(mod.TINY_CONFIG, {k: v for k, v in state.items() if k != name})
    with pytest.raises(ValueError, match="wrong shapes"):
        mod.Reference(mod.TINY_CONFIG, {**state, name: state[name][:-1]})
    with pytest.raises(ValueError, match="unexpected"):
        mod.Reference(mod.TINY_CONFIG, {**state, "model.extra.weight": torch.zeros(3)})


def test_references_share_no_code_with_mobilekit():
    # independent by construction: only the tiny tokenizer (save_checkpoint(tokenizer=True)) comes from mobilekit
    for path in Path(__file__).parent.glob("*.py"):
        lines = [line.strip() for line in path.read_text().splitlines()]
        imports = [line for line in lines if line.startswith(("from mobilekit", "import mobilekit"))]
        assert imports in ([], ["from mobilekit.tiny import save_tiny_tokenizer"]), (path.name, imports)


def test_tiny_configs_use_each_checkpoints_own_schema():
    configs = tiny_configs()
    assert configs["minicpm"]["architectures"] == ["MiniCPMForCausalLM"] and "scale_depth" in configs["minicpm"]
    assert configs["openelm"]["architectures"] == ["OpenELMForCausalLM"] and "model_dim" in configs["openelm"]
    assert configs["open_lm"]["architectures"] == ["OpenLMForCausalLM"] and "dim" in configs["open_lm"]


def test_reference_lm_adapter_is_greedy_and_stops():
    ref = build("minicpm")
    lm = ReferenceLM(ref, minicpm.TINY_CONFIG)
    prompt = ids(1, 6)
    out = lm.generate(prompt, max_new_tokens=5)
    assert out.shape == (1, 11) and torch.equal(out[:, :6], prompt)
    seq = prompt
    for _ in range(5):
        seq = torch.cat([seq, ref.forward(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)
    first = int(out[0, 6])
    assert lm.generate(prompt, max_new_tokens=5, eos_token_id=[first]).shape == (1, 7)
    assert torch.equal(lm(prompt).logits, ref.forward(prompt))
    assert lm.config.to_dict()["scale_emb"] == 12


# --- the tiny configs exercise each family's quirks -------------------------------------------


def test_tiny_openelm_has_varying_layers():
    sizes = openelm.layer_sizes(openelm.TINY_CONFIG)
    assert [s["q_heads"] for s in sizes] == [2, 4, 4, 4] == openelm.TINY_CONFIG["num_query_heads"]
    assert [s["kv_heads"] for s in sizes] == [1, 2, 2, 2] == openelm.TINY_CONFIG["num_kv_heads"]
    assert [s["ffn_dim"] for s in sizes] == [32, 128, 192, 256]
    assert len(openelm.TINY_CONFIG["ffn_multipliers"]) == 4  # stored expanded, as real configs are


def test_open_lm_nested_layout_is_the_same_model():
    flat, nest = open_lm.TINY_CONFIG, open_lm.nested(open_lm.TINY_CONFIG)
    assert "dim" not in nest and nest["params_args_dict"]["model_norm"] == "gain_only_lp_layer_norm"
    assert open_lm.params(flat) == open_lm.params(nest)
    state = open_lm.random_state_dict(flat)
    x = ids(1, 12)
    torch.testing.assert_close(open_lm.Reference(nest, state).forward(x), open_lm.Reference(flat, state).forward(x))


def test_open_lm_gain_only_norms_have_no_bias_and_qk_norms_span_the_width():
    shapes = open_lm.checkpoint_shapes(open_lm.TINY_CONFIG, buffers=True)
    assert not any(n.endswith(".bias") for n in shapes)
    assert shapes["model.layers.0.attention.q_norm.weight"] == (64,)  # d, not head_dim
    assert shapes["model.layers.0.attention.pos_embed.inv_freq"] == (8,)
    assert shapes["model.layers.0.feed_forward.w12.weight"] == (512, 64)  # hidden 256
    with_bias = open_lm.checkpoint_shapes({**open_lm.TINY_CONFIG, "norm_type": "default_layer_norm"})
    assert with_bias["model.layers.2.attention.k_norm.bias"] == (64,)


def test_open_lm_bf16_rounded_rotary_frequencies():
    # DCLM was trained under bf16 autocast, where open_lm rounds inv_freq to bf16 before the
    # angles: at fp32 that is a different model, increasingly so at later positions
    state = open_lm.random_state_dict(open_lm.TINY_CONFIG)
    x = ids(1, 200)
    fp32 = open_lm.Reference(open_lm.TINY_CONFIG, state).forward(x)
    bf16_freq = open_lm.Reference(open_lm.TINY_CONFIG, state, rope_freq_dtype=torch.bfloat16).forward(x)
    torch.testing.assert_close(fp32[0, 0], bf16_freq[0, 0])  # position 0: no rotation at all
    assert (fp32[0, -1] - bf16_freq[0, -1]).abs().max() > 1e-3


def test_minicpm_scales_matter():
    x = ids(1, 10)
    state = minicpm.random_state_dict(minicpm.TINY_CONFIG)
    base = minicpm.Reference(minicpm.TINY_CONFIG, state).forward(x)
    for key, value in (("scale_emb", 1), ("scale_depth", 1.0), ("dim_model_base", 16)):
        other = minicpm.Reference({**minicpm.TINY_CONFIG, key: value}, state).forward(x)
        assert not torch.allclose(base, other, atol=1e-3), key
    # the width divisor is a pure scale of the logits (the head has no bias)
    doubled = minicpm.Reference({**minicpm.TINY_CONFIG, "dim_model_base": 64}, state).forward(x)
    torch.testing.assert_close(doubled, base * 2, rtol=1e-5, atol=1e-5)


# --- the real checkpoints' sizes (ARCHITECTURES.md tables; no weights are built) --------------

OPENELM_REAL = {  # name: (L, model_dim, head_dim)
    "270M": (16, 1280, 64), "450M": (20, 1536, 64), "1_1B": (28, 2048, 64), "3B": (36, 3072, 128),
}


def openelm_config(name):
    layers, dim, hd = OPENELM_REAL[name]
    return {**openelm.TINY_CONFIG, "vocab_size": 32000, "num_transformer_layers": layers, "model_dim": dim,
            "head_dim": hd, "num_gqa_groups": 4, "qkv_multipliers": [0.5, 1.0], "ffn_multipliers": [0.5, 4.0],
            "ffn_dim_divisor": 256}


def n_params(shapes):
    return sum(math.prod(s) for s in shapes.values())


def test_openelm_270m_layer_table():
    sizes = openelm.layer_sizes(openelm_config("270M"))
    assert [s["q_heads"] for s in sizes] == [12] * 5 + [16] * 7 + [20] * 4
    assert [s["kv_heads"] for s in sizes] == [3] * 5 + [4] * 7 + [5] * 4
    assert [s["ffn_dim"] for s in sizes] == [768, 1024, 1280, 1536, 1792, 2048, 2560, 2816, 3072, 3328, 3584,
                                             3840, 4352, 4608, 4864, 5120]
    shapes = openelm.checkpoint_shapes(openelm_config("270M"))
    assert shapes["transformer.layers.0.attn.qkv_proj.weight"] == (1152, 1280)
    assert shapes["transformer.layers.0.attn.out_proj.weight"] == (1280, 768)
    assert shapes["transformer.layers.0.ffn.proj_1.weight"] == (1536, 1280)
    assert shapes["transformer.layers.15.attn.qkv_proj.weight"] == (1920, 1280)
    assert shapes["transformer.layers.15.ffn.proj_1.weight"] == (10240, 1280)
    assert shapes["transformer.layers.15.ffn.proj_2.weight"] == (1280, 5120)
    assert "lm_head.weight" not in shapes
    assert round(n_params(shapes) / 1e6, 1) == 271.5


@pytest.mark.parametrize("name, first, last, params_b", [
    ("450M", (12, 3, 768), (24, 6, 6144), 0.457),
    ("1_1B", (16, 4, 1024), (32, 8, 8192), 1.080),
    ("3B", (12, 3, 1536), (24, 6, 12288), 3.037),
])
def test_openelm_other_sizes(name, first, last, params_b):
    sizes = openelm.layer_sizes(openelm_config(name))
    assert tuple(sizes[0].values()) == first and tuple(sizes[-1].values()) == last
    assert round(n_params(openelm.checkpoint_shapes(openelm_config(name))) / 1e9, 3) == params_b


@pytest.mark.parametrize("dim, layers, heads, hidden, params_b", [
    (2048, 24, 16, 5632, 1.440), (4096, 32, 32, 11008, 6.890),
])
def test_dclm_sizes(dim, layers, heads, hidden, params_b):
    config = {**open_lm.TINY_CONFIG, "dim": dim, "n_layers": layers, "n_heads": heads, "vocab_size": 50432}
    p = open_lm.params(config)
    assert p["hidden"] == hidden and p["head_dim"] == 128
    shapes = open_lm.checkpoint_shapes(config)
    assert shapes["model.layers.0.attention.in_proj.weight"] == (3 * dim, dim)
    assert shapes["model.layers.0.feed_forward.w12.weight"] == (2 * hidden, dim)
    assert round(n_params(shapes) / 1e9, 3) == params_b


@pytest.mark.parametrize("d, layers, heads, kv, inter, vocab, params_b", [
    (1536, 52, 24, 8, 3840, 73440, 1.360), (2304, 40, 36, 36, 5760, 122753, 2.725),
])
def test_minicpm_sizes(d, layers, heads, kv, inter, vocab, params_b):
    config = {**minicpm.TINY_CONFIG, "hidden_size": d, "num_hidden_layers": layers, "num_attention_heads": heads,
              "num_key_value_heads": kv, "intermediate_size": inter, "vocab_size": vocab}
    config.pop("tie_word_embeddings")  # MiniCPM-2B's config.json has no such key: tied by default
    shapes = minicpm.checkpoint_shapes(config)
    assert "lm_head.weight" not in shapes
    assert shapes["model.layers.0.self_attn.k_proj.weight"] == (kv * 64, d)
    assert round(n_params(shapes) / 1e9, 3) == params_b


# --- cross-checks: configurations that are plain transformers architectures -------------------
# Each quirk of a family (muP scales, layer-wise sizes, full-width QK LayerNorm) has no
# transformers counterpart; with those switched off, the remaining core must equal transformers'
# own model on the same weights, which checks the references' attention, rotary, norms and MLP.


def hf_logits(config_dict, state, x):
    from transformers import AutoConfig, AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config_dict), dtype=torch.float32,
                                          attn_implementation="eager")
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    if config_dict.get("tie_word_embeddings"):
        hf.tie_weights()
    return hf.eval()(x).logits


LLAMA = {"vocab_size": VOCAB, "max_position_embeddings": 256, "hidden_act": "silu", "attention_bias": False,
         "rope_theta": 10000.0}


def test_minicpm_without_scales_is_llama():
    L = minicpm.TINY_CONFIG["num_hidden_layers"]
    config = {**minicpm.TINY_CONFIG, "scale_emb": 1, "scale_depth": math.sqrt(L), "dim_model_base": 64}
    state = minicpm.random_state_dict(config)
    x = ids(1, 16)
    llama = {**LLAMA, "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": L,
             "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "tie_word_embeddings": True}
    torch.testing.assert_close(minicpm.Reference(config, state).forward(x), hf_logits(llama, state, x),
                               atol=2e-5, rtol=1e-4)


def test_openelm_with_uniform_layers_is_qwen3():
    config = {**openelm.TINY_CONFIG, "qkv_multipliers": 1.0, "ffn_multipliers": 2.0}
    config.pop("num_query_heads"), config.pop("num_kv_heads")
    sizes = openelm.layer_sizes(config)
    assert {(s["q_heads"], s["kv_heads"], s["ffn_dim"]) for s in sizes} == {(4, 2, 128)}
    state = openelm.random_state_dict(config)
    hf_state = {"model.embed_tokens.weight": state["transformer.token_embeddings.weight"],
                "model.norm.weight": state["transformer.norm.weight"]}
    for i in range(config["num_transformer_layers"]):
        src, dst = f"transformer.layers.{i}.", f"model.layers.{i}."
        q, k, v = state[src + "attn.qkv_proj.weight"].split([64, 32, 32])
        gate, up = state[src + "ffn.proj_1.weight"].chunk(2)
        hf_state.update({
            dst + "self_attn.q_proj.weight": q, dst + "self_attn.k_proj.weight": k, dst + "self_attn.v_proj.weight": v,
            dst + "self_attn.o_proj.weight": state[src + "attn.out_proj.weight"],
            dst + "self_attn.q_norm.weight": state[src + "attn.q_norm.weight"],
            dst + "self_attn.k_norm.weight": state[src + "attn.k_norm.weight"],
            dst + "mlp.gate_proj.weight": gate, dst + "mlp.up_proj.weight": up,
            dst + "mlp.down_proj.weight": state[src + "ffn.proj_2.weight"],
            dst + "input_layernorm.weight": state[src + "attn_norm.weight"],
            dst + "post_attention_layernorm.weight": state[src + "ffn_norm.weight"],
        })
    qwen3 = {**LLAMA, "model_type": "qwen3", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-6,
             "tie_word_embeddings": True, "use_sliding_window": False}
    x = ids(1, 16)
    torch.testing.assert_close(openelm.Reference(config, state).forward(x), hf_logits(qwen3, state=hf_state, x=x),
                               atol=2e-5, rtol=1e-4)


def test_open_lm_with_rms_norm_and_no_qk_norm_is_llama():
    config = {**open_lm.TINY_CONFIG, "norm_type": "rms_norm", "apply_qk_norm": False, "qk_norm": False}
    state = open_lm.random_state_dict(config)
    hf_state = {"model.embed_tokens.weight": state["model.tok_embeddings.weight"],
                "model.norm.weight": state["model.norm.weight"], "lm_head.weight": state["model.output.weight"]}
    for i in range(3):
        p = f"model.layers.{i}."
        q, k, v = state[p + "attention.in_proj.weight"].chunk(3)
        gate, up = state[p + "feed_forward.w12.weight"].chunk(2)
        hf_state.update({
            p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k, p + "self_attn.v_proj.weight": v,
            p + "self_attn.o_proj.weight": state[p + "attention.out_proj.weight"],
            p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up,
            p + "mlp.down_proj.weight": state[p + "feed_forward.w3.weight"],
            p + "input_layernorm.weight": state[p + "attention_norm.weight"],
            p + "post_attention_layernorm.weight": state[p + "ffn_norm.weight"],
        })
    llama = {**LLAMA, "model_type": "llama", "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 3,
             "num_attention_heads": 4, "num_key_value_heads": 4, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
    x = ids(1, 16)
    torch.testing.assert_close(open_lm.Reference(config, state).forward(x), hf_logits(llama, hf_state, x),
                               atol=2e-5, rtol=1e-4)
