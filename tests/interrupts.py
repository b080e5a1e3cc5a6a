"""Running a command and stopping it with a signal after a delay, for the kill-safety tests."""

from __future__ import annotations

import signal
import subprocess
import sys
import time


def run_and_signal(args: list, sig: int, after: float, timeout: float = 300) -> subprocess.CompletedProcess:
    """`svdedit ARGS`, sent `sig` `after` seconds in (if still running); the finished process."""
    proc = subprocess.Popen([sys.executable, "-m", "svdedit.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(timeout=after)
    except subprocess.TimeoutExpired:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_stopped_cleanly(proc: subprocess.CompletedProcess, sig: int) -> None:
    """Finished (0), or stopped by the signal: 130 with a message for SIGINT/SIGTERM, killed for SIGKILL."""
    if proc.returncode == 0:
        return
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        return
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and "interrupted" in proc.stderr, proc.stderr


def temporaries(folder) -> list:
    """What a writer leaves beside its outputs while it works (names starting with a dot)."""
    return sorted(p.name for p in folder.rglob(".*") if p.name != ".gitignore")


def wait_for(path, seconds: float = 30) -> None:
    deadline = time.time() + seconds
    while not path.exists() and time.time() < deadline:
        time.sleep(0.05)
