"""mobilekit: small language models into phone-app bundles (ExecuTorch, ONNX, Core ML).

The Python API (mobilekit/api.py) is reachable from here: mobilekit.export, export_each,
load_bundle, list_recipes, run_matrix, Bundle (not `recipes` or `matrix`: those names are
mobilekit's own modules). It is imported on first use, so `import mobilekit` (and the CLI's
--help) stays free of torch.
"""

__version__ = "0.1.0"

API = ("Bundle", "export", "export_each", "list_recipes", "load_bundle", "run_matrix")


def __getattr__(name: str):
    if name in API:
        # importlib, not an import statement: every module does `from mobilekit import x`,
        # and the import contracts (pyproject.toml) would read a static import here as all
        # of them importing the API layer above them
        import importlib

        return getattr(importlib.import_module("mobilekit.api"), name)
    raise AttributeError(f"module 'mobilekit' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *API])
