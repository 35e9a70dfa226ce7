"""Long fuzz runs of mobilekit's parsers of outside data under atheris (libFuzzer), issue 14.

    python fuzz/fuzz_parsers.py TARGET [libFuzzer flags ...]
    python fuzz/fuzz_parsers.py --list

TARGET is one of tests/reliability/parser_targets.py's TARGETS (recipe, manifest, config,
safetensors, weights, pickle, gguf, tokenizer, source). The same "feed these bytes"
functions run in the default test suite on their seeds (tests/reliability/test_parsers.py),
so this harness cannot rot. A MobilekitError is the parser's answer; any other exception (or
an assertion of the target: an ill-typed DecoderSpec accepted, a pickle that ran code) is a
crash, saved by libFuzzer as crash-<sha1> in the working directory.

The seed corpus is built on first use into fuzz/work/corpus/TARGET (tiny random checkpoints, no
network); libFuzzer adds what it finds there. atheris is not a mobilekit dependency:
    .venv/bin/pip install atheris
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ["HF_HUB_OFFLINE"] = "1"


def main() -> None:
    import atheris

    from reliability.parser_targets import TARGETS, Workspace

    # heavy libraries uninstrumented; the parsers (mobilekit, gguf, jsonschema) instrumented
    import torch  # noqa: F401
    import transformers  # noqa: F401

    with atheris.instrument_imports(include=["mobilekit", "gguf", "jsonschema"]):
        import gguf  # noqa: F401
        import jsonschema  # noqa: F401
        from mobilekit import bundle, checkpoint, families, recipes  # noqa: F401

        for family in families.names():
            families.get(family)

    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help", "--list"):
        print(__doc__)
        for name, target in TARGETS.items():
            print(f"  {name:12s} {target.doc}")
        sys.exit(0 if args else 2)
    name, flags = args[0], args[1:]
    if name not in TARGETS:
        sys.exit(f"unknown target {name!r}; one of {', '.join(TARGETS)}")
    work = Path(os.environ.get("MOBILEKIT_FUZZ_WORK", ROOT / "fuzz" / "work"))
    ws = Workspace(work)
    corpus = work / "corpus" / name
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in ws.seeds(name).values():  # idempotent: named by content
        path = corpus / hashlib.sha1(seed).hexdigest()
        if not path.exists():
            path.write_bytes(seed)
    run = TARGETS[name].run

    def test_one_input(data: bytes) -> None:
        run(data, ws)

    if not any(not f.startswith("-") for f in flags):
        flags.append(str(corpus))
    atheris.Setup([sys.argv[0], *flags], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
