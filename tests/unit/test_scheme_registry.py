"""Schemes are (target, scheme) quantizers; the pipeline's failure path through a fake target.

Adding a scheme is its Scheme (name, budget) plus one quantizer per target that offers it:
test_a_new_scheme_is_a_budget_and_one_quantizer_per_target adds one in two places and
exports through it.
"""

import json

import numpy as np
import pytest

from mobilekit import pipeline, quantize, targets
from mobilekit.errors import EXIT_VALIDATION, ExportError, SchemeNotSupported, UnknownNameError, ValidationFailed
from mobilekit.runtime.eager import EagerSession
from mobilekit.targets import Artefact, Target


def test_a_target_offers_exactly_the_schemes_it_registered():
    for name in targets.names():
        target = targets.get(name)
        registered = {scheme for (owner, scheme) in quantize.QUANTIZERS if owner == name}
        assert set(target.offered_schemes()) == registered
        assert set(target.schemes) == registered - set(quantize.GOAL_SCHEMES)
        assert target.default_scheme in target.schemes


def test_an_unregistered_pair_is_an_error_not_a_fall_through():
    with pytest.raises(SchemeNotSupported, match="target coreml does not offer quant scheme 'int3'"):
        targets.get("coreml").quantizer("int3")
    with pytest.raises(SchemeNotSupported, match="target executorch does not offer quant scheme 'fp16'"):
        targets.get("executorch").quantizer("fp16")
    with pytest.raises(SchemeNotSupported, match="target onnx does not offer quant scheme 'int3'. It offers: fp32, "):
        targets.get("onnx").quantizer("int3")


def test_registering_twice_or_an_unknown_scheme_is_refused():
    targets.get("onnx")  # its quantizers register on import: first, or this test would add one
    with pytest.raises(ValueError, match="two quantizers registered for target 'onnx', scheme 'int4'"):
        quantize.quantizer("onnx", "int4")(lambda model, scheme, plan=None: (model, {}))
    with pytest.raises(UnknownNameError, match="int3"):
        quantize.quantizer("onnx", "int3")(lambda model, scheme, plan=None: (model, {}))


def test_goal_schemes_come_with_a_weight_format():
    # precision.choose needs the target's WeightFormat to simulate a plan's bits
    for name in targets.names():
        target = targets.get(name)
        for scheme in quantize.GOAL_SCHEMES:
            if scheme in target.offered_schemes():
                assert target.weight_format() is not None, f"{name} offers {scheme} without a weight_format"


def test_auto_takes_a_plan_and_no_other_scheme_does():
    # one rule in the registry for every target, checked before the target's code runs
    calls = []
    for name in targets.names():
        targets.get(name)  # registers its quantizers
        for scheme, plan in (("auto", None), ("int4", {"lm_head": 8})):
            chosen = quantize.QUANTIZERS.get((name, scheme))
            if chosen is None:
                continue
            probe = quantize.Quantizer(name, scheme, lambda *a, **k: calls.append(a))
            with pytest.raises(ExportError, match=f"scheme '{scheme}' was given {'no ' if plan is None else 'a '}plan"):
                probe(object(), plan=plan)
            with pytest.raises(ExportError, match="plan"):
                chosen(object(), plan=plan)
    assert calls == []


def test_only_layerwise_quantizers_quantize_while_loading():
    assert targets.get("executorch").layer_quantizer("int4") is not None
    assert targets.get("executorch").layer_quantizer("auto") is None  # a plan is measured on fp32 weights
    assert targets.get("executorch").layer_quantizer("fp32") is None
    assert targets.get("onnx").layer_quantizer("int4") is None


def test_a_new_scheme_is_a_budget_and_one_quantizer_per_target(monkeypatch, tiny_llama_dir, tmp_path):
    """Place 1: the Scheme with its budget. Place 2: ONNX's quantizer for it (here ONNX
    Runtime's 8-bit MatMulNBits, under a new name). Nothing else: the ONNX target offers it,
    the pipeline exports and validates through it, the manifest names it."""
    from mobilekit.targets.onnx import quantize_model

    monkeypatch.setitem(quantize.SCHEMES, "int8-test", quantize.Scheme(
        "int8-test", "8-bit blocks, registered by a test", quantize.INT8_BUDGET, 8.5))
    monkeypatch.setattr(quantize, "QUANTIZERS", dict(quantize.QUANTIZERS))

    @quantize.quantizer("onnx", "int8-test")
    def int8_under_another_name(model, scheme, plan=None):
        model, facts = quantize_model(model, "int8")
        return model, {**facts, "scheme": scheme}

    assert "int8-test" in targets.get("onnx").schemes
    assert "int8-test" not in targets.get("coreml").offered_schemes()
    context = pipeline.make_context(None, str(tiny_llama_dir), 64)
    result = pipeline.export(context, pipeline.ExportOptions(target="onnx", scheme="int8-test",
                                                             output=tmp_path / "bundle"))
    manifest = json.loads((result.path / "mobilekit.json").read_text())
    assert manifest["quant"] == "int8-test" and manifest["validation"]["passed"] is True
    assert manifest["export"]["quantization"] == {**manifest["export"]["quantization"], "method": "MatMulNBits",
                                                  "bits": 8, "scheme": "int8-test"}


