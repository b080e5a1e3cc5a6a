"""The runtime is torch-free: importing it (and building the whole CLI) pulls in none of the export
stage's heavy libraries. Checked in a fresh interpreter, so nothing imported by other tests counts."""

import json
import pkgutil
import subprocess
import sys

FORBIDDEN = {"torch", "diffusers", "transformers", "onnx", "onnxscript", "optimum"}


def test_runtime_kernels_and_cli_import_no_torch():
    import svdedit.kernels
    import svdedit.runtime

    modules = ["svdedit.cli", "svdedit.export.cli"]
    for pkg in (svdedit.runtime, svdedit.kernels):
        modules += [pkg.__name__] + [f"{pkg.__name__}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)]
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import svdedit.cli; svdedit.cli.build_parser()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = {m.split(".")[0] for m in json.loads(out)}
    assert not loaded & FORBIDDEN, f"the runtime imported {sorted(loaded & FORBIDDEN)}"
    assert "svdedit.runtime.engine" in modules  # the walk really found the runtime's modules
