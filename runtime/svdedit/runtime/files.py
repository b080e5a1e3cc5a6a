"""Small file helpers shared by every stage: hashing, atomic writes, safetensors header checks.

Every file svdedit writes goes through ``atomic_write_bytes`` (or ``write_json``, or
``images.save_png``, built on it) and every folder through ``atomic_dir``: a temporary sibling,
then a rename, so that an error, Ctrl-C or a full disk never leaves half a file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import struct
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

from svdedit.runtime.errors import SvdeditError

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (an SD UNet is 3.4 GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj) -> str:
    """Hex sha256 of a JSON-serialisable object in canonical form (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _temp_sibling(final: Path, tag: str) -> Path:
    return final.with_name(f".{final.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_siblings(final: Path) -> None:
    """Clean up after a writer that was killed outright (SIGKILL, power loss): its temporary siblings are removed,
    except that if it died between moving the old `final` aside and renaming the new one in, the old one is put
    back (it is complete; the new one may not be)."""
    stale = []
    for p in final.parent.glob(f".{final.name}.*-*-*"):
        parts = p.name[len(final.name) + 2 :].split("-")
        if len(parts) == 3 and parts[0] in ("tmp", "old") and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            stale.append((parts[0], p))
    olds = sorted((p for kind, p in stale if kind == "old"), key=lambda q: q.stat().st_mtime)
    if olds and not final.exists():
        os.rename(olds.pop(), final)
        _fsync_dir(final.parent)
    for _, p in stale:
        if p.exists():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make renames in `folder` durable (a crash after this cannot undo them)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, replace: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name beside ``final``; rename it into place on success.

    If the block raises (an error, Ctrl-C), the temporary directory is removed and ``final`` is left
    exactly as it was. With ``replace=True`` an existing ``final`` is swapped out only after the new
    directory is complete, so a failure never loses the old one either; a kill between the two renames of
    the swap is repaired by the next writer, which puts the old one back. Without ``replace``, a ``final``
    that another process created meanwhile is left alone (SvdeditError). Renames are fsynced.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(final)
    tmp = _temp_sibling(final, "tmp")
    tmp.mkdir()
    old = None
    try:
        yield tmp
        if final.exists():
            if not replace:
                raise SvdeditError(f"{final} appeared while it was being written (another process wrote it); it was "
                                   f"left as it is. Run again, choosing to replace it (the command's force option).")
            old = _temp_sibling(final, "old")
            os.rename(final, old)
            os.rename(tmp, final)
            _fsync_dir(final.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
            _fsync_dir(final.parent)
    except BaseException:
        if old is not None and old.exists() and not final.exists():
            os.rename(old, final)  # the swap failed half way: the old one goes back
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_safetensors(path: str | os.PathLike) -> dict:
    """Validate a .safetensors file's header against its size without loading any tensor.

    Returns the header (tensor name -> dtype, shape, data_offsets). Raises SvdeditError naming the
    file when it is truncated, has a corrupt header, or is not a safetensors file at all.
    """
    path = Path(path)
    size = path.stat().st_size
    hint = "Re-download or re-save the file; a partial download is the usual cause."
    if size < 8:
        raise SvdeditError(f"{path} is not a valid .safetensors file: it is only {size} bytes long. {hint}")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8 or header_len > 100 * 1024 * 1024:
            raise SvdeditError(
                f"{path} is not a valid .safetensors file: its header claims {header_len} bytes but the "
                f"file has {size}. {hint}"
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise SvdeditError(f"{path} is not a valid .safetensors file: its header is corrupt ({exc}). {hint}") from None
    data_len = size - 8 - header_len
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise SvdeditError(f"{path} is not a valid .safetensors file: entry {name!r} of its header is corrupt. {hint}") from None
    if end > data_len:
        raise SvdeditError(
            f"{path} is truncated: its tensors need {end} bytes of data but only {data_len} are there. {hint}"
        )
    return header


def atomic_write_bytes(final: str | os.PathLike, data: bytes) -> Path:
    """Write a file through a temporary sibling and a rename: readers never see half a file.

    The temporary name is unique (pid and a random part) and created with O_EXCL | O_NOFOLLOW, so a link
    planted beside the output cannot redirect the write; it is removed on any exit. An I/O error (a full
    disk, a read-only folder) becomes a SvdeditError naming the path."""
    final = Path(final)
    if final.is_dir():
        raise SvdeditError(f"{final} is a folder; give a file name for the output.")
    if not final.parent.is_dir():
        raise SvdeditError(f"the folder {final.parent} does not exist; create it first.")
    _remove_stale_siblings(final)
    tmp = _temp_sibling(final, "tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except OSError as exc:
        raise SvdeditError(f"cannot write {final}: {exc.strerror or exc}. Choose another place, or free some space.") from None
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    return final


def check_output(path: str | os.PathLike, what: str = "-o", folder: bool = False,
                 suffixes: tuple[str, ...] = ()) -> Path:
    """Check an output path before any work: not empty, a file where a file goes (with one of `suffixes`) or a
    folder where a folder goes, and its nearest existing folder writable (a file is created there and removed).
    Returns the path; SvdeditError naming `what` and the path otherwise."""
    if str(path) == "":
        raise SvdeditError(f"{what} is empty; give a {'folder' if folder else 'file name'}.")
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise SvdeditError(f"{what} {path} is a file; give a folder (it is created if missing).")
    if not folder:
        if path.is_dir():
            raise SvdeditError(f"{what} {path} is a folder; give a file name.")
        if suffixes and path.suffix.lower() not in suffixes:
            raise SvdeditError(f"{what} {path}: the file's suffix says its format; use one of {', '.join(suffixes)}.")
    anchor = path if folder else path.parent
    while not anchor.exists():
        anchor = anchor.parent
    if not anchor.is_dir():
        raise SvdeditError(f"{what} {path} is under {anchor}, which is a file, not a folder.")
    try:
        fd, probe = tempfile.mkstemp(dir=anchor, prefix=".svdedit-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SvdeditError(f"{what} {path} cannot be written ({exc.strerror or exc} in {anchor}); choose another "
                           f"place.") from None
    return path


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> Path:
    """Write ``obj`` as indented JSON (keys in their order, one final newline), atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=indent) + "\n").encode("utf-8"))
