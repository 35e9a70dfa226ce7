"""Errors raised by mobilekit. Each message says what went wrong and how to fix it.

Only `mobilekit.cli` turns these into exit codes (each class's `exit_code`); library code
never exits. Any other exception reaching the CLI is a bug in mobilekit (exit 70).
"""

# The documented exit codes (README "Errors and exit codes").
EXIT_INPUT = 1  # the user's input or environment is at fault; the message says how to fix it
EXIT_USAGE = 2  # the command line itself is wrong
EXIT_VALIDATION = 3  # an artefact missed a budget
EXIT_REGRESSION = 4  # `mobilekit matrix --baseline`: a cell regressed
EXIT_BUG = 70  # an internal error (EX_SOFTWARE): a bug in mobilekit, traceback in a log file
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT)
EXIT_TERMINATED = 143  # SIGTERM


class MobilekitError(Exception):
    """Base class: a problem the user can fix, described in the message."""

    exit_code = EXIT_INPUT


class UsageError(MobilekitError):
    """Options that contradict each other or are missing (what click cannot check)."""

    exit_code = EXIT_USAGE


class ResourceError(MobilekitError):
    """The machine lacks what the work needs: disk space, memory, a writable folder."""


class BundleBusy(MobilekitError):
    """Another mobilekit process is writing the same output folder."""


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


class PromptTooLong(MobilekitError):
    """A prompt that leaves no room in the bundle's context."""


class ValidationFailed(MobilekitError):
    """An artefact missed one or more of its scheme's budgets."""

    exit_code = EXIT_VALIDATION

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class HubError(MobilekitError):
    """The Hugging Face Hub could not be reached, or refused an upload."""
