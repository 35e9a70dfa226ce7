"""The size/quality curve `--quant auto` chooses from, for one checkpoint and target:
predicted model size against calibration-text perplexity increase, after promoting the
first k groups (in gain-per-byte order) from 4 to 8 bits. Cheap (one sensitivity pass, no
export); pick a --max-size or --max-ppl-increase from it, then export to measure.

  python scripts/auto_curve.py [--checkpoint embedded] [--target executorch] [--points 8]
"""

import argparse

import torch

from mobilekit import precision, targets
from mobilekit.checkpoint import resolve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="embedded")
    parser.add_argument("--target", default="executorch", choices=[n for n in targets.names()
                                                                    if "auto" in targets.get(n).offered_schemes()])
    parser.add_argument("--points", type=int, default=8)
    args = parser.parse_args()
    checkpoint = resolve(args.checkpoint)
    rows = precision.curve(checkpoint.build_decoder(torch.float32), checkpoint.load_tokenizer(),
                           targets.get(args.target).weight_format(), args.points, print)
    print(f"\n{args.target}: groups at 8 bits | predicted size | calibration ppl")
    for row in rows:
        print(f"{row['groups_at_8_bits']:>4} | {row['predicted_size_bytes'] / 1e6:7.1f} MB | "
              f"{row['calibration_ppl_increase_pct']:+6.1f}%")


if __name__ == "__main__":
    main()
