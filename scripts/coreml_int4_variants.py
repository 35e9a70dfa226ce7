"""coremltools.optimize int4 variants (symmetric / asymmetric, block size, embedding bits) on an
fp16 Core ML bundle, measured as validation's stage 2 through the Core ML program evaluator.
Exploratory (issue 21): README "int4 quality" quotes its numbers for SmolLM2-135M.

    python scripts/coreml_int4_variants.py BUNDLE_FP16 base_sym4_emb8,asym4_emb8 [cont]

BUNDLE_FP16: `mobilekit export smollm2-135m --target coreml --quant fp16 --output B`."""
import json, shutil, sys, time
from pathlib import Path
import numpy as np
import coremltools as ct, coremltools.optimize.coreml as cto
from mobilekit import pipeline, recipes, validate
from mobilekit.runtime import coreml as rt

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

def run(name, global_cfg, emb_cfg, extra=None):
    out = SRC.parent / f"{SRC.name}-{name}"; shutil.rmtree(out, ignore_errors=True); out.mkdir()
    op_cfg = {g: emb_cfg for g in gather_consts}; op_cfg.update(extra or {})
    t = time.time()
    with np.errstate(divide="ignore", invalid="ignore"):
        m = cto.linear_quantize_weights(base, cto.OptimizationConfig(global_config=global_cfg, op_name_configs=op_cfg))
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
V = {
    "base_sym4_emb8": lambda: run("base_sym4_emb8", cfg("linear_symmetric", "int4", "per_block"), int8),
    "asym4_emb8": lambda: run("asym4_emb8", cfg("linear", "int4", "per_block"), int8),
    "asym4_emb_asym4": lambda: run("asym4_emb_asym4", cfg("linear", "int4", "per_block"), cfg("linear", "int4", "per_block")),
    "sym4_b16_emb8": lambda: run("sym4_b16_emb8", cfg("linear_symmetric", "int4", "per_block", 16), int8),
    "asym4_b16_emb_asym4": lambda: run("asym4_b16_emb_asym4", cfg("linear", "int4", "per_block", 16), cfg("linear", "int4", "per_block", 16)),
}
for w in sys.argv[2].split(","): V[w]()
