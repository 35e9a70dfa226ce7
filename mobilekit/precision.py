"""Mixed precision chosen by measurement: `--quant auto --max-size 110MB` (the best quality
within a size) or `--quant auto --max-ppl-increase 5` (the smallest within a quality).

1. Groups: the token embedding, the lm head, and each layer's attention and MLP linears.
2. Each target says how it stores a weight at 4 and at 8 bits (a `WeightFormat`: the
   weight its quantizer produces, dequantized, and the bytes it takes). Activations are
   simulated where the target quantizes them (ExecuTorch's dynamic int8).
3. Sensitivity, on the calibration text (data/calibration.txt; never the evaluation text
   validation reads): the decoder with every group at 4 bits, then each group alone at 8
   bits. A group's gain is how much that lowers the KL divergence from the fp32 decoder's
   next-token distributions; its cost is the bytes it adds.
4. Assignment: groups go to 8 bits in order of gain per byte, while the size allows
   (--max-size), or until the calibration perplexity is within the goal (--max-ppl-increase:
   a bisection on how many of that order to promote, each point measured).
5. The plan (module name -> bits, with each group's gain, cost and reason) is what the
   target's quantizer applies, and what the manifest records.

All of it runs on the fp32 decoder in PyTorch before export; groups' layers are re-run from
a cached input, so a pass costs about (groups / 2) forward passes of the calibration text.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Callable

from mobilekit.errors import ExportError
from mobilekit.modeling.decoder import OneSequence
from mobilekit.quantize import Goal, WeightFormat

CALIBRATION_TOKENS = 256
BITS = (4, 8)


def calibration_text() -> str:
    """Written for mobilekit (Apache-2.0, as the package): stories, facts, a recipe, a chat
    exchange, code and a letter, none of it in eval.txt."""
    return (resources.files("mobilekit") / "data" / "calibration.txt").read_text()


@dataclass
class Group:
    name: str  # "embedding", "lm_head", "layers.3.attention", "layers.3.mlp"
    modules: list[str]  # decoder-relative module names
    kind: str  # "embedding" or "linear"
    weights: int  # number of weights
    layer: int | None  # first layer it re-runs from (None: embedding -> all; head -> none)
    gain: float = 0.0  # KL drop when this group alone is at 8 bits
    bits: int = 4
    reason: str = ""


@dataclass
class Plan:
    goal: Goal
    groups: list[Group]
    predicted_size_bytes: int
    calibration: dict = field(default_factory=dict)  # KL / ppl measured for the chosen plan
    seconds: float = 0.0

    def bits(self) -> dict[str, int]:
        return {module: g.bits for g in self.groups for module in g.modules}

    def as_manifest(self) -> dict:
        return {
            "method": "sensitivity on the calibration text, greedy promotion to 8 bits by KL gain per byte",
            "goal": self.goal.describe(),
            "calibration_tokens": CALIBRATION_TOKENS,
            "predicted_size_bytes": self.predicted_size_bytes,
            "calibration": self.calibration,
            "seconds": round(self.seconds, 1),
            "groups": [{"group": g.name, "bits": g.bits, "weights": g.weights,
                        "kl_gain_at_8_bits": float(f"{g.gain:.4g}"), "reason": g.reason,
                        "modules": g.modules} for g in self.groups],
        }


def groups_of(decoder, kinds=("embedding", "linear")) -> list[Group]:
    import torch

    groups = []
    if "embedding" in kinds:
        groups.append(Group("embedding", ["embed_tokens"], "embedding", decoder.embed_tokens.weight.numel(), None))
    for i, layer in enumerate(decoder.layers):
        mixer = next(n for n in ("conv", "delta", "attention") if hasattr(layer, n))  # the layer's token mixer
        for part in (mixer, "mlp"):
            names = [f"layers.{i}.{part}.{n}" for n, m in getattr(layer, part).named_modules()
                     if isinstance(m, torch.nn.Linear)]
            size = sum(decoder.get_submodule(n).weight.numel() for n in names)
            groups.append(Group(f"layers.{i}.{part}", names, "linear", size, i))
    groups.append(Group("lm_head", ["lm_head"], "linear", decoder.lm_head.weight.numel(), len(decoder.layers)))
    return groups


def _size(groups: list[Group], fmt: WeightFormat, fixed_bytes: int) -> int:
    return fixed_bytes + int(sum(g.weights * fmt.bytes_per_weight[(g.kind, g.bits)] for g in groups))


def _fixed_bytes(decoder, groups: list[Group], fmt: WeightFormat) -> int:
    """Bytes no plan changes: fp32 weights no group covers (norms, biases, an untied
    embedding a target keeps) and the format's own overhead."""
    planned = {id(decoder.get_submodule(m).weight) for g in groups for m in g.modules}
    weights = 4 * sum(p.numel() for p in decoder.parameters() if id(p) not in planned)
    return weights + fmt.overhead_bytes_per_layer * len(decoder.layers)


