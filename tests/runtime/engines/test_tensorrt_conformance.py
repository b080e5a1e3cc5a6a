"""TensorRT API conformance without a GPU: the real Python bindings of the lowest supported TensorRT (10.13.2, the first
CUDA 13 build) and of the newest (11.4), loaded against stand-in libraries (tests/fixtures/tensorrt_api.py), hold every
class, method, property and enum member of the strict stand-in that the build and the runner are tested against
(tests/fixtures/strict_tensorrt.py), with parameters the stand-in's calls fit.

The chain: the build and the runner run against the stand-in (tests/export/test_build_strict.py,
test_tensorrt_strict.py), which raises on anything it lacks; here the stand-in is held against the real API, so
whatever the code calls exists in that TensorRT, with that arity. The wheels are downloaded once into
$SVDEDIT_TEST_CACHE (default ~/.cache/svdedit-tests); without an index or a C compiler these tests skip, saying why,
except under CI=true, where a skip is a failure."""

from __future__ import annotations

import inspect
import os
import re
from pathlib import Path

import pytest

from tests.fixtures import strict_tensorrt
from tests.fixtures.tensorrt_api import CLASSES, ENUMS, NotAvailable, bindings, read_api

#: the lowest TensorRT the tensorrt extra admits (tensorrt-cu13's first release) and the newest on the index
VERSIONS = ["10.13.2.6", "11.4.0.106"]
#: the classes the code constructs itself; the others come from TensorRT's factories (their __init__ is TensorRT's own)
CONSTRUCTED = {"Builder", "Runtime", "OnnxParser", "Logger", "Refitter", "OnnxParserRefitter", "Weights"}
CACHE = Path(os.environ.get("SVDEDIT_TEST_CACHE") or Path.home() / ".cache" / "svdedit-tests") / "tensorrt"


#: onnxruntime-gpu of the gpu and ort-tensorrt extras (the floor; also the newest on the index)
ORT_GPU = "1.31.1"
ORT_TENSORRT_LIBRARY = "onnxruntime/capi/libonnxruntime_providers_tensorrt.so"


def unavailable(exc: NotAvailable, what: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"TensorRT conformance cannot run under CI: {exc}")
    pytest.skip(f"TensorRT conformance needs {what}: {exc}")


@pytest.fixture(scope="module", params=VERSIONS)
def api(request) -> dict:
    try:
        site, stubs = bindings(request.param, CACHE)
    except NotAvailable as exc:
        unavailable(exc, "the bindings wheel and a C compiler")
    return read_api(site, stubs)


@pytest.fixture(scope="module")
def ort_tensorrt_library() -> bytes:
    from tests.fixtures.wheel_member import wheel_member

    try:
        return wheel_member("onnxruntime-gpu", ORT_GPU, ORT_TENSORRT_LIBRARY, CACHE)
    except NotAvailable as exc:
        unavailable(exc, "onnxruntime-gpu's TensorRT provider library from the index")


def test_the_options_given_to_onnxruntimes_tensorrt_provider_are_its_own(ort_tensorrt_library, tmp_path):
    """onnxruntime ignores or refuses provider options it does not know; each name we pass is a C string of the
    provider library (read out of the onnxruntime-gpu wheel by range requests, 0.4 of its 256 MB)."""
    from svdedit.runtime.engines.onnxrt import provider_entry

    _, options = provider_entry("TensorrtExecutionProvider", tmp_path, "fp16")
    assert options and all(k.encode() + b"\0" in ort_tensorrt_library for k in options), sorted(
        k for k in options if k.encode() + b"\0" not in ort_tensorrt_library)
    assert b"trt_fp16_enabled\0" not in ort_tensorrt_library  # a near miss is not found: the check can fail


def fake_for(api: dict):
    return strict_tensorrt.make_tensorrt(strict_tensorrt.Behaviour(version=api["version"]))


def fits(ours: list[tuple[str, bool]], overload: list[tuple[str, bool]]) -> bool:
    """Calls that fit the stand-in's parameters fit this overload: the same names in the same order, every parameter
    TensorRT requires required by the stand-in too, and whatever TensorRT has beyond them optional."""
    if [n for n, _ in ours] != [n for n, _ in overload[:len(ours)]]:
        return False
    if any(real_default is False and our_default for (_, our_default), (_, real_default) in zip(ours, overload)):
        return False
    return all(default for _, default in overload[len(ours):])


