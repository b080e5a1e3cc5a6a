"""The architecture, enforced (shared/design/architecture.md):

- the runtime is torch-free: importing it, the kernels, the TensorRT build and the whole CLI in a fresh
  interpreter pulls in none of the export stage's heavy libraries;
- dependencies point one way: cli -> export -> runtime -> kernels, and cli -> serve -> runtime; nothing
  below cli/ imports it, the runtime never imports the export stage or the service, the kernels import
  nothing of svdedit's, and the engines (runtime/svdedit/runtime/engines/) do not import the editing method;
- no module imports a private name (`_name`) of another module of this repository, or reaches one
  through an imported module (`module._name`), and no private member of a class is used from outside
  it (`obj._method`: only `self._method`).

The import rules are read from the source (ast), so a function-local import counts as much as one at the top.
"""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import STAGES

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"torch", "diffusers", "transformers", "onnx", "onnxscript", "optimum"}
#: what each folder may not import (a module name, and every module below it)
RULES = {
    "runtime": ("svdedit.cli", "svdedit.export", "svdedit.serve"),
    "runtime/svdedit/runtime/engines": ("svdedit.cli", "svdedit.export", "svdedit.serve", "svdedit.runtime.editing"),
    "export": ("svdedit.cli", "svdedit.serve"),
    "serve": ("svdedit.cli", "svdedit.export"),
    "kernels": ("svdedit.cli", "svdedit.export", "svdedit.runtime"),
}
#: every folder of Python code in the repository: checked for private imports
CODE = STAGES + ("benchmarks", "models", "tests")
PROJECT_ROOTS = ("svdedit", "benchmarks", "models", "tests")


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] in STAGES:
        parts = parts[1:]  # the source root's name is not part of the module's
    return ".".join(p for p in parts if p != "__init__")


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, module imported, names taken from it) for every import statement of a file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            out.append((node.lineno, base, [a.name for a in node.names]))
    return out


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_runtime_kernels_build_and_cli_import_no_torch():
    for needed in ("onnx", "fastapi"):  # the TensorRT build reads ONNX; the service's modules import FastAPI
        pytest.importorskip(needed, reason="imports every module, the export stage's build and the service's too")
    import svdedit.cli
    import svdedit.kernels
    import svdedit.runtime

    import svdedit.serve

    modules = ["svdedit.export.build", "svdedit.export.graph"]
    for pkg in (svdedit.runtime, svdedit.kernels, svdedit.cli, svdedit.serve):
        modules += [pkg.__name__] + [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")
                                     if not m.name.endswith(".__main__")]  # __main__ runs the command
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import svdedit.cli; svdedit.cli.build_parser()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = {m.split(".")[0] for m in json.loads(out)}
    assert not loaded & FORBIDDEN, f"the runtime imported {sorted(loaded & FORBIDDEN)}"
    # the walk really found the layers' modules
    assert {"svdedit.runtime.engines.onnxrt", "svdedit.runtime.editing.edit", "svdedit.cli.edit"} <= set(modules)


@pytest.mark.parametrize("folder", sorted(RULES))
def test_dependencies_point_one_way(folder):
    broken = []
    for path in _files(folder):
        for line, module, _ in _imports(path):
            if any(module == bad or module.startswith(bad + ".") for bad in RULES[folder]):
                broken.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not broken, "\n".join(broken)


def test_no_module_takes_a_private_name_of_another():
    broken = []
    for folder in CODE:
        for path in _files(folder):
            own = _module_name(path)
            project_modules = set()  # names bound to modules of this repository in this file
            for line, module, names in _imports(path):
                if module.split(".")[0] not in PROJECT_ROOTS or module == own:
                    continue
                broken += [f"{path.relative_to(ROOT)}:{line} imports {n} from {module}" for n in names if _is_private(n)]
                project_modules.update(names or [module.split(".")[-1]])
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Attribute) and _is_private(node.attr) and isinstance(node.value, ast.Name)
                        and node.value.id in project_modules):
                    broken.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert not broken, "\n".join(broken)


def _private_members() -> set[str]:
    """Private methods and attributes of this repository's classes (`def _x` in a class, `self._x = ...`)."""
    names = set()
    for folder in CODE:
        for path in _files(folder):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ClassDef):
                    names |= {f.name for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
                elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                      and isinstance(node.value, ast.Name) and node.value.id == "self"):
                    names.add(node.attr)
    return {n for n in names if _is_private(n)}


def test_no_object_is_reached_into_from_outside():
    """A private method or attribute of a class is used through `self` (or `cls`) only, never as `obj._x`."""
    private = _private_members()
    broken = []
    for folder in CODE:
        for path in _files(folder):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Attribute) and node.attr in private
                        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
                    broken.append(f"{path.relative_to(ROOT)}:{node.lineno} uses .{node.attr}")
    assert not broken, "\n".join(broken)


def test_the_rules_see_what_they_check():
    """The checks above are not vacuous: they find the imports they are about."""
    runtime = ROOT / "runtime" / "svdedit" / "runtime"
    edit = {m for _, m, _ in _imports(runtime / "editing" / "edit.py")}
    assert {"svdedit.runtime.pipeline", "svdedit.runtime.editing.avi"} <= edit
    assert _module_name(runtime / "engines" / "__init__.py") == "svdedit.runtime.engines"
    assert any(m.startswith("svdedit.runtime") for p in _files("export") for _, m, _ in _imports(p))
    assert {"_guard", "_activate", "_infer", "_batches"} <= _private_members()
