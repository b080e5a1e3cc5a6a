"""svdedit.runtime: the torch-free runtime. Its version is the installed package's (pyproject.toml)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("svdedit")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
