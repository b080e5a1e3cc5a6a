"""Running the `svdedit` command in a subprocess, as a user would, and checking its error contract."""

from __future__ import annotations

import subprocess
import sys


def run_cli(*args, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "svdedit.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def assert_clear_error(proc: subprocess.CompletedProcess, command: str, *phrases: str) -> None:
    """A user mistake: exit status 2, one `svdedit COMMAND: error: ...` message, no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"svdedit {command}: error: "), proc.stderr
    for phrase in phrases:
        assert phrase in proc.stderr, proc.stderr
