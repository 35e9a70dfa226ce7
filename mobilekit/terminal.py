"""The terminal is mobilekit's: third-party output goes to a log file.

torch, torchao, transformers, ExecuTorch and coremltools write warnings, deprecation notes,
progress bars and native log lines between mobilekit's own progress lines (torchao's
"Failed to load …_C_mxfp8…so", pytree's enum notes, ExecuTorch's "[cpuinfo_utils.cpp:71]").
They all write to the process's stderr: Python warnings, logging's handlers and tqdm through
sys.stderr, C++ through file descriptor 2. So while a command runs, fd 2 points at a log
file, sys.stderr included, and mobilekit's own messages go to a copy of the original
stderr (`library_output_to_log` yields it). Nothing is dropped: the log is named at the end
when anything was written to it, and `mobilekit --verbose` leaves stderr alone.
"""

from __future__ import annotations

import io
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from mobilekit.files import cache_dir

# Libraries that read these at import draw no progress bars into the log (their progress is
# mobilekit's own spinner's); set only when output is routed, before any of them is imported.
QUIET_ENVIRONMENT = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}


def _stderr_is_fd_2() -> bool:
    """False where sys.stderr is not the process's stderr (a test's captured stream): then
    there is nothing on fd 2 to route, and the caller's stream is left as it is."""
    try:
        return sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def new_log_path(command: str) -> Path:
    folder = cache_dir() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


@contextmanager
def library_output_to_log(command: str):
    """Route fd 2 (and with it sys.stderr) to a new log file while the block runs; yields
    (terminal stream for mobilekit's own messages, log path), or (None, None) where nothing
    is routed (stderr is not fd 2, or no log file can be made). The log is named on the
    terminal at the end if anything was written to it, and removed if not."""
    if not _stderr_is_fd_2():
        yield None, None
        return
    try:
        log_path = new_log_path(command)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError:  # no writable cache folder: leave stderr as it is
        yield None, None
        return
    sys.stderr.flush()
    terminal_fd = os.dup(2)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    saved_environment = {key: os.environ.get(key) for key in QUIET_ENVIRONMENT}
    os.environ.update(QUIET_ENVIRONMENT)
    terminal = io.TextIOWrapper(os.fdopen(terminal_fd, "wb", buffering=0), encoding=sys.stderr.encoding or "utf-8",
                                errors="replace", write_through=True)
    try:
        yield terminal, log_path
    finally:
        sys.stderr.flush()
        try:
            written = log_path.stat().st_size > 0
        except OSError:
            written = False
        if written:
            terminal.write(f"Library output (warnings, native logs) is in {log_path} (--verbose shows it here).\n")
        os.dup2(terminal.fileno(), 2)
        terminal.close()
        for key, value in saved_environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if not written:
            log_path.unlink(missing_ok=True)
