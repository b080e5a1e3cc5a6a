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
from pathlib import Path

import pytest

from tests.fixtures import strict_tensorrt
from tests.fixtures.tensorrt_api import CLASSES, ENUMS, NotAvailable, bindings, read_api

#: the lowest TensorRT the tensorrt extra admits (tensorrt-cu13's first release) and the newest on the index
VERSIONS = ["10.13.2.6", "11.4.0.106"]
#: the classes the code constructs itself; the others come from TensorRT's factories (their __init__ is TensorRT's own)
CONSTRUCTED = {"Builder", "Runtime", "OnnxParser", "Logger", "Refitter", "Weights"}
CACHE = Path(os.environ.get("SVDEDIT_TEST_CACHE") or Path.home() / ".cache" / "svdedit-tests") / "tensorrt"


@pytest.fixture(scope="module", params=VERSIONS)
def api(request) -> dict:
    try:
        site, stubs = bindings(request.param, CACHE)
    except NotAvailable as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"TensorRT conformance cannot run under CI: {exc}")
        pytest.skip(f"TensorRT conformance needs the bindings wheel and a C compiler: {exc}")
    return read_api(site, stubs)


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