def size_bounds(decoder, fmt: WeightFormat) -> tuple[int, int]:
    """Predicted model bytes with every group at 4 bits, and at 8."""
    groups = groups_of(decoder, fmt.kinds)
    fixed = _fixed_bytes(decoder, groups, fmt)
    return tuple(fixed + int(sum(g.weights * fmt.bytes_per_weight[(g.kind, b)] for g in groups)) for b in BITS)


def _sensitivity(decoder, tokenizer, fmt: WeightFormat, progress: Callable[[str], None]):
    """Each group's gain at 8 bits; groups in order of gain per added byte."""
    ids = tokenizer(calibration_text())["input_ids"][:CALIBRATION_TOKENS]
    groups = groups_of(decoder, fmt.kinds)
    progress(f"quantize auto: sensitivity of {len(groups)} groups on {len(ids)} calibration tokens")
    runner = _Runner(decoder, ids, fmt, groups)
    base_kl = runner.kl({})
    for g in groups:
        g.gain = base_kl - runner.kl({g.name: 8})
    order = sorted(groups, key=lambda g: g.gain / (g.weights * (fmt.bytes_per_weight[(g.kind, 8)]
                                                               - fmt.bytes_per_weight[(g.kind, 4)])), reverse=True)
    return runner, groups, order, base_kl


def curve(decoder, tokenizer, fmt: WeightFormat, points: int = 8,
          progress: Callable[[str], None] = lambda _m: None) -> list[dict]:
    """The size/quality curve --quant auto chooses from: predicted size and calibration
    perplexity increase after promoting the first k groups of the gain-per-byte order."""
    runner, groups, order, _ = _sensitivity(decoder, tokenizer, fmt, progress)
    fixed = _fixed_bytes(decoder, groups, fmt)
    ranked = [g for g in order if g.gain > 0]
    rows = []
    for k in sorted({round(i * len(ranked) / (points - 1)) for i in range(points)}):
        for rank, g in enumerate(ranked):
            g.bits = 8 if rank < k else 4
        ppl = runner.ppl({g.name: g.bits for g in groups})
        rows.append({"groups_at_8_bits": k, "predicted_size_bytes": _size(groups, fmt, fixed),
                     "calibration_ppl_increase_pct": round(100 * (ppl / runner.reference_ppl - 1), 2)})
    return rows


