"""The benchmarks room: every benchmark is listed by `python -m benchmarks` in its room, and the README's tables
of results are the result files' (benchmarks/__main__.py, benchmarks/tables.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks import tables
from benchmarks.__main__ import CATALOG, HERE

ROOT = Path(__file__).resolve().parents[2]
SHARED = {"__init__", "__main__", "machine", "engines", "tables"}  # the room's own parts, at its top


def test_every_benchmark_is_in_a_room_and_listed():
    on_disk = {str(p.relative_to(HERE).with_suffix("")).replace("/", ".") for p in HERE.rglob("*.py")
               if p.stem != "__init__"}
    listed = {e.module for e in CATALOG}
    assert on_disk - SHARED == listed, (sorted(on_disk - SHARED - listed), sorted(listed - on_disk))
    assert all("." in m for m in listed), "a benchmark at the top of benchmarks/, not in a room"


def test_the_listing_says_what_each_measures():
    out = subprocess.run([sys.executable, "-m", "benchmarks"], cwd=ROOT, capture_output=True, text=True, check=True)
    for e in CATALOG:
        assert e.module.replace(".", "/") in out.stdout or f"benchmarks.{e.module}" in out.stdout
    assert out.stdout.count("run time:") == sum(1 for e in CATALOG if e.writes != "-")


def test_the_readme_tables_are_the_result_files():
    readme = (ROOT / "README.md").read_text()
    names = [m["name"] for m in tables.REGION.finditer(readme)]
    assert sorted(names) == sorted(tables.TABLES), names
    assert tables.render(readme) == readme, "README.md's tables were edited by hand: run `python -m benchmarks tables`"
