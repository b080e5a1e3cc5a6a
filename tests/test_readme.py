"""The README's examples are executable documentation: every ```bash and ```python block in README.md runs here,
as written, or carries the reason it cannot (issue 26).

Each block is preceded by a marker line that says how it runs:

    <!-- readme-check: run -->                   in a work folder shared by all blocks, in README order (a file one
                                                 block writes is there for the next; the checkout's dist/ and models/
                                                 are linked in), the checkout's venv first on PATH
    <!-- readme-check: run in the checkout -->   the same, from the checkout's root (make targets)
    <!-- readme-check: run in a new venv -->     the same, with a new virtual environment first on PATH (a user's:
                                                 tests/conftest.py's wheel_venv)
    <!-- readme-check: run with a server -->     `svdedit serve svdedit:shapes` runs meanwhile; the block's
                                                 localhost:8000 is sent to the port it really got
    <!-- readme-check: skip: REASON -->          not run here, and why

`, without "LINE"` after a run marker leaves out the lines that start with LINE (make test, which runs this);
`, slow` puts the block under the slow marker (make test-slow: a costly block whose steps other tests cover).
A block without a marker fails, so a new example is run or says why not.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import HAS_TORCH, user_env

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = re.compile(r"<!--\s*readme-check:\s*(.*?)\s*-->")
MODES = ("run", "run in the checkout", "run in a new venv", "run with a server")


@dataclass(frozen=True)
class Block:
    line: int       # where the block's fence is in README.md
    language: str   # bash | python
    code: str
    mode: str       # one of MODES, or "skip"
    reason: str     # why it is skipped ("" for a block that runs)
    slow: bool = False  # run by make test-slow, not make test


def read_blocks(text: str) -> list[Block]:
    """Every fenced bash/python block with the marker on the line before it (a marker may be missing: mode "")."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        fence = re.match(r"^```(bash|python)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        code = "\n".join(lines[i + 1:end]) + "\n"
        marker = MARKER.search(lines[i - 1]) if i else None
        mode, reason, slow = "", "", False
        if marker:
            said = marker.group(1)
            slow = ", slow" in said
            said = said.replace(", slow", "")
            if said.startswith("skip:"):
                mode, reason = "skip", said[len("skip:"):].strip()
            else:
                mode, _, without = said.partition(", without ")
                for drop in re.findall(r'"([^"]+)"', without):
                    code = "\n".join(l for l in code.splitlines() if not l.strip().startswith(drop)) + "\n"
        blocks.append(Block(i + 1, fence.group(1), code, mode, reason, slow))
        i = end + 1
    return blocks


BLOCKS = read_blocks(README.read_text())


def test_every_block_says_how_it_runs():
    unmarked = [f"README.md:{b.line}" for b in BLOCKS if b.mode not in MODES + ("skip",)]
    assert not unmarked, f"blocks without a readme-check marker (see tests/test_readme.py): {unmarked}"
    assert all(b.reason for b in BLOCKS if b.mode == "skip"), "a skipped block says why"
    assert sum(b.mode != "skip" for b in BLOCKS) >= 8  # most of the README runs


def test_the_reader_sees_markers_and_blocks():
    """Not vacuous: a marker is read with its block, a skip keeps its reason, `without` drops the line, `slow` is
    read."""
    text = ('<!-- readme-check: run in the checkout, slow, without "make test" -->\n```bash\nmake demo\nmake test  # all\n'
            '```\nx\n<!-- readme-check: skip: needs a GPU -->\n```python\nimport cupy\n```\n```bash\nls\n```\n')
    a, b, c = read_blocks(text)
    assert (a.mode, a.code, a.line, a.slow) == ("run in the checkout", "make demo\n", 2, True)
    assert not b.slow
    assert (b.mode, b.reason, b.language) == ("skip", "needs a GPU", "python")
    assert c.mode == ""


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """The folder the blocks share, which looks like a checkout to them: its dist/ (the quick start installs from
    it) and models/ (the embedded model and `python -m models.shapes_data`) are linked in."""
    folder = tmp_path_factory.mktemp("readme")
    for name in ("dist", "models"):
        (folder / name).symlink_to(ROOT / name, target_is_directory=True)
    return folder


#: the lines of the blocks run so far in each work folder
RAN: dict[Path, set[int]] = {}


def _serve(env: dict, cwd: Path):
    """`svdedit serve svdedit:shapes` on a free port, ready (or the test fails with what it said)."""
    from benchmarks.serving.serving import free_port, wait_ready

    port = free_port()
    log = open(cwd / f"serve-{port}.log", "w+")
    proc = subprocess.Popen(["svdedit", "serve", "svdedit:shapes", "--port", str(port), "--store", str(cwd / "store")],
                            env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}")
    except TimeoutError:
        os.killpg(proc.pid, signal.SIGKILL)
        log.seek(0)
        pytest.fail(f"svdedit serve did not get ready: {log.read()[-2000:]}")
    return proc, port


RUN = [b for b in BLOCKS if b.mode in MODES]


@pytest.mark.parametrize("block", [pytest.param(b, marks=pytest.mark.slow) if b.slow else b for b in RUN],
                         ids=[f"README.md:{b.line}" for b in RUN])
def test_the_example_runs(block: Block, work: Path, request):
    if not HAS_TORCH:  # make test-runtime-oldest: the wheel without the export extra
        pytest.skip("the README's examples run in make test's environment (the export extra, the service)")
    ran = RAN.setdefault(work, set())
    if block.mode in ("run", "run with a server"):  # a reader has run the plain blocks above it (files they leave):
        for earlier in RUN:                         # under make test-slow alone, they have not run here yet
            if earlier.mode == "run" and earlier.line < block.line and earlier.line not in ran and (
                    block.slow or not earlier.slow):  # make test's blocks never needed the slow ones
                proc = run_block(earlier, work, request)
                assert proc.returncode == 0, f"README.md:{earlier.line}, run before {block.line}, failed:\n{proc.stderr[-3000:]}"
                ran.add(earlier.line)
    proc = run_block(block, work, request)
    ran.add(block.line)
    assert proc.returncode == 0, f"README.md:{block.line} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


def run_block(block: Block, work: Path, request) -> subprocess.CompletedProcess:
    """Run one block as its marker says (a server started for it and stopped after)."""
    env, cwd, server = user_env(Path(sys.prefix)), work, None
    if block.mode == "run in the checkout":
        cwd = ROOT
    elif block.mode == "run in a new venv":
        env = user_env(request.getfixturevalue("wheel_venv"))
    code = block.code
    if block.mode == "run with a server":
        pytest.importorskip("fastapi", reason="the server needs the serve extra")
        server, port = _serve(env, work)
        code = code.replace("localhost:8000", f"localhost:{port}")
    command = ["bash", "-euo", "pipefail", "-c", code] if block.language == "bash" else [sys.executable, "-c", code]
    try:
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
