"""Model cards and `mobilekit push`, offline: everything up to the network call, and clean
errors for an offline, unreachable or refusing Hub (a local server that answers 401)."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mobilekit import bundle, card, hub
from mobilekit.tiny import TINY_LLAMA, make_tiny_checkpoint

MOBILEKIT = str(Path(sys.executable).parent / "mobilekit")


def mobilekit(*args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([MOBILEKIT, *args], capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **env})


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    folder = make_tiny_checkpoint(tmp_path_factory.mktemp("hub") / "tiny", TINY_LLAMA)
    out = tmp_path_factory.mktemp("hub-bundle") / "bundle"
    result = mobilekit("export", "--checkpoint", str(folder), "--target", "onnx", "--quant", "fp32",
                       "--max-seq-len", "64", "--output", str(out))
    assert result.returncode == 0, result.stderr
    return out


def front_matter(text: str) -> dict:
    """The card's YAML front matter: `key: value` lines and one `tags:` list (all the card writes)."""
    head = text.split("---\n")[1]
    fields, key = {}, None
    for line in head.splitlines():
        if line.startswith("- "):
            fields[key].append(json.loads(line[2:]))
        else:
            key, _, value = line.partition(": ")
            key = key.rstrip(":")
            fields[key] = [] if not value else (json.loads(value) if value.startswith('"') else value)
    return fields


def test_every_bundle_has_a_card_written_from_its_manifest(tiny_bundle):
    manifest = bundle.read_manifest(tiny_bundle)
    text = (tiny_bundle / card.CARD).read_text()
    assert text == card.model_card(manifest)
    assert card.CARD not in manifest["files"] and bundle.MANIFEST not in manifest["files"]
    meta = front_matter(text)
    assert meta["library_name"] == "onnx" and meta["pipeline_tag"] == "text-generation"
    assert {"mobilekit", "onnx", "fp32"} <= set(meta["tags"])
    # the validation table holds stage 2's numbers and the scheme's budgets
    stage2 = manifest["validation"]["stage2"]
    assert f"{stage2['metrics']['top1_agreement']:.1%}" in text
    assert f"≥ {stage2['budget']['min_top1_agreement']:.1%}" in text
    assert "## I/O contract" in text and "`input_ids`" in text
    assert "```kotlin" in text and "```swift" in text and "SimpleGenAI" in text
    for name, entry in manifest["files"].items():
        assert f"`{name}` | {entry['bytes']}" in text
    bundle.verify_files(tiny_bundle, manifest)  # the card is outside the hashed files


def test_the_hubs_own_parser_reads_the_card(tiny_bundle):
    from huggingface_hub import ModelCard

    data = ModelCard.load(tiny_bundle / card.CARD).data
    assert data.library_name == "onnx" and data.pipeline_tag == "text-generation"
    assert "mobilekit" in data.tags and "fp32" in data.tags


def test_a_license_the_hub_does_not_know_is_other_with_its_name():
    from huggingface_hub import ModelCard

    manifest = {"target": "onnx", "quant": "int4", "license": "LFM Open License v1.0",
                "checkpoint": {"repo": "LiquidAI/LFM2-350M"}, "files": {}, "validation": {"performed": False}}
    data = ModelCard(card.model_card(manifest)).data
    assert data.license == "other" and data.license_name == "lfm-open-license-v1.0"
    assert data.license_link == "https://huggingface.co/LiquidAI/LFM2-350M"
    assert data.base_model == "LiquidAI/LFM2-350M"


def test_front_matter_names_the_base_model_license_and_target():
    manifest = {"target": "executorch", "quant": "int4", "family": "llama", "license": "Apache-2.0",
                "checkpoint": {"repo": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "abc123"},
                "model_files": ["model.pte"], "max_seq_len": 2048, "files": {}, "validation": {"performed": False}}
    text = card.model_card(manifest)
    meta = front_matter(text)
    assert meta["library_name"] == "executorch" and meta["license"] == "apache-2.0"
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["base_model_revision"] == "abc123"
    assert "Not validated" in text and "LlmModule" in text and "TextRunner" in text


def test_commit_message_holds_recipe_scheme_and_verdict():
    message = hub.commit_message({"recipe": "smollm2-135m", "target": "coreml", "quant": "int4",
                                  "validation": {"performed": True, "passed": True}})
    assert message == "mobilekit: smollm2-135m, coreml int4, validation passed"


def test_push_offline_is_a_clean_error(tiny_bundle):
    result = mobilekit("push", str(tiny_bundle), "someone/tiny")
    assert result.returncode == 1, result.stderr
    assert "HF_HUB_OFFLINE" in result.stderr and "Traceback" not in result.stderr


def test_push_to_an_unreachable_hub_is_a_clean_error(tiny_bundle):
    result = mobilekit("push", str(tiny_bundle), "someone/tiny", HF_HUB_OFFLINE="0",
                       HF_ENDPOINT="http://127.0.0.1:9", HF_TOKEN="hf_test")
    assert result.returncode == 1, result.stderr
    assert "cannot reach the Hugging Face Hub" in result.stderr and "Traceback" not in result.stderr


class Refuses(http.server.BaseHTTPRequestHandler):
    def _refuse(self):
        body = b'{"error": "Invalid credentials in Authorization header"}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _refuse

    def log_message(self, *args):
        pass


def test_push_unauthorised_is_a_clean_error(tiny_bundle):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuses)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = mobilekit("push", str(tiny_bundle), "someone/tiny", HF_HUB_OFFLINE="0",
                           HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}", HF_TOKEN="hf_test")
    finally:
        server.shutdown()
    assert result.returncode == 1, result.stderr
    assert "refused to write someone/tiny (HTTP 401)" in result.stderr and "HF_TOKEN" in result.stderr
    assert "Traceback" not in result.stderr


def test_push_checks_the_bundle_first(tiny_bundle, tmp_path):
    damaged = tmp_path / "damaged"
    import shutil
    shutil.copytree(tiny_bundle, damaged)
    (damaged / "tokenizer.json").write_text("{}")
    result = mobilekit("push", str(damaged), "someone/tiny")
    assert result.returncode == 1 and "tokenizer.json does not match its sha256" in result.stderr, result.stderr
