"""What a new contributor waits for: the README's two commands from a fresh clone, with empty caches, and the
install they start done by uv (what make uses) against pip (the peer), the same locked packages.

    python -m benchmarks.install.bench_install               # ~3 min: the two installs and `make demo`
    python -m benchmarks.install.bench_install --make-test   # and `make test` from its own fresh clone (~17 min more)

Each measurement clones HEAD of this checkout into a temporary folder and gives uv and pip caches of their own
(UV_CACHE_DIR, PIP_CACHE_DIR), empty. uv: `make .venv/.installed` (its tools venv, `pip install uv`, `uv pip sync`
of the lock and the editable install). pip: `python -m venv` and `pip install -c LOCK -e ".[EXTRAS]"`, the same
versions. Then `make demo` and `make test` each in a new clone, timed whole (install included). The browser test's
chromium is whatever the machine has (make test installs it with apt-get where it can; that time is not
separated). Writes benchmarks/results/fresh_install_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parents[1] / "results"


def _fresh_clone(tmp: Path, name: str) -> tuple[Path, dict]:
    """A clone of HEAD under tmp, and an environment whose uv and pip caches are new empty folders."""
    clone = tmp / name
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    env = {**os.environ, "UV_CACHE_DIR": str(tmp / f"{name}-uv-cache"), "PIP_CACHE_DIR": str(tmp / f"{name}-pip-cache")}
    for var in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "VIRTUAL_ENV"):
        env.pop(var, None)
    return clone, env


def _timed(cmd: list[str], cwd: Path, env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return round(seconds, 1), proc.stdout


def main(argv: list[str] | None = None) -> int:
    from benchmarks.machine import describe

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--make-test", action="store_true", help="also time `make test` from a fresh clone (~17 min)")
    args = ap.parse_args(argv)
    lock = subprocess.run([sys.executable, "locks/lock.py", "path"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    extras = subprocess.run([sys.executable, "locks/lock.py", "extras"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    out: dict = {"command": "python -m benchmarks.install.bench_install" + (" --make-test" if args.make_test else ""),
                 "commit": commit, "lock": lock, "machine": describe()}
    with tempfile.TemporaryDirectory(prefix="svdedit-install-") as tmp:
        tmp = Path(tmp)
        clone, env = _fresh_clone(tmp, "uv")
        out["venv_uv_s"], _ = _timed(["make", ".venv/.installed"], clone, env)
        clone, env = _fresh_clone(tmp, "pip")
        venv = tmp / "pip-venv"
        t_venv, _ = _timed([sys.executable, "-m", "venv", str(venv)], clone, env)
        t_pip, _ = _timed([str(venv / "bin" / "pip"), "install", "--quiet", "-c", lock, "-e", f".[{extras}]"], clone, env)
        out["venv_pip_s"] = round(t_venv + t_pip, 1)
        out["uv_speedup"] = round(out["venv_pip_s"] / out["venv_uv_s"], 2)
        clone, env = _fresh_clone(tmp, "demo")
        out["make_demo_s"], _ = _timed(["make", "demo"], clone, env)
        if args.make_test:
            clone, env = _fresh_clone(tmp, "test")
            out["make_test_s"], said = _timed(["make", "test"], clone, env)
            summary = [line for line in said.splitlines() if re.search(r"\d+ passed", line)][-1]  # pytest's last line
            out["make_test_result"] = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped)", summary)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fresh_install_cpu.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
