"""Starting and probing servers on loopback, for the serving benchmarks and tests."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 120) -> None:
    """Until GET /readyz answers 200 (the engines are open)."""
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not become ready in {timeout} s")


def start_uvicorn(engine: Path, store: Path, port: int, *options: str) -> subprocess.Popen:
    """`svdedit serve ENGINE` in its own process (so that its peak RSS is its own)."""
    return subprocess.Popen([sys.executable, "-m", "svdedit.cli", "serve", str(engine), "--port", str(port), "--store",
                             str(store), *options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