def choose(decoder, tokenizer, fmt: WeightFormat, goal: Goal,
           progress: Callable[[str], None] = lambda _m: None) -> Plan:
    """The plan for `decoder` (fp32, left unchanged) on this target's format."""
    started = time.perf_counter()
    runner, groups, order, base_kl = _sensitivity(decoder, tokenizer, fmt, progress)
    fixed_bytes = _fixed_bytes(decoder, groups, fmt)
    smallest = _size(groups, fmt, fixed_bytes)
    if goal.max_size_bytes is not None:
        if smallest > goal.max_size_bytes:
            raise ExportError(f"--max-size {goal.max_size_bytes / 1e6:.1f}MB is below this model's smallest mixed "
                              f"plan (every group at 4 bits): {smallest / 1e6:.1f} MB. Pass --max-size "
                              f"{math.ceil(smallest / 1e6)}MB or more, or --quant int4.")
        for g in order:
            g.bits = 8
            if _size(groups, fmt, fixed_bytes) > goal.max_size_bytes:
                g.bits = 4
                g.reason = "4 bits: 8 would exceed the size goal"
            elif g.gain <= 0:
                g.bits = 4
                g.reason = "4 bits: 8 bits measured no better"
            else:
                g.reason = "8 bits: most KL gain per byte that fits the size goal"
    else:
        target_ppl = runner.reference_ppl * (1 + goal.max_ppl_increase_pct / 100)
        ranked = [g for g in order if g.gain > 0]

        def ppl_with(k: int) -> float:
            return runner.ppl({g.name: 8 for g in ranked[:k]})

        lo, hi = 0, len(ranked)
        if ppl_with(hi) > target_ppl:
            raise ExportError(
                f"--max-ppl-increase {goal.max_ppl_increase_pct:g} is out of reach with 4- and 8-bit weights on this "
                f"target: even the most precise plan measures +{100 * (ppl_with(hi) / runner.reference_ppl - 1):.1f}% "
                "on the calibration text. Pass a larger --max-ppl-increase, or --quant int8 / fp16.")
        while lo < hi:  # fewest promotions whose calibration perplexity meets the goal
            mid = (lo + hi) // 2
            if ppl_with(mid) <= target_ppl:
                hi = mid
            else:
                lo = mid + 1
        for rank, g in enumerate(ranked):
            g.bits = 8 if rank < lo else 4
            g.reason = ("8 bits: among the most KL gain per byte, needed for the perplexity goal" if g.bits == 8
                        else "4 bits: the perplexity goal is met without it")
        for g in groups:
            g.reason = g.reason or "4 bits: 8 bits measured no better"
    chosen = {g.name: g.bits for g in groups}
    plan = Plan(goal, groups, _size(groups, fmt, fixed_bytes))
    plan.calibration = {"reference_ppl": round(runner.reference_ppl, 4), "ppl": round(runner.ppl(chosen), 4),
                        "kl_all_4_bits": float(f"{base_kl:.4g}"), "kl": float(f"{runner.kl(chosen):.4g}")}
    plan.calibration["ppl_increase_pct"] = round(100 * (plan.calibration["ppl"] / runner.reference_ppl - 1), 2)
    plan.seconds = time.perf_counter() - started
    progress(f"quantize auto: {sum(g.bits == 8 for g in groups)} of {len(groups)} groups at 8 bits, predicted "
             f"{plan.predicted_size_bytes / 1e6:.1f} MB, calibration ppl {plan.calibration['ppl_increase_pct']:+.1f}% "
             f"({plan.seconds:.0f} s)")
    return plan


