"""Bundles: the folder an app ships (model files, tokenizer, mobilekit.json manifest).

A bundle is assembled in a hidden staging folder next to its destination and renamed into
place only when complete, so an interrupted export never leaves a half bundle. A lock file
beside the destination keeps two exports from writing it at once. Reading a bundle
(validate, generate, bench) never changes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from mobilekit import card, interrupt
from mobilekit.errors import BundleBusy, BundleError, ResourceError
from mobilekit.files import sha256_file

MANIFEST = "mobilekit.json"
SCHEMA_VERSION = 1


def default_name(recipe_id: str, target: str, scheme: str) -> str:
    return f"{recipe_id}-{target}-{scheme}"


@contextlib.contextmanager
def staging(destination: Path, expected_bytes: int = 0):
    """Own `destination` for one export and yield a staging folder beside it; on success the
    folder is renamed to `destination`, on any failure or interruption it is removed.

    Before yielding: the output path is checked (no file in the way), the lock beside it is
    taken without waiting (BundleBusy names the process holding it), staging folders left by
    killed exports are swept (holding the lock proves their writers are gone: a writer holds
    it for as long as its staging folder exists, and the kernel drops the lock of a dead
    process), the destination must not exist, and the disk must have `expected_bytes` free."""
    from filelock import FileLock, Timeout

    destination = Path(destination)
    parent, created = _output_parent(destination)
    lock_path = parent / f".{destination.name}.lock"
    owner_path = parent / f".{destination.name}.lock.owner"
    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise BundleBusy(f"another mobilekit export is writing {destination} right now ({_owner(owner_path)}); "
                         "wait for it to finish, or pass another --output") from None
    except OSError as e:
        raise ResourceError(f"cannot create the lock file {lock_path} ({e.strerror}); "
                            "choose an --output in a folder you can write") from e
    try:
        owner_path.write_text(json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                          "command": " ".join(sys.argv)}))
        _sweep_stale(destination)
        if destination.exists():
            raise BundleError(f"{destination} already exists; remove it or pass another --output")
        _check_free_space(parent, expected_bytes)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_staging_prefix(destination)}{os.getpid()}-", dir=parent))
        try:
            yield tmp
            interrupt.check()  # a Ctrl-C that some library swallowed must still leave no bundle
            try:
                tmp.rename(destination)
            except OSError as e:  # something else created it meanwhile
                raise BundleError(f"{destination} appeared while the bundle was being written ({e.strerror}); "
                                  "nothing was written there. Remove it or pass another --output") from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    finally:
        owner_path.unlink(missing_ok=True)
        lock_path.unlink(missing_ok=True)  # filelock re-checks the inode after locking, so unlinking is safe
        lock.release()
        for folder in created:  # parents this export made for a bundle it did not write
            with contextlib.suppress(OSError):
                folder.rmdir()


def _staging_prefix(destination: Path) -> str:
    return f".{destination.name}.partial-"


def _output_parent(destination: Path) -> tuple[Path, list[Path]]:
    """The destination's parent folder, created if needed, and the folders that creating it
    made (deepest first); a file in the way of the path is the user's input at fault."""
    created = []
    for ancestor in [destination.parent, *destination.parent.parents]:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise BundleError(f"--output {destination}: {ancestor} is a file, not a folder; "
                                  "choose an output path under a folder")
            break
        created.append(ancestor)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ResourceError(f"cannot create the folder {destination.parent} for --output ({e.strerror}); "
                            "choose a folder you can write") from e
    if not os.access(destination.parent, os.W_OK | os.X_OK):
        raise ResourceError(f"cannot write into {destination.parent} (permission denied); "
                            "choose an --output in a folder you can write")
    return destination.parent, created


def _owner(owner_path: Path) -> str:
    try:
        owner = json.loads(owner_path.read_text())
        return f"process {owner['pid']}, started {owner['started']}: {owner['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its process is starting or ending"


