"""The README's per-family parity rows: each family's tiny config (Family.tiny_config, every
quirk on) exported to every target at fp32 and int4, with stage 1 (the mobilekit decoder
against transformers eager fp32) and stage 2 (the artefact through its runtime) as max
|dlogit| / top-1 agreement, as `tests/families/test_more_families.py` validates them.

Families transformers lacks (minicpm, open_lm, openelm) need tests/reference's independent
references: their rows come from `pytest tests/families`, not from here.

  python scripts/family_parity.py lfm2 qwen3 [--seq-len 128]
"""

import argparse
import tempfile
from pathlib import Path

from mobilekit import families, pipeline
from mobilekit.tiny import make_tiny_checkpoint, tiny_budgets

SCHEMES = ("fp32", "int4")
COLUMNS = (("executorch", "ExecuTorch"), ("onnx", "ONNX"), ("coreml", "Core ML"))  # the README's order
SEQ_LEN = {"phi3": 64}  # Phi-3's LongRoPE is exact up to its original context (64 in the tiny config)


def cell(metrics: dict) -> str:
    error = metrics["max_abs_logit_error"]
    return f"{error:.1e} / {metrics['top1_agreement']:.0%}" if error < 0.01 else \
        f"{error:.2g} / {metrics['top1_agreement']:.0%}"


def row(name: str, seq_len: int) -> str:
    family = families.get(name)
    if family.hf_reference_class is None:
        raise SystemExit(f"{name}: no transformers reference; its row comes from pytest tests/families")
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_tiny_checkpoint(Path(tmp) / "ckpt", family.tiny_config)
        context = pipeline.make_context(None, str(folder), SEQ_LEN.get(name, seq_len), tiny_budgets(name))
        stage1, stage2 = None, []
        for target, _ in COLUMNS:
            for scheme in SCHEMES:
                result = pipeline.export(context, pipeline.ExportOptions(
                    target=target, scheme=scheme, output=Path(tmp) / f"{target}-{scheme}", keep_failed=True))
                validation = result.manifest["validation"]
                stage1 = stage1 or validation["stage1"]["metrics"]
                stage2.append(cell(validation["stage2"]["metrics"]) + ("" if validation["passed"] else " (failed)"))
    return f"| {name} | {cell(stage1)} | " + " | ".join(stage2) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="+", choices=families.names())
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    print("| family | stage 1 | " + " | ".join(f"{title} {s}" for _, title in COLUMNS for s in SCHEMES) + " |")
    for name in args.families:
        print(row(name, args.seq_len), flush=True)


if __name__ == "__main__":
    main()