def stand_in_members(cls) -> dict:
    """{name: "property" | [(parameter, has default)]} of what the stand-in's class defines itself."""
    out = {}
    for name, attr in vars(cls).items():
        if name.startswith("_") and name != "__init__":
            continue
        if isinstance(attr, property):
            out[name] = "property"
        elif inspect.isfunction(attr):
            params = list(inspect.signature(attr).parameters.values())[1:]
            out[name] = [(p.name, p.default is not inspect.Parameter.empty) for p in params]
    return out


def test_the_bindings_are_the_version_asked_for(api):
    assert api["version"] in VERSIONS and set(api["classes"]) == set(CLASSES)


def test_every_method_the_stand_in_has_exists_with_parameters_that_fit(api):
    fake = fake_for(api)
    wrong = []
    for cls_name in CLASSES:
        real = api["classes"][cls_name]
        for name, ours in stand_in_members(getattr(fake, cls_name)).items():
            if name == "__init__" and cls_name not in CONSTRUCTED:
                continue
            theirs = real.get(name)
            if theirs is None:
                wrong.append(f"{cls_name}.{name}: not in TensorRT {api['version']}")
            elif ours == "property":
                if theirs not in ("property", "attribute"):
                    wrong.append(f"{cls_name}.{name}: a property here, a method in TensorRT {api['version']}")
            elif not isinstance(theirs, list) or not theirs:
                wrong.append(f"{cls_name}.{name}: no readable signature in TensorRT {api['version']} ({theirs})")
            elif not any(fits(ours, overload) for overload in theirs):
                wrong.append(f"{cls_name}.{name}{ours}: TensorRT {api['version']} takes {theirs}")
    assert not wrong, "\n".join(wrong)


def test_every_enum_member_the_stand_in_has_exists(api):
    fake = fake_for(api)
    for enum in ENUMS:
        ours = {m.name for m in getattr(fake, enum)}
        assert ours <= set(api["enums"][enum]), f"{enum}: {sorted(ours - set(api['enums'][enum]))} not in " \
                                                f"TensorRT {api['version']}"


def test_the_stand_in_is_as_strict_as_the_version_it_plays(api):
    """What changed between 10 and 11 is where the stand-in differs: weak-typing flags are gone in 11."""
    major = int(api["version"].split(".")[0])
    flags = set(api["enums"]["BuilderFlag"])
    assert ({"FP16", "BF16", "INT8"} <= flags) == (major < 11)
    assert "STRONGLY_TYPED" in api["enums"]["NetworkDefinitionCreationFlag"]  # 11 keeps it, deprecated and ignored
    for name in ("set_device_memory", "get_device_memory_size_for_profile_v2"):  # from 10.1 on (not in 10.0)
        owner = "IExecutionContext" if name == "set_device_memory" else "ICudaEngine"
        assert name in api["classes"][owner]


#: cupy-cuda13x of the gpu extra, and what the TensorRT runner and tests/fixtures/strict_tensorrt.py's CuPy use of it
CUPY = "14.2.0"
CUPY_NAMES = {
    "cupy/cuda/stream.cpython-311-x86_64-linux-gnu.so": [b"non_blocking", b"synchronize", b"begin_capture",
                                                         b"end_capture", b"ptr"],
    "cupy/cuda/graph.cpython-311-x86_64-linux-gnu.so": [b"launch"],
    "cupy_backends/cuda/api/runtime.cpython-311-x86_64-linux-gnu.so": [b"getDeviceProperties"],
}


def test_the_cupy_names_the_runner_uses_are_cupys():
    """The Cython modules of the cupy-cuda13x wheel (read by range requests) define the names the runner calls
    (Stream(non_blocking=...).synchronize/begin_capture/end_capture/ptr, Graph.launch, getDeviceProperties); the
    NumPy-like ones (empty, asarray, ascontiguousarray) are in its __init__.py."""
    from tests.fixtures.wheel_member import wheel_member

    try:
        modules = {m: wheel_member("cupy-cuda13x", CUPY, m, CACHE) for m in [*CUPY_NAMES, "cupy/__init__.py"]}
    except NotAvailable as exc:
        unavailable(exc, "cupy-cuda13x's modules from the index")
    missing = [f"{m}: {n.decode()}" for m, names in CUPY_NAMES.items() for n in names if n not in modules[m]]
    init = modules["cupy/__init__.py"].decode()
    missing += [name for name in ("ascontiguousarray", "asarray", "empty", "uint8") if not re.search(
        rf"\b{name}\b", init)]
    assert not missing, missing
    fake = strict_tensorrt.make_cupy()
    assert {n for n in vars(fake) if not n.startswith("_")} <= {"uint8", "empty", "asarray", "ascontiguousarray",
                                                                "cuda"}  # the stand-in offers no more than is checked
