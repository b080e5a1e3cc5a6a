"""Which engine files have been hashed already: a per-user record, so that opening an engine dir is fast and safe.

Hashing every graph on every open is safe and slow (an SD 1.5-shape engine dir is 4.3 GB: seconds for each
command and each service replica). This record keeps, for each file whose sha256 was computed and matched its
manifest, what identifies that very file on disk:

    (device, inode, size, mtime_ns, ctime_ns) -> sha256

A later open re-hashes only a file whose identity changed. Every way of changing a file changes its entry:
writing to it moves mtime and ctime; setting mtime back with ``os.utime`` moves ctime (the kernel sets ctime on
every change and nothing can set it back); renaming another file into its place changes the inode. A file whose
entry is unchanged is the one that was hashed. The record lives in the user's cache
($XDG_CACHE_HOME/svdedit/verified.json): it vouches only for what this user's own processes hashed.

``svdedit check``, the export, ``build`` and ``quantize`` hash everything regardless (``verify="all"``), and
refresh the record. If the record cannot be read or written (a read-only home), every open hashes, as before.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from svdedit.runtime.engines.names import user_cache_root
from svdedit.runtime.errors import SvdeditError
from svdedit.runtime.files import write_json

log = logging.getLogger("svdedit.engines")
RECORD_VERSION = 1
#: at most this many engine dirs are remembered (the least recently verified are dropped)
MAX_DIRS = 64


def record_path() -> Path:
    return user_cache_root() / "verified.json"


def identity(path: Path) -> list[int]:
    """What identifies this file's bytes on disk without reading them."""
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class Record:
    """The record of one engine dir: {relative file name: [identity..., sha256]}; `save` writes the whole record
    back atomically (another process's concurrent save is lost, not corrupted: it costs a re-hash, nothing more)."""

    def __init__(self, engine_dir: Path):
        self.key = str(Path(engine_dir).resolve())
        mine = self._load().get("dirs", {}).get(self.key)
        self.files: dict[str, list] = dict(mine) if isinstance(mine, dict) else {}  # a damaged entry vouches for nothing
        self.changed = False

    @staticmethod
    def _load() -> dict:
        try:
            data = json.loads(record_path().read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return {}
        if not isinstance(data, dict) or data.get("version") != RECORD_VERSION or not isinstance(data.get("dirs"), dict):
            return {}
        return data

    def vouches(self, rel: str, path: Path, sha256: str) -> bool:
        """Whether `path` is the very file that was hashed to `sha256` before."""
        entry = self.files.get(rel)
        try:
            return isinstance(entry, list) and entry == identity(path) + [sha256]
        except OSError:
            return False

    def remember(self, rel: str, path: Path, sha256: str, before: list[int]) -> None:
        """Record that `path` hashed to `sha256`, if it did not change while it was read (`before`: its identity
        taken before hashing)."""
        try:
            if identity(path) == before:
                self.files[rel] = before + [sha256]
                self.changed = True
        except OSError:
            pass

    def forget(self, rel: str) -> None:
        if self.files.pop(rel, None) is not None:
            self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        fresh = self._load()  # what other processes recorded meanwhile, for the other dirs
        dirs = {k: v for k, v in fresh.get("dirs", {}).items() if k != self.key}
        dirs[self.key] = self.files
        dirs = dict(list(dirs.items())[-MAX_DIRS:])  # insertion order: the most recently saved last
        try:
            record_path().parent.mkdir(parents=True, exist_ok=True)
            write_json(record_path(), {"version": RECORD_VERSION, "dirs": dirs})
        except (OSError, SvdeditError) as exc:
            log.debug("cannot write the verification record %s (%s); the next open hashes again", record_path(), exc)
        self.changed = False
