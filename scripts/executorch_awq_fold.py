"""Does AWQ-style scaling help ExecuTorch's 8da4w on SmolLM2-135M? torchao's AWQObserver searches
each scale on the calibration text (against the 8da4w weights and int8 activations), and the
scales are folded into the preceding norm (q/k/v, gate/up) or up_proj's rows (down_proj), an
exact rewrite in fp32. Measured in eager simulation (precision._Runner: the target's
quantizer, simulated int8 activations) on the first 222 tokens of eval.txt. Exploratory
(issue 21): README "int4 quality" quotes its numbers.

    python scripts/executorch_awq_fold.py [GRID] [qkv,gateup,down] [skipbase]"""
import sys, time, torch
from mobilekit import pipeline, recipes, validate, precision
from mobilekit.targets.executorch import executorch_weight_format, executorch_config
from torchao.prototype.awq.core import AWQObserver

ctx = pipeline.make_context(recipes.get("smollm2-135m"), None, 512)
tok = ctx.tokenizer
dec = ctx.checkpoint.build_decoder()
fmt = executorch_weight_format()
eval_ids = tok(validate.eval_text())["input_ids"][:222]
cal_ids = tok(precision.calibration_text())["input_ids"][:512]
print("cal tokens", len(cal_ids))

def measure(label):
    groups = precision.groups_of(dec, fmt.kinds)
    r = precision._Runner(dec, eval_ids, fmt, groups)
    for ch in ({"lm_head": 8},):
        lp = r._logp(ch)
        ppl = r._ppl(lp)
        top1 = float((lp.argmax(-1) == r.reference_logp.argmax(-1)).float().mean())
        print(f"{label:30s} ref ppl {r.reference_ppl:.3f}  ppl {100*(ppl/r.reference_ppl-1):+.1f}%  top1 {top1:.1%}", flush=True)

if "skipbase" not in sys.argv: measure("int4 (today)")

def record_inputs(ids):
    """Inputs of every linear on a full-precision pass of `ids`."""
    groups = precision.groups_of(dec, fmt.kinds)
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: (inputs.setdefault(n, a[0].detach().reshape(-1, a[0].shape[-1])), None)[1])
             for n, m in dec.named_modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        precision._Runner(dec, ids, fmt, groups)  # its constructor runs the fp32 forward first
    for h in hooks: h.remove()
    return inputs

t = time.time()
inputs = record_inputs(cal_ids)
cfg = executorch_config("linear", 4)
alpha_grid = int(sys.argv[1]) if len(sys.argv) > 1 else 20
parts = sys.argv[2].split(",") if len(sys.argv) > 2 else ["qkv", "gateup", "down"]

def search(weights, x):
    obs = AWQObserver(torch.cat(weights), None, cfg, scale_search_space_size=alpha_grid)
    obs.inputs = [x]
    return obs.calculate_qparams()

with torch.no_grad():
    for i, layer in enumerate(dec.layers):
        a, mlp = layer.attention, layer.mlp
        p = f"layers.{i}."
        # q,k,v <- input_norm
        if "qkv" not in parts: s = None
        else: s = search([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], inputs[p + "attention.q_proj"])
        if s is not None:
            layer.input_norm.weight.div_(s)
            for lin in (a.q_proj, a.k_proj, a.v_proj): lin.weight.mul_(s)
        # gate, up <- post_attention_norm
        if "gateup" not in parts: s = None
        else: s = search([mlp.gate_proj.weight, mlp.up_proj.weight], inputs[p + "mlp.gate_proj"])
        if s is not None:
            layer.post_attention_norm.weight.div_(s)
            for lin in (mlp.gate_proj, mlp.up_proj): lin.weight.mul_(s)
        # down <- up_proj rows
        if "down" in parts:
            s = search([mlp.down_proj.weight], inputs[p + "mlp.down_proj"])
            mlp.up_proj.weight.div_(s[:, None])
            mlp.down_proj.weight.mul_(s)
print("awq scales", time.time() - t, "s")
measure(f"int4 + AWQ fold {parts} (grid {alpha_grid})")
