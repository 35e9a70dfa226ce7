"""Why ExecuTorch int8 (8da8w) misses on SmolLM2-135M, and whether SmoothQuant-style scaling
fixes it. Eager torchao (the target's own quantizer, real int8 dynamic activations), measured
exactly as validation's stage 2 is (validate.measure, the same 96-token text and prompts).

Variants: base (the target's int8), wo (weight-only int8: no activation quantization), and
ALPHA[:PARTS] (SmoothQuant: per input channel s = max|x|^alpha / max|w|^(1-alpha) from the
calibration text, folded exactly into the RMSNorm before q/k/v (qkv) and gate/up (gateup),
and into up_proj's rows before down_proj (down)). Exploratory: README "Validation budgets"
quotes its numbers; not part of the product yet.

    python scripts/executorch_int8_smoothing.py int8|int4 base,wo,0.5,0.5:qkv+gateup [cont]"""
import copy
import sys
import time

import torch
from torchao.quantization.granularity import PerAxis
from torchao.quantization.quant_api import IntxWeightOnlyConfig

from mobilekit import pipeline, precision, recipes, validate
from mobilekit.runtime.eager import EagerSession
from mobilekit.targets import executorch as et

ctx = pipeline.make_context(recipes.get("smollm2-135m"), None, 512)
reference = ctx.reference(lambda *_: None)
base = ctx.checkpoint.build_decoder(torch.float32)
calibration_ids = ctx.tokenizer(precision.calibration_text())["input_ids"][:512]


def input_absmax(decoder) -> dict:
    """Per input channel, the largest |x| each linear sees on the calibration text."""
    stats = {}

    def record(name, x):
        m = x.detach().reshape(-1, x.shape[-1]).abs().amax(0)
        stats[name] = torch.maximum(stats[name], m) if name in stats else m

    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: record(n, a[0]))
             for n, m in decoder.named_modules() if isinstance(m, torch.nn.Linear)]
    session = EagerSession(decoder, 1024)
    session.reset()
    session.step(calibration_ids)
    for h in hooks:
        h.remove()
    return stats


STATS = input_absmax(base)


@torch.no_grad()
def smooth(decoder, alpha: float, parts: list[str]) -> None:
    def fold(before, linears, x_max, rows=False):
        w_max = torch.stack([lin.weight.abs().amax(0) for lin in linears]).amax(0)
        s = (x_max.clamp(min=1e-5) ** alpha / w_max.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)
        before.weight.div_(s[:, None] if rows else s)
        for lin in linears:
            lin.weight.mul_(s)

    for i, layer in enumerate(decoder.layers):
        a, mlp, p = layer.attention, layer.mlp, f"layers.{i}."
        if "qkv" in parts:
            fold(layer.input_norm, [a.q_proj, a.k_proj, a.v_proj], STATS[p + "attention.q_proj"])
        if "gateup" in parts:
            fold(layer.post_attention_norm, [mlp.gate_proj, mlp.up_proj], STATS[p + "mlp.gate_proj"])
        if "down" in parts:
            fold(mlp.up_proj, [mlp.down_proj], STATS[p + "mlp.down_proj"], rows=True)


def run(label: str, scheme: str, alpha=None, parts=(), weight_only=False) -> None:
    decoder = copy.deepcopy(base)
    if alpha is not None:
        smooth(decoder, alpha, list(parts))
    if weight_only:
        for m in decoder.modules():
            if isinstance(m, torch.nn.Embedding):
                et._quantize_module(m, et.executorch_config("embedding", 8))
            elif isinstance(m, torch.nn.Linear):
                et._quantize_module(m, IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)))
    else:
        et.quantize_for_executorch(decoder, scheme)
    start = time.time()
    m = validate.measure(EagerSession(decoder, 512), reference, continuations="cont" in sys.argv)
    loops = f" loops {m.degenerate_continuations}/4" if "cont" in sys.argv else ""
    print(f"{label:36s} ppl {m.ppl_increase_pct:+.2f}%  top-1 {m.top1_agreement:.1%}  "
          f"max|Δlogit| {m.max_abs_logit_error:.2f}{loops}  ({time.time() - start:.0f} s)", flush=True)


scheme = sys.argv[1]
for variant in sys.argv[2].split(","):
    if variant == "base":
        run(scheme, scheme)
    elif variant == "wo":
        run("weight-only int8", scheme, weight_only=True)
    else:
        alpha, parts = variant.split(":") if ":" in variant else (variant, "qkv+gateup+down")
        run(f"{scheme} + smoothing a={alpha} {parts}", scheme, float(alpha), parts.split("+"))
