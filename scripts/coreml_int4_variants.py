"""coremltools.optimize int4 variants (symmetric / asymmetric, block size, embedding bits) and
mobilekit's own float-offset int4 (targets.coreml) on an fp16 Core ML bundle, measured as
validation's stage 2 through the Core ML program evaluator. Exploratory (issue 21): README
"int4 quality" quotes its numbers for SmolLM2-135M.

    python scripts/coreml_int4_variants.py BUNDLE_FP16 base_sym4_emb8,float_all,float_emb8 [cont] [rope4]

rope4: let the coremltools variants quantize the rotary tables too (as int4 did before).

BUNDLE_FP16: `mobilekit export smollm2-135m --target coreml --quant fp16 --output B`."""
import json, shutil, sys, time
from pathlib import Path
import numpy as np
import coremltools as ct, coremltools.optimize.coreml as cto
from mobilekit import pipeline, recipes, validate
from mobilekit.runtime import coreml as rt
from mobilekit.targets import coreml as target

SRC = Path(sys.argv[1])
manifest = json.loads((SRC / "mobilekit.json").read_text())
ctx = pipeline.make_context(recipes.get("smollm2-135m"), pipeline._source_of(manifest), manifest["max_seq_len"])
ref = ctx.reference(lambda m: None)
base = ct.models.MLModel(str(SRC / "model.mlpackage"), skip_model_load=True)
meta = cto.get_weights_metadata(base, weight_threshold=2048)
gather_consts = [n for n, m in meta.items() if any(c.op_type == "gather" for c in m.child_ops)]
print("gather consts", gather_consts, flush=True)
names = list(meta)

def cfg(mode, dtype, gran, block=32):
    kw = dict(mode=mode, dtype=dtype, granularity=gran, weight_threshold=2048)
    if gran == "per_block": kw["block_size"] = block
    return cto.OpLinearQuantizerConfig(**kw)

from mobilekit.formats.coreml import load_program  # noqa: E402  (the package's program: a loaded MLModel has none)
program = load_program(SRC / "model.mlpackage")[0]
not_weights = {} if "rope4" in sys.argv else target.quantization_config("int4", program).op_name_configs
not_weights = {k: v for k, v in not_weights.items() if v is None}  # the rotary tables


def run(name, global_cfg, emb_cfg, extra=None, float_offsets=False):
    out = SRC.parent / f"{SRC.name}-{name}"; shutil.rmtree(out, ignore_errors=True); out.mkdir()
    op_cfg = {g: emb_cfg for g in gather_consts}; op_cfg.update(extra or {}); op_cfg.update(not_weights)
    t = time.time()
    config = cto.OptimizationConfig(global_config=global_cfg, op_name_configs=op_cfg)
    with np.errstate(divide="ignore", invalid="ignore"):
        if float_offsets:  # the target's own pass: uint4 blocks get int4_float_offset's numbers
            from coremltools.models.utils import _apply_graph_pass
            m = _apply_graph_pass(base, target._float_offset_quantizer_class()(config=config))
        else:
            m = cto.linear_quantize_weights(base, config)
    qt = time.time() - t
    m.save(str(out / "model.mlpackage"))
    size = sum(p.stat().st_size for p in (out / "model.mlpackage").rglob("*") if p.is_file()) / 1e6
    t = time.time()
    met = validate.measure(rt.EvaluatorSession(out / "model.mlpackage", int(manifest["max_seq_len"])), ref,
                           continuations="cont" in sys.argv)
    print(f"{name:28s} {size:7.1f} MB q {qt:5.1f}s eval {time.time()-t:5.0f}s ppl {met.ppl_increase_pct:+6.1f}% "
          f"top1 {met.top1_agreement:.1%} greedy {met.greedy_match:.2f} degen {met.degenerate_continuations}", flush=True)
    shutil.rmtree(out, ignore_errors=True)

int8 = cfg("linear_symmetric", "int8", "per_channel")
uint4 = cfg("linear", "uint4", "per_block")
V = {
    "float_all": lambda: run("float_all", uint4, uint4, float_offsets=True),  # today's int4
    "float_emb8": lambda: run("float_emb8", uint4, int8, float_offsets=True),
    "float_all_emb16": lambda: run("float_all_emb16", uint4, cfg("linear", "uint4", "per_block", 16), float_offsets=True),
    "base_sym4_emb8": lambda: run("base_sym4_emb8", cfg("linear_symmetric", "int4", "per_block"), int8),
    "asym4_emb8": lambda: run("asym4_emb8", cfg("linear", "int4", "per_block"), int8),
    "asym4_emb_asym4": lambda: run("asym4_emb_asym4", cfg("linear", "int4", "per_block"), cfg("linear", "int4", "per_block")),
    "sym4_b16_emb8": lambda: run("sym4_b16_emb8", cfg("linear_symmetric", "int4", "per_block", 16), int8),
    "asym4_b16_emb_asym4": lambda: run("asym4_b16_emb_asym4", cfg("linear", "int4", "per_block", 16), cfg("linear", "int4", "per_block", 16)),
}
for w in sys.argv[2].split(","): V[w]()