def _sweep_stale(destination: Path) -> list[Path]:
    """Remove staging folders of `destination` left by exports that were killed (call with
    the lock held)."""
    swept = []
    for stale in destination.parent.glob(_staging_prefix(destination) + "*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
            swept.append(stale)
    return swept


def _check_free_space(folder: Path, expected_bytes: int) -> None:
    free = shutil.disk_usage(folder).free
    if expected_bytes and free < expected_bytes:
        raise ResourceError(f"the bundle needs about {expected_bytes / 1e6:.0f} MB in {folder}, which has "
                            f"{free / 1e6:.0f} MB free; free some space or pass another --output")


def file_entries(folder: Path) -> dict[str, dict]:
    """sha256 and size of every file in the bundle except the manifest and the model card
    written from it (folders recursed, so a .mlpackage's files are listed one by one)."""
    entries = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel not in (MANIFEST, card.CARD):
            entries[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return entries


def write_manifest(folder: Path, manifest: dict) -> dict:
    manifest = {"schema_version": SCHEMA_VERSION, **manifest}
    manifest["files"] = file_entries(folder)
    manifest["size_bytes"] = sum(e["bytes"] for e in manifest["files"].values())
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    (folder / card.CARD).write_text(card.model_card(manifest))
    return manifest


def read_manifest(folder: Path) -> dict:
    """A bundle's mobilekit.json, checked against mobilekit/data/manifest.schema.json (every
    field a reader indexes), or a BundleError naming the file and the JSON path at fault."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{folder} is not a mobilekit bundle: {MANIFEST} is missing")
    try:
        manifest = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, a 5000-digit number, deep nesting
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise BundleError(f"{path} is not valid JSON ({detail}); re-export the bundle") from e
    except OSError as e:
        raise BundleError(f"{path} cannot be read ({e.strerror or e})") from e
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} must hold a JSON object, not a {type(manifest).__name__}; re-export the bundle")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{path} has schema_version {version!r}; this mobilekit reads {SCHEMA_VERSION}. Re-export the bundle."
        )
    problems = _manifest_problems(manifest)
    if problems:
        shown = problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])
        raise BundleError(f"{path} is damaged or was not written by mobilekit: " + "; ".join(shown)
                          + ". Re-export the bundle.")
    return manifest


def _manifest_problems(manifest: dict) -> list[str]:
    """Every place `manifest` breaks manifest.schema.json, as "mobilekit.json: a.b.c must be ..."."""
    import jsonschema
    from importlib import resources

    global _MANIFEST_VALIDATOR
    if _MANIFEST_VALIDATOR is None:
        schema = json.loads((resources.files("mobilekit") / "data" / "manifest.schema.json").read_text())
        # integers are whole JSON numbers written without a fraction (64, not 64.0 or true)
        strict = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
            "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool))
        _MANIFEST_VALIDATOR = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=strict)(schema)
    _types = {"string": "a string", "integer": "a whole number", "number": "a number", "boolean": "true or false",
              "object": "an object", "array": "a list", "null": "null"}
    problems = []
    try:
        errors = sorted(_MANIFEST_VALIDATOR.iter_errors(manifest), key=lambda e: [str(p) for p in e.absolute_path])
    except RecursionError:
        return ["it is nested too deeply"]
    for error in errors:
        where = ".".join(str(p) for p in error.absolute_path)
        if error.validator == "required":
            missing = next((k for k in error.validator_value if k not in error.instance), "?")
            where = f"{where}.{missing}" if where else missing
            text = "is missing"
        elif "propertyNames" in error.relative_schema_path:  # a key of `where` (a file name), not a value
            where = f"{where}[{error.instance!r}]"
            text = error.schema.get("x-message", "is not an allowed key")
        elif error.validator == "type":
            kinds = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
            text = "must be " + " or ".join(_types.get(k, k) for k in kinds)
        elif "x-message" in error.schema:
            text = error.schema["x-message"]
        elif error.validator in ("minimum", "maximum"):
            text = f"must be {'at least' if error.validator == 'minimum' else 'at most'} {error.validator_value}"
        elif error.validator in ("const", "enum"):
            text = f"must be {error.validator_value!r}"
        elif error.validator == "minLength":
            text = "must not be empty"
        else:
            text = error.message[:200]
        problems.append(f"{MANIFEST}: {where or 'the manifest'} {text}")
    return problems


_MANIFEST_VALIDATOR = None


def verify_files(folder: Path, manifest: dict, hashes: bool = True) -> None:
    """Raise BundleError naming every file that is missing or whose sha256 changed
    (`hashes=False`: whose size changed, which is quick for multi-GB bundles)."""
    problems = []
    for rel, entry in manifest["files"].items():
        path = Path(folder) / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif not hashes and path.stat().st_size != entry["bytes"]:
            problems.append(f"{rel} has {path.stat().st_size} bytes, not the {entry['bytes']} of {MANIFEST}")
        elif hashes and sha256_file(path) != entry["sha256"]:
            problems.append(f"{rel} does not match its sha256 in {MANIFEST}")
    if problems:
        raise BundleError(f"bundle {folder} is damaged: " + "; ".join(problems) + ". Re-export it.")
