"""--quant auto: goals, the sensitivity pass and the assignment, on a tiny random Llama
with ExecuTorch's weight format (the real torchao quantizers)."""

import pytest
import torch

from mobilekit import precision, quantize, targets
from mobilekit.checkpoint import resolve
from mobilekit.errors import ExportError


@pytest.mark.parametrize("text, expected", [("110MB", 110_000_000), ("1.5GB", 1_500_000_000), ("900k", 900_000),
                                            ("4096", 4096), (" 12 mb ", 12_000_000)])
def test_sizes_parse(text, expected):
    assert quantize.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MB", "ten MB", "-5MB", "0", "5TB", "nanMB", "infGB"])
def test_bad_sizes_say_how_to_write_one(text):
    with pytest.raises(ExportError, match="--max-size"):
        quantize.parse_size(text)


def test_a_goal_is_exactly_one_of_size_and_quality():
    for size, ppl in ((None, None), (100, 5.0)):
        with pytest.raises(ExportError, match="exactly one goal"):
            precision.Goal(size, ppl)


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    checkpoint = resolve(str(tiny_llama_dir))
    return checkpoint.build_decoder(torch.float32), checkpoint.load_tokenizer()


def test_size_goal_is_met_and_spent_on_the_most_gain_per_byte(tiny):
    decoder, tokenizer = tiny
    fmt = targets.get("executorch").weight_format()
    before = {n: p.clone() for n, p in decoder.state_dict().items()}
    everything = precision.choose(decoder, tokenizer, fmt, precision.Goal(max_size_bytes=10 ** 12))
    smallest, largest = precision.size_bounds(decoder, fmt)
    assert all(g.bits == 8 for g in everything.groups if g.gain > 0)
    assert everything.predicted_size_bytes <= largest

    goal = int(smallest + 0.4 * (largest - smallest))
    plan = precision.choose(decoder, tokenizer, fmt, precision.Goal(max_size_bytes=goal))
    assert plan.predicted_size_bytes <= goal < largest
    assert 0 < sum(g.bits == 8 for g in plan.groups) < len(plan.groups)
    assert set(plan.bits()) == {n for n, m in decoder.named_modules() if isinstance(m, (torch.nn.Linear,
                                                                                      torch.nn.Embedding))}
    record = plan.as_manifest()
    assert record["calibration"]["kl"] <= record["calibration"]["kl_all_4_bits"]
    assert all(g["reason"] for g in record["groups"])
    # the decoder is left as it was: fp32, its tied/untied weights untouched
    assert all(torch.equal(before[n], p) for n, p in decoder.state_dict().items())

    with pytest.raises(ExportError, match="smallest mixed plan"):
        precision.choose(decoder, tokenizer, fmt, precision.Goal(max_size_bytes=int(smallest * 0.9)))


def test_quality_goal_promotes_until_met(tiny):
    decoder, tokenizer = tiny
    fmt = targets.get("executorch").weight_format()
    loose = precision.choose(decoder, tokenizer, fmt, precision.Goal(max_ppl_increase_pct=900))
    assert all(g.bits == 4 for g in loose.groups)
    reachable = precision.choose(decoder, tokenizer, fmt, precision.Goal(max_size_bytes=10 ** 12))
    goal = max(reachable.calibration["ppl_increase_pct"], 0) + 0.5
    plan = precision.choose(decoder, tokenizer, fmt, precision.Goal(max_ppl_increase_pct=goal))
    assert plan.calibration["ppl_increase_pct"] <= goal
