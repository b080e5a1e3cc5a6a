"""What a user of the wheel waits for: `make dist`, the install of the wheel into a fresh environment, and
`svdedit demo` there (issue 20's goal: the demo in under a minute on 2 cores after the install).

    rm -rf build/shapes-engine && python -m benchmarks.install.bench_distribution   # `make dist` from scratch, timed
    python -m benchmarks.install.bench_distribution --no-build # measures the wheel already in dist/

The wheel is installed with `[cpu]` into a fresh virtual environment (pip's cache warm, as after any earlier
install on the machine; no network is needed then) and run from a folder outside the checkout, PYTHONPATH
unset, exactly as tests/test_distribution.py does. `svdedit demo` runs --repeats times, each into a new folder:
the first run is what a user sees right after the install (cold file cache for the package), the median is
the steady figure. Writes benchmarks/results/distribution_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parents[1] / "results"


def timed(cmd: list[str], **kw) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    from benchmarks.machine import describe

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-build", action="store_true", help="do not run `make dist`; measure dist/ as it is")
    ap.add_argument("--repeats", type=int, default=3, help="runs of `svdedit demo` (default 3)")
    args = ap.parse_args(argv)

    out: dict = {"command": "python -m benchmarks.install.bench_distribution" + (" --no-build" if args.no_build else ""),
                 "machine": describe()}
    if not args.no_build:  # the export inside make dist is a no-op when build/shapes-engine is up to date
        out["make_dist_exports_the_engine"] = not (ROOT / "build" / "shapes-engine" / "manifest.json").exists()
        out["make_dist_s"] = round(timed(["make", "dist"], cwd=ROOT), 1)
    wheel = sorted((ROOT / "dist").glob("svdedit-*-py3-none-any.whl"))[-1]
    sdist = sorted((ROOT / "dist").glob("svdedit-*.tar.gz"))[-1]
    out["wheel"] = {"file": wheel.name, "mib": round(wheel.stat().st_size / 2**20, 1)}
    out["sdist"] = {"file": sdist.name, "mib": round(sdist.stat().st_size / 2**20, 1)}

    with tempfile.TemporaryDirectory(prefix="svdedit-user-") as tmp:
        root = Path(tmp)
        venv, work = root / "venv", root / "work"
        work.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
                   XDG_CACHE_HOME=str(root / "xdg"))
        out["venv_s"] = round(timed([sys.executable, "-m", "venv", str(venv)]), 1)
        out["pip_install_s"] = round(timed([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                                            "--disable-pip-version-check", f"{wheel}[cpu]"], env=env, cwd=root), 1)
        demo = [round(timed([str(venv / "bin" / "svdedit"), "demo", "-o", str(work / f"demo{i}")], env=env, cwd=work), 2)
                for i in range(args.repeats)]
        out["demo_s"] = {"runs": demo, "first": demo[0], "median": statistics.median(demo), "goal": 60}
        out["env_s"] = round(timed([str(venv / "bin" / "svdedit"), "env", "--json"], env=env, cwd=work), 2)
        torch = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True, env=env, cwd=work)
        out["torch_importable"] = torch.returncode == 0

    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "distribution_cpu.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in out if k != "machine"}, indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
