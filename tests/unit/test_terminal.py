"""Third-party output goes to a log file, mobilekit's own to the terminal (mobilekit.terminal).

Each case runs in a subprocess whose stderr is a pipe, as a user's terminal is fd 2: the
routing works on file descriptors, which pytest's own capture would otherwise hide."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

# Every way a library writes to stderr: a Python warning, a logger with no handler (logging's
# last resort), a handler made on sys.stderr, a print to sys.stderr, and C code on fd 2.
NOISY = textwrap.dedent("""
    import logging, os, sys, warnings
    from mobilekit import terminal

    with terminal.library_output_to_log("test") as (stream, log):
        warnings.warn("library-warning")
        logging.getLogger("somelib").warning("library-logger")
        handler_logger = logging.getLogger("otherlib")
        handler_logger.addHandler(logging.StreamHandler())
        handler_logger.warning("library-handler")
        print("library-print", file=sys.stderr)
        os.write(2, b"native-write\\n")
        stream.write("mobilekit-message\\n")
    print("after", file=sys.stderr)
""")


def run(code: str, cache: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MOBILEKIT_CACHE": str(cache), **env})


def test_library_output_goes_to_the_log_and_the_log_is_named(tmp_path):
    result = run(NOISY, tmp_path)
    assert result.returncode == 0, result.stderr
    logs = list((tmp_path / "logs").glob("test-*.log"))
    assert len(logs) == 1, result.stderr
    written = logs[0].read_text()
    for noise in ("library-warning", "library-logger", "library-handler", "library-print", "native-write"):
        assert noise in written
        assert noise not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == "mobilekit-message"
    assert str(logs[0]) in lines[1] and "--verbose" in lines[1]
    assert lines[2] == "after", "stderr is the terminal again after the block"


def test_nothing_written_leaves_no_log(tmp_path):
    code = ("from mobilekit import terminal\n"
            "with terminal.library_output_to_log('test') as (stream, log):\n"
            "    stream.write('only mine\\n')\n")
    result = run(code, tmp_path)
    assert result.returncode == 0 and result.stderr == "only mine\n", result.stderr
    assert not list((tmp_path / "logs").glob("*.log"))


def test_an_unwritable_cache_leaves_stderr_alone(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    code = ("import sys\nfrom mobilekit import terminal\n"
            "with terminal.library_output_to_log('test') as (stream, log):\n"
            "    assert stream is None and log is None\n"
            "    print('library-print', file=sys.stderr)\n")
    result = run(code, blocked)
    assert result.returncode == 0 and "library-print" in result.stderr, result.stderr


def test_cli_verbose_shows_library_output_and_default_routes_it(tmp_path):
    """Through the CLI's error boundary, with a command added for the test: a warning raised
    while it runs goes to the log, or with --verbose to the terminal; its own message shows
    either way."""
    code = textwrap.dedent("""
        import sys, warnings
        from mobilekit import cli
        @cli.main.command("noisy")
        def noisy():
            warnings.warn("library-warning")
            cli.click.secho("mobilekit-result", err=True, file=cli._terminal)
        sys.argv = ["mobilekit", *sys.argv[1:]]
        cli.main()
    """)
    quiet = subprocess.run([sys.executable, "-c", code, "noisy"], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "MOBILEKIT_CACHE": str(tmp_path)})
    assert quiet.returncode == 0, quiet.stderr
    assert "mobilekit-result" in quiet.stderr and "library-warning" not in quiet.stderr
    assert "library-warning" in next((tmp_path / "logs").glob("mobilekit-*.log")).read_text()

    verbose = subprocess.run([sys.executable, "-c", code, "--verbose", "noisy"], capture_output=True, text=True,
                             timeout=120, env={**os.environ, "MOBILEKIT_CACHE": str(tmp_path / "v")})
    assert verbose.returncode == 0, verbose.stderr
    assert "mobilekit-result" in verbose.stderr and "library-warning" in verbose.stderr
    assert not (tmp_path / "v" / "logs").exists() or not list((tmp_path / "v" / "logs").glob("*.log"))
