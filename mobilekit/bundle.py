"""Bundles: the folder an app ships (model files, tokenizer, mobilekit.json manifest).

A bundle is assembled in a hidden temporary folder next to its destination and renamed
into place only when complete, so an interrupted export never leaves a half bundle.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path

from mobilekit.checkpoint import sha256_file
from mobilekit.errors import BundleError

MANIFEST = "mobilekit.json"
SCHEMA_VERSION = 1


def default_name(recipe_id: str, target: str, scheme: str) -> str:
    return f"{recipe_id}-{target}-{scheme}"


@contextlib.contextmanager
def staging(destination: Path):
    """Yield a temporary folder; on success rename it to `destination`, on failure remove it."""
    destination = Path(destination)
    if destination.exists():
        raise BundleError(f"{destination} already exists; remove it or pass another --output")
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    try:
        yield tmp
        tmp.rename(destination)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_entries(folder: Path) -> dict[str, dict]:
    """sha256 and size of every file in the bundle except the manifest (folders recursed,
    so a .mlpackage's files are listed one by one)."""
    entries = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel != MANIFEST:
            entries[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return entries


def write_manifest(folder: Path, manifest: dict) -> dict:
    manifest = {"schema_version": SCHEMA_VERSION, **manifest}
    manifest["files"] = file_entries(folder)
    manifest["size_bytes"] = sum(e["bytes"] for e in manifest["files"].values())
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return manifest


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{folder} is not a mobilekit bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{path} is not valid JSON ({e}); re-export the bundle") from e
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{path} has schema_version {version}; this mobilekit reads {SCHEMA_VERSION}. Re-export the bundle."
        )
    return manifest


def verify_files(folder: Path, manifest: dict) -> None:
    """Raise BundleError naming every file that is missing or whose sha256 changed."""
    problems = []
    for rel, entry in manifest["files"].items():
        path = Path(folder) / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{rel} does not match its sha256 in {MANIFEST}")
    if problems:
        raise BundleError(f"bundle {folder} is damaged: " + "; ".join(problems) + ". Re-export it.")


def update_validation(folder: Path, validation: dict) -> None:
    """Rewrite only the manifest's validation section (after `mobilekit validate`)."""
    path = Path(folder) / MANIFEST
    manifest = json.loads(path.read_text())
    manifest["validation"] = validation
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(path)