class _Runner:
    """Forward passes of the calibration text with some groups at 8 bits and the rest at 4,
    re-running only from the first layer a change touches (inputs of each layer cached for
    the all-4-bit decoder)."""

    def __init__(self, decoder, ids: list[int], fmt: WeightFormat, groups: list[Group]):
        import torch

        self.decoder, self.fmt, self.groups = decoder, fmt, {g.name: g for g in groups}
        self.sequence = OneSequence(decoder.spec, ids)
        self.ids = self.sequence.ids
        self.originals = {name: decoder.get_submodule(name).weight for g in groups for name in g.modules}
        self.original_embedding = decoder.embed_tokens.weight
        self.shared_embedding = fmt.embedding_follows_head and decoder.lm_head.weight is decoder.embed_tokens.weight
        self.weights = {}  # (module, bits) -> dequantized weight as the target stores it
        for g in groups:
            for name in g.modules:
                module = decoder.get_submodule(name)
                for bits in BITS:
                    self.weights[(name, bits)] = fmt.weight(module, g.kind, bits)
        self.hooks = []
        with torch.no_grad():
            reference = self._forward_from(None, {}, fp32=True)
        self.reference_logp = torch.log_softmax(reference.double(), -1)
        self.targets = self.ids[0, 1:]
        self.reference_ppl = self._ppl(self.reference_logp)
        self.cache = {}  # layer -> its input hidden states with every group at 4 bits
        with torch.no_grad():
            self._forward_from(None, {}, record=True)

    def _set(self, changes: dict, fp32: bool) -> None:
        """Every module at 4 bits, except groups in `changes` ({group: 8}); or all fp32. A tied
        embedding reads the head's quantized weight where the target shares it
        (embedding_follows_head); elsewhere the two are set apart, as targets quantize them."""
        import torch

        for g in self.groups.values():
            for name in g.modules:
                weight = self.originals[name] if fp32 else self.weights[(name, changes.get(g.name, 4))]
                self.decoder.get_submodule(name).weight = torch.nn.Parameter(weight, requires_grad=False)
        if self.shared_embedding and not fp32:
            self.decoder.embed_tokens.weight = self.decoder.lm_head.weight

    def _forward_from(self, start: int | None, changes: dict, fp32: bool = False, record: bool = False):
        decoder, spec = self.decoder, self.decoder.spec
        self._set(changes, fp32)
        self._activation_hooks(not fp32)
        try:
            if start is None:
                h = self.sequence.embed(decoder)
                start = 0
            else:
                h = self.cache[start]
                # keys and values shared from layers before `start` (Gemma 3n), as recorded
                self.sequence.kv_shared = dict(self.cached_kv_shared)
            for i in range(start, spec.num_layers):
                if record:
                    self.cache[i] = h
                h = self.sequence.layer(decoder.layers[i], i, h)
            if record:
                self.cache[spec.num_layers] = h
                self.cached_kv_shared = dict(self.sequence.kv_shared)
            return decoder.head(h)[0]
        finally:
            for name, weight in self.originals.items():  # as it was (tied again where it was)
                decoder.get_submodule(name).weight = weight
            decoder.embed_tokens.weight = self.original_embedding
            self._activation_hooks(False)

    def _activation_hooks(self, on: bool) -> None:
        """Dynamic per-token int8 (asymmetric) on every linear's input, as XNNPACK's qd8 does."""
        import torch

        for hook in self.hooks:
            hook.remove()
        self.hooks = []
        if not on or not self.fmt.int8_activations:
            return

        def fake_quant(_module, args):
            x = args[0]
            lo = x.amin(-1, keepdim=True).clamp(max=0)
            hi = x.amax(-1, keepdim=True).clamp(min=0)
            scale = ((hi - lo) / 255).clamp(min=1e-12)
            zero = torch.round(-128 - lo / scale)
            q = torch.clamp(torch.round(x / scale) + zero, -128, 127)
            return ((q - zero) * scale,)

        for name in self.originals:
            module = self.decoder.get_submodule(name)
            if isinstance(module, torch.nn.Linear):
                self.hooks.append(module.register_forward_pre_hook(fake_quant))

    def _logp(self, changes: dict):
        import torch

        # a head the embedding follows changes the model from its first layer on
        layers = [None if self.shared_embedding and name == "lm_head" else self.groups[name].layer
                  for name, bits in changes.items() if bits == 8]
        start = None if any(layer is None for layer in layers) else min(layers, default=len(self.decoder.layers))
        with torch.no_grad():
            return torch.log_softmax(self._forward_from(start, changes).double(), -1)

    def kl(self, changes: dict) -> float:
        """Mean KL(fp32 || quantized) of next-token distributions over the calibration text."""
        logp = self._logp(changes)
        return float((self.reference_logp.exp() * (self.reference_logp - logp)).sum(-1).mean())

    def ppl(self, changes: dict) -> float:
        return self._ppl(self._logp(changes))

    def _ppl(self, logp) -> float:
        return float(math.exp(-logp[:-1].gather(-1, self.targets[:, None]).mean()))
