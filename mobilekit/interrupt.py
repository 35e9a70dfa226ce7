"""Ctrl-C and SIGTERM that no library can swallow.

Python turns SIGINT into a KeyboardInterrupt wherever the main thread is; a library that
catches BaseException there (a bare `except:` around an import or a loader) would let an
interrupted export run on and write its bundle. The CLI's handlers also remember the
request, and `check()` raises it again at the points where work becomes visible (the
staging folder's rename into place).
"""

from __future__ import annotations

import contextlib
import signal

_requested: int | None = None  # the signal number asked for, once asked


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so the same clean-up as for Ctrl-C runs."""


def _interrupt(signum, _frame):
    global _requested
    _requested = signum
    raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def requested() -> int | None:
    """The signal asked for (SIGINT or SIGTERM), or None."""
    return _requested


def check() -> None:
    """Raise the interruption again if one was asked for (even if it was swallowed)."""
    if _requested is not None:
        raise Terminated() if _requested == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def handlers():
    """SIGINT and SIGTERM raise (and are remembered) while inside; the previous handlers
    are restored after."""
    global _requested
    _requested = None
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
