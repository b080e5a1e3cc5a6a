"""The lock: the exact versions `make demo`, `make test` and CI install (pyproject.toml keeps ranges).

    python3 locks/lock.py check              is this Python allowed, is there a lock for it, does it match pyproject.toml?
    python3 locks/lock.py path               the lock file for this Python and platform
    python3 locks/lock.py extras             the extras make installs (and the lock covers), comma-separated
    python3 locks/lock.py compile UV [UV-OPTIONS ...]
                                             write it with `uv pip compile` (keeps the pins it can; --upgrade: the
                                             newest); the options go to uv as they are (--find-links DIR, ...)

One lock per Python minor version and platform (locks/linux-x86_64-py3.11.txt): the extras the Makefile installs
(EXTRAS below) and the build backend (pyproject.toml's build-system.requires), resolved by uv. Its first line
records a hash of what it was made from (requires-python, the dependencies, the optional dependencies, the
build requirements), so a lock that pyproject.toml has moved away from is refused in one line instead of
installing something else than what pyproject.toml asks for.

Stdlib only, and it runs on any Python 3 far enough to say "too old" in one line: make calls it before there is
a virtual environment.
"""

import hashlib
import json
import os
import platform
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PYPROJECT = os.path.join(ROOT, "pyproject.toml")
#: the extras make installs into .venv (the lock covers exactly these; the Makefile reads them from here)
EXTRAS = ("export", "cpu", "serve", "dev", "ray", "openvino", "nncf")
HEADER = "# inputs-sha256: "


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(2)


def python_version():
    return "%d.%d" % sys.version_info[:2]


def lock_path():
    machine = platform.machine().lower().replace("amd64", "x86_64")
    return os.path.join(HERE, "%s-%s-py%s.txt" % (sys.platform, machine, python_version()))


def requires_python():
    """pyproject.toml's requires-python, and whether this Python is in it (read without tomllib: this must run on a
    Python too old for it). The forms used are '>=X.Y' and '<X.Y', joined by commas."""
    with open(PYPROJECT) as f:
        found = re.search(r'^requires-python\s*=\s*"([^"]*)"', f.read(), re.M)
    if not found:
        fail("pyproject.toml has no requires-python")
    here, allowed = sys.version_info[:2], True
    for clause in found.group(1).split(","):
        bound = re.match(r"\s*(>=|<)\s*(\d+)\.(\d+)\s*$", clause)
        if not bound:
            fail("pyproject.toml's requires-python %r: locks/lock.py reads only '>=X.Y' and '<X.Y'" % found.group(1))
        version = (int(bound.group(2)), int(bound.group(3)))
        allowed = allowed and (here >= version if bound.group(1) == ">=" else here < version)
    return found.group(1), allowed


def inputs():
    """What the lock is made from, as pyproject.toml says it, and its hash."""
    import tomllib  # 3.11+: requires_python() has been checked first

    with open(PYPROJECT, "rb") as f:
        data = tomllib.load(f)
    project = data.get("project", {})
    what = {
        "requires-python": project.get("requires-python"),
        "dependencies": project.get("dependencies", []),
        "optional-dependencies": project.get("optional-dependencies", {}),
        "build-system.requires": data.get("build-system", {}).get("requires", []),
        "extras": list(EXTRAS),
    }
    digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]
    return what, digest


def rel(path):
    return os.path.relpath(path, os.getcwd())


def check_python():
    """requires-python, once this Python is known to be in it."""
    spec, allowed = requires_python()
    if not allowed:
        fail("svdedit needs Python %s (pyproject.toml's requires-python), and %s is %s: run make with one it allows, "
             "e.g. `make test PYTHON=python3.11`" % (spec, sys.executable, python_version()))
    return spec


def check():
    spec = check_python()
    path = lock_path()
    if not os.path.exists(path):
        have = sorted(n for n in os.listdir(HERE) if n.endswith(".txt"))
        fail("no lock for Python %s on %s %s (%s; there are: %s; requires-python is %s): use a Python that has one "
             "(make test PYTHON=python3.11), or write one with `make lock PYTHON=%s` and run the tests on it"
             % (python_version(), sys.platform, platform.machine(), rel(path), ", ".join(have) or "none", spec,
                sys.executable))
    _, digest = inputs()
    with open(path) as f:
        first = f.readline().strip()
    if first != HEADER + digest:
        fail("%s was made from another pyproject.toml (its dependencies, extras or build requirements changed "
             "since): run `make lock` and commit the lock with the change" % rel(path))


def compile_lock(uv, options):
    check_python()
    what, digest = inputs()
    path = lock_path()
    cmd = [uv, "pip", "compile", "-", "pyproject.toml", "--python-version", python_version(), "--output-file", path,
           "--quiet", "--custom-compile-command", "make lock"]
    cmd += [a for e in EXTRAS for a in ("--extra", e)]
    cmd += options
    build = "\n".join(what["build-system.requires"]) + "\n"
    proc = subprocess.run(cmd, input=build, text=True, cwd=ROOT)
    if proc.returncode:
        fail("uv pip compile failed (above); the lock was left as it was")
    with open(path) as f:
        body = f.read()
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(HEADER + digest + "\n")
        f.write("# (a hash of pyproject.toml's requires-python, dependencies, optional-dependencies and build-system.requires,\n"
                "#  and of the extras locked: %s; locks/lock.py check compares it)\n" % ", ".join(EXTRAS))
        f.write("# Python %s on %s %s. Refresh: make lock (keeps what still fits), make lock-upgrade (the newest)\n"
                % (python_version(), sys.platform, platform.machine()))
        f.write(body)
    os.replace(tmp, path)
    print("wrote %s" % rel(path))


def main(argv):
    if not argv or argv[0] not in ("check", "path", "extras", "compile"):
        fail("usage: locks/lock.py check | path | extras | compile UV [UV-OPTIONS ...]")
    if argv[0] == "check":
        check()
    elif argv[0] == "path":
        print(rel(lock_path()))
    elif argv[0] == "extras":
        print(",".join(EXTRAS))
    else:
        if len(argv) < 2:
            fail("locks/lock.py compile needs the path of uv")
        compile_lock(argv[1], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
