"""Starting and probing servers on loopback, for the serving benchmarks and tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
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


_POLLER = """
import json, os, sys, time
import httpx
url, stop, every = sys.argv[1], sys.argv[2], float(sys.argv[3])
seconds = []
with httpx.Client(timeout=10) as client:
    while not os.path.exists(stop):
        t = time.perf_counter()
        try:
            ok = client.get(url + "/healthz").status_code == 200
        except httpx.HTTPError:
            ok = False
        seconds.append(time.perf_counter() - t if ok else float("inf"))
        time.sleep(every)
print(json.dumps(seconds))
"""


class HealthProbe:
    """GET /healthz every `every` seconds, from a process of its own (the client's own work, holding this process's
    GIL, would delay the probe), while the `with` block runs. `.seconds`: how long each answer took (inf: none)."""

    def __init__(self, url: str, every: float = 0.05):
        self.url, self.every = url, every
        self.seconds: list[float] = []

    def __enter__(self) -> "HealthProbe":
        self._stop = Path(tempfile.mkdtemp(prefix="health-")) / "stop"
        self._proc = subprocess.Popen([sys.executable, "-c", _POLLER, self.url, str(self._stop), str(self.every)],
                                      stdout=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.touch()
        out, _ = self._proc.communicate(timeout=60)
        self.seconds = json.loads(out) if out.strip() else []
        os.unlink(self._stop)

    def worst_ms(self) -> float:
        return round(1000 * max(self.seconds), 1) if self.seconds else float("nan")

    def p99_ms(self) -> float:
        s = sorted(self.seconds)
        return round(1000 * s[min(len(s) - 1, int(0.99 * len(s)))], 1) if s else float("nan")
