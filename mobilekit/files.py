"""Light file helpers shared by the pipeline, bundles and the CLI (no torch: `mobilekit --help`
and the CLI's error handler import this)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir() -> Path:
    """Dequantized GGUFs, downloaded tokenizers and crash logs: MOBILEKIT_CACHE, else ~/.cache/mobilekit."""
    return Path(os.environ.get("MOBILEKIT_CACHE", Path.home() / ".cache" / "mobilekit"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