class BrokenTarget(Target):
    """A fake target whose runtime adds noise to every logit: validation must miss the
    budget. Its artefact is one file; its session is the eager decoder."""

    name = "broken"
    default_scheme = "fp32"
    runtime = "mobilekit decoder, with noise"

    def export(self, request):
        (request.out_dir / "model.bin").write_bytes(b"\0" * 16)
        self.decoder = request.decoder
        return Artefact(files=["model.bin"], io={})

    def open_session(self, bundle_dir, manifest):
        return NoisySession(self.decoder, manifest["max_seq_len"], runtime=self.runtime)


class NoisySession(EagerSession):
    noise = np.random.default_rng(0)

    def _run(self, tokens):
        logits = np.asarray(super()._run(tokens), dtype=np.float32)
        return logits + self.noise.normal(0.0, 5.0, logits.shape).astype(np.float32)


@pytest.fixture
def broken_target(monkeypatch):
    target = BrokenTarget()
    monkeypatch.setattr(quantize, "QUANTIZERS", dict(quantize.QUANTIZERS))
    quantize.quantizer("broken", "fp32")(quantize.no_quantization)
    real_get = targets.get
    monkeypatch.setattr(targets, "get", lambda name: target if name == "broken" else real_get(name))
    return target


def test_a_missed_budget_is_exit_3_and_leaves_no_bundle(broken_target, tiny_llama_dir, tmp_path):
    context = pipeline.make_context(None, str(tiny_llama_dir), 64)
    output = tmp_path / "out" / "bundle"
    with pytest.raises(ValidationFailed) as failure:
        pipeline.export(context, pipeline.ExportOptions(target="broken", output=output))
    assert failure.value.exit_code == EXIT_VALIDATION == 3
    assert str(failure.value).startswith("validation failed:") and "--keep-failed" in str(failure.value)
    assert not output.exists()
    assert sorted(p.name for p in tmp_path.rglob("*")) in ([], ["out"])  # no staging folder, no lock left


def test_keep_failed_writes_the_bundle_marked_failed(broken_target, tiny_llama_dir, tmp_path):
    context = pipeline.make_context(None, str(tiny_llama_dir), 64)
    result = pipeline.export(context, pipeline.ExportOptions(target="broken", output=tmp_path / "bundle",
                                                             keep_failed=True))
    manifest = json.loads((result.path / "mobilekit.json").read_text())
    assert manifest["validation"]["performed"] is True and manifest["validation"]["passed"] is False
    assert (result.path / "model.bin").exists() and (result.path / "tokenizer.json").exists()


def test_the_lowering_kit_swaps_modules_and_restores_them(tiny_llama_dir):
    from torch import nn

    from mobilekit.checkpoint import resolve
    from mobilekit.lowering import modules_replaced, replace_modules
    from mobilekit.modeling.decoder import RMSNorm

    decoder = resolve(str(tiny_llama_dir)).build_decoder()
    norms = [m for m in decoder.modules() if isinstance(m, RMSNorm)]
    with modules_replaced(decoder, lambda m: nn.Identity() if isinstance(m, RMSNorm) else None):
        assert not any(isinstance(m, RMSNorm) for m in decoder.modules())
    assert [m for m in decoder.modules() if isinstance(m, RMSNorm)] == norms
    swapped = replace_modules(decoder, lambda m: nn.Identity() if isinstance(m, RMSNorm) else None)
    assert len(swapped) == len(norms) and not any(isinstance(m, RMSNorm) for m in decoder.modules())


def test_a_stage_times_and_names_the_failing_step():
    from mobilekit.errors import ExportError
    from mobilekit.lowering import stage

    timings, said = {}, []
    with stage(timings, "step_s", said.append, "stepping"):
        pass
    assert said == ["stepping"] and timings["step_s"] >= 0
    with pytest.raises(ExportError, match="torch.export of the toy decoder failed: RuntimeError: boom"):
        with stage(timings, "fail_s", said.append, "failing", failing="torch.export of the toy decoder"):
            raise RuntimeError("boom")
    assert "fail_s" not in timings
    with pytest.raises(ExportError, match="^ours$"):  # mobilekit's own errors pass through unchanged
        with stage(timings, "ours_s", said.append, None, failing="anything"):
            raise ExportError("ours")
