"""Errors raised by mobilekit. Each message says what went wrong and how to fix it.

Only `mobilekit.cli` turns these into exit codes; library code never exits.
"""


class MobilekitError(Exception):
    """Base class: a problem the user can fix, described in the message."""


class UnknownNameError(MobilekitError):
    """A registry lookup missed (recipe, family, target, scheme)."""

    def __init__(self, kind: str, name: str, available: list[str]):
        self.kind, self.name, self.available = kind, name, sorted(available)
        super().__init__(f"Unknown {kind} {name!r}. Available: {', '.join(self.available)}")


class RecipeError(MobilekitError):
    """A recipe file is malformed or inconsistent."""


class CheckpointError(MobilekitError):
    """A checkpoint cannot be found, read or understood."""


class UnsupportedArchitectureError(CheckpointError):
    """No family claims the checkpoint's `architectures`."""


class TargetUnavailable(MobilekitError):
    """A target's runtime or converter is not installed or cannot run on this machine."""


class SchemeNotSupported(MobilekitError):
    """A quantization scheme a target does not offer."""


class ExportError(MobilekitError):
    """Export or lowering failed for a reason the user can act on."""


class BundleError(MobilekitError):
    """A bundle is missing, incomplete, or its files do not match the manifest."""


class ValidationFailed(MobilekitError):
    """An artefact missed one or more of its scheme's budgets."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report
