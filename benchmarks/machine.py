"""A description of the machine a benchmark ran on, stored with every result."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from svdedit.runtime.engines.openvino import cpu_flags, cpu_model


#: the CPU features that decide int8 and bf16 speed (onnxruntime's int8 uses VNNI/AMX-INT8; bf16 units: AVX-512-bf16, AMX)
ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def _cpu_flags() -> list[str]:
    """Which of ISA this CPU has (as lscpu lists them): a CPU timing means little without them."""
    return [f for f in ISA if f in cpu_flags()]


def _memory_gib() -> float | None:
    try:
        for line in open("/proc/meminfo", encoding="utf-8"):
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        return None
    return None


def _gpu() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def describe() -> dict:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "gpu": _gpu(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


RESULTS = Path(__file__).resolve().parent / "results"


def device_slug(device: str) -> str:
    """A device description as a result file's name part: "Intel(R) Xeon(R) Processor, ..." -> intel-r-xeon-r-processor."""
    return re.sub(r"[^A-Za-z0-9]+", "-", device.split(",")[0]).strip("-").lower()


def turns(ways: int, rounds: int):
    """(round, way) in the order of a side-by-side measurement: every way once per round, the order reversed every
    other round (A B, B A, A B), so that a machine whose speed drifts during the run slows every way alike."""
    for r in range(rounds):
        for k in (range(ways) if r % 2 == 0 else reversed(range(ways))):
            yield r, k


def write_result(stem: str, res: dict, markdown: str) -> None:
    """benchmarks/results/STEM.json (the result, with its machine) and STEM.md (its table), and the table on stdout."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown)
    print(markdown)


def status_gib(pid: int, field: str) -> float | None:
    """A memory field of /proc/PID/status in GiB (VmRSS: resident now; VmHWM: its peak); None if it has none.
    OSError if the process is gone."""
    for line in open(f"/proc/{pid}/status", encoding="utf-8"):
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 2**20
    return None


def rss_gib(pid: int) -> float:
    """The resident memory of process `pid` now (0 once it is gone)."""
    try:
        return status_gib(pid, "VmRSS") or 0.0
    except OSError:
        return 0.0


def run_watched(cmd: list[str], limit_gib: float, **popen) -> tuple[subprocess.CompletedProcess, dict | None]:
    """Run `cmd` (stdout and stderr captured), polling its RSS every 0.2 s; past `limit_gib` it is killed, so that a
    peer too large for a shared machine is recorded as such instead of the kernel's OOM killer picking a process.
    Returns (the finished process, None) or (the killed one, {stopped_at_rss_gib, limit_gib, seconds_until_stopped})."""
    import tempfile
    import time

    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, **popen)
        peak, stopped = 0.0, None
        while child.poll() is None:
            peak = max(peak, rss_gib(child.pid))
            if peak > limit_gib:
                child.kill()
                stopped = {"stopped_at_rss_gib": round(peak, 2), "limit_gib": limit_gib,
                           "seconds_until_stopped": round(time.perf_counter() - t0, 1)}
                break
            time.sleep(0.2)
        child.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, child.returncode, out.read(), err.read()), stopped
