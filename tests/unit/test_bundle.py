import json

import pytest

from mobilekit import bundle
from mobilekit.errors import BundleError


def test_staging_renames_only_on_success(tmp_path):
    dest = tmp_path / "b"
    with bundle.staging(dest) as stage:
        (stage / "model.bin").write_bytes(b"abc")
        bundle.write_manifest(stage, {"target": "x"})
        assert not dest.exists()
    assert (dest / "model.bin").read_bytes() == b"abc"
    assert list(tmp_path.iterdir()) == [dest]


def test_interrupted_export_leaves_nothing(tmp_path):
    dest = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        with bundle.staging(dest) as stage:
            (stage / "model.bin").write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused(tmp_path):
    with pytest.raises(BundleError, match="already exists; remove it or pass another --output"):
        with bundle.staging(tmp_path):
            pass


def test_manifest_round_trip_and_tamper_detection(tmp_path):
    (tmp_path / "model.pte").write_bytes(b"weights")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "w.bin").write_bytes(b"more")
    written = bundle.write_manifest(tmp_path, {
        "target": "executorch", "quant": "fp32", "max_seq_len": 64, "vocab_size": 512, "checkpoint": {"kind": "local", "path": "/models/tiny"},
        "model_files": ["model.pte"], "bos_id": 1, "eos_ids": [2], "add_bos": False, "export": {"seconds": 1.0},
        "validation": {"performed": False, "passed": None},
    })
    read = bundle.read_manifest(tmp_path)
    assert read == written
    assert set(read["files"]) == {"model.pte", "sub/w.bin"}
    assert read["size_bytes"] == len(b"weights") + len(b"more")
    bundle.verify_files(tmp_path, read)
    (tmp_path / "sub" / "w.bin").write_bytes(b"evil")
    with pytest.raises(BundleError, match="sub/w.bin does not match its sha256"):
        bundle.verify_files(tmp_path, read)


def test_read_manifest_errors(tmp_path):
    with pytest.raises(BundleError, match="mobilekit.json is missing"):
        bundle.read_manifest(tmp_path)
    (tmp_path / "mobilekit.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(BundleError, match="schema_version 99"):
        bundle.read_manifest(tmp_path)
