"""Peak memory of exporting a large recipe, without downloading it.

    python scripts/measure_large_export.py qwen2-7b-instruct [--target executorch] [--quant int4] [more export options, e.g. --no-validate]

Writes a random-weight checkpoint of the recipe's real size and layout (bf16 safetensors
shards, from the recipe's stored config) under $MOBILEKIT_CACHE/random/<recipe> once, then
runs `mobilekit export` on it under /usr/bin/time -v and prints the peak RSS next to the
bf16 checkpoint size. Random weights make the validation metrics meaningless (a budget miss
is expected and reported, not a failure of this measurement); memory and time are real.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from mobilekit import recipes
from mobilekit.checkpoint import cache_dir
from mobilekit.tiny import make_random_checkpoint


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("--target", default="executorch")
    parser.add_argument("--quant", default="int4")
    args, extra = parser.parse_known_args()  # the rest goes to `mobilekit export` (e.g. --no-validate)
    recipe = recipes.get(args.recipe)
    folder = cache_dir() / "random" / recipe.id
    if not (folder / "config.json").exists():
        print(f"writing a random bf16 checkpoint of {recipe.id} to {folder}", flush=True)
        make_random_checkpoint(folder, dict(recipe.config))
    checkpoint_bytes = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    out = Path(tempfile.mkdtemp()) / "bundle"
    command = ["/usr/bin/time", "-v", str(Path(sys.executable).parent / "mobilekit"), "export", recipe.id,
               "--checkpoint", str(folder), "--target", args.target, "--quant", args.quant,
               "--output", str(out), "--keep-failed", *extra]
    print(" ".join(command), flush=True)
    result = subprocess.run(command, stderr=subprocess.PIPE, text=True)
    (out.parent / "export.log").write_text(result.stderr)
    progress = [line for line in result.stderr.splitlines() if re.match(r"\[\d\d:\d\d:\d\d\]", line)]
    print("\n".join(progress))  # timestamped pipeline steps: where the time and memory went
    # GNU time says "kbytes" but reports KiB (ru_maxrss)
    peak_bytes = 1024 * int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", result.stderr).group(1)
    print(f"\n{recipe.id} -> {args.target} {args.quant}: exit {result.returncode}, wall {wall}, "
          f"peak RSS {peak_bytes / 1e9:.2f} GB = {peak_bytes / checkpoint_bytes:.2f}x the "
          f"{checkpoint_bytes / 1e9:.2f} GB bf16 checkpoint; bundle {out}, full log {out.parent / 'export.log'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
