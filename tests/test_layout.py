"""No folder of the checkout shadows an installed module (issue 26).

`python -m pytest`, `python -m benchmarks.…` and pytest's own rootdir handling put the checkout's root first on
sys.path. A top-level folder with an `__init__.py` is then found before site-packages under its bare name:
when transformers 5.25 started to depend on the distribution `kernels`, the old top-level `kernels/` package
hid it and `from transformers import CLIPTextModel` failed.

The layout makes that impossible for the stage folders: cli/, export/, runtime/, kernels/ and serve/ are
source roots holding their portions of the namespace package `svdedit` (kernels/svdedit/kernels/svd.py is
`svdedit.kernels.svd`) and have no `__init__.py` themselves, so Python's import system ranks them below any
module or regular package of the same name found later on sys.path. The project's own import roots
(tests/, models/, benchmarks/) keep their names; the check below covers them and anything added later.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import STAGES

ROOT = Path(__file__).resolve().parents[1]

#: Run in a fresh interpreter with the checkout first on sys.path: for every import name that an installed
#: distribution provides (importlib.metadata.packages_distributions()), where Python would import it from.
#: Prints {"checked": [...], "shadowed": {name: [locations in the checkout]}}. argv[1]: the checkout.
SHADOW_CHECK = r"""
import importlib.metadata, importlib.util, json, site, sys
from pathlib import Path

root = Path(sys.argv[1]).resolve()
sys.path.insert(0, str(root))
installed = [Path(p).resolve() for p in site.getsitepackages() + [site.getusersitepackages()]]
checked, shadowed = [], {}
for name, dists in sorted(importlib.metadata.packages_distributions().items()):
    if not name.isidentifier() or "svdedit" in dists:  # svdedit's own portions live in the checkout by design
        continue
    spec = importlib.util.find_spec(name)  # a top-level name: found, not imported
    if spec is None:
        continue
    checked.append(name)
    where = list(spec.submodule_search_locations or []) + ([spec.origin] if spec.has_location else [])
    inside = [str(p) for p in map(lambda w: Path(w).resolve(), where)
              if p.is_relative_to(root) and not any(p.is_relative_to(s) for s in installed)]
    if inside:
        shadowed[name] = inside
print(json.dumps({"checked": checked, "shadowed": shadowed}))
"""


def _shadow_check(root: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", SHADOW_CHECK, str(root)], capture_output=True, text=True, cwd=root,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_no_folder_of_the_checkout_shadows_an_installed_module():
    found = _shadow_check(ROOT)
    assert not found["shadowed"], (
        "with the checkout first on sys.path, these installed modules would be imported from the checkout: "
        f"{found['shadowed']}. Rename the folder, or make it a folder without __init__.py (see this file's docstring)")
    assert {"numpy", "onnxruntime", "pytest"} <= set(found["checked"])  # the check saw the environment


def test_the_check_finds_a_shadowing_folder(tmp_path):
    """Not vacuous: a regular package named like an installed module, at the top of a checkout, is reported;
    the same folder without __init__.py (what the stage folders are) is not."""
    (tmp_path / "numpy").mkdir()
    (tmp_path / "numpy" / "__init__.py").write_text("")
    assert list(_shadow_check(tmp_path)["shadowed"]) == ["numpy"]
    (tmp_path / "numpy" / "__init__.py").unlink()
    assert _shadow_check(tmp_path)["shadowed"] == {}


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_folder_is_a_source_root_of_svdedit(stage):
    """runtime/ is not a package (no __init__.py): it holds runtime/svdedit/runtime/, which is svdedit.runtime."""
    folder = ROOT / stage
    assert not (folder / "__init__.py").exists(), f"{stage}/__init__.py would make {stage}/ importable as `{stage}`"
    assert sorted(p.name for p in folder.iterdir() if p.name != "__pycache__") == ["svdedit"]
    assert not (folder / "svdedit" / "__init__.py").exists()  # svdedit is a namespace package, one portion per stage
    assert (folder / "svdedit" / stage / "__init__.py").is_file()
    module = Path(__import__(f"svdedit.{stage}", fromlist=["__name__"]).__file__).resolve()
    assert module.parts[-3:] == ("svdedit", stage, "__init__.py")
    if not module.is_relative_to(Path(sys.prefix).resolve()):  # the checkout's editable install, not a wheel's
        assert module == (folder / "svdedit" / stage / "__init__.py").resolve()
