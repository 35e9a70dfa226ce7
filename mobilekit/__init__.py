"""mobilekit: small language models into phone-app bundles (ExecuTorch, ONNX, Core ML)."""

__version__ = "0.1.0"
