"""The attribute store: a folder of ordinary attribute files (`svdedit learn`'s .safetensors), one per id.

An attribute's id is the first 16 hex digits of its file's sha256: the same attribute learned again gets
the same id, ids survive restarts, and every replica that shares the folder sees the same attributes.
Files are written atomically (files.atomic_write_bytes through Attribute.save) and read lazily, with the
loaded attributes kept in memory (an id's content never changes; whether its file still exists is checked
at every use, since another replica may have deleted it). Ids are checked against their pattern before
they touch the filesystem.
"""

from __future__ import annotations

import hashlib
import re
import threading
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Mapping

from svdedit.runtime.editing.avi import Attribute
from svdedit.runtime.errors import AttributeFileError, NotFoundError, SvdeditError, shown

ID_PATTERN = re.compile(r"[0-9a-f]{16}")
SUFFIX = ".safetensors"


class AttributeStore:
    def __init__(self, folder: str | Path, engine: str | tuple[str, ...] | Mapping[str, str | None]):
        """`engine`: the identities whose attributes this store serves (Manifest.identities()), or {identity: the name
        of the LoRA adapter it has, None for the engine as exported} (a service with adapters: EditService)."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.adapter_of = dict(engine) if isinstance(engine, Mapping) else \
            dict.fromkeys((engine,) if isinstance(engine, str) else engine)
        self.engine_ids = tuple(self.adapter_of)
        self._loaded: dict[str, Attribute] = {}
        self._lock = threading.Lock()

    def path(self, attr_id: str) -> Path:
        if not isinstance(attr_id, str) or not ID_PATTERN.fullmatch(attr_id):
            raise NotFoundError(f"attribute id {shown(attr_id)} is not an id of this store (16 hex digits); list them with "
                                f"GET /v1/attributes.")
        return self.folder / f"{attr_id}{SUFFIX}"

    def save(self, attr: Attribute) -> str:
        """Write the attribute (atomically) and return its id."""
        tmp = self.folder / f".incoming-{uuid.uuid4().hex}{SUFFIX}"
        attr.save(tmp)
        attr_id = hashlib.sha256(tmp.read_bytes()).hexdigest()[:16]
        tmp.replace(self.path(attr_id))
        with self._lock:
            self._loaded[attr_id] = attr
        return attr_id

    def get(self, attr_id: str) -> Attribute:
        """The attribute, loaded once; NotFoundError if there is none, AttributeFileError if it is for another model."""
        path = self.path(attr_id)
        if not path.is_file():  # checked every time: another replica sharing the folder may have deleted it
            with self._lock:
                self._loaded.pop(attr_id, None)
            raise NotFoundError(f"there is no attribute {attr_id!r} in this store; list them with GET /v1/attributes.")
        with self._lock:
            attr = self._loaded.get(attr_id)
        if attr is None:
            attr = Attribute.load(path)
            with self._lock:
                self._loaded[attr_id] = attr
        if attr.engine not in self.engine_ids:
            raise AttributeFileError(f"attribute {attr_id} ({attr.source!r} -> {attr.target!r}) was learned on another "
                                     f"model; learn it again on this one.")
        return attr

    def describe(self, attr_id: str) -> dict:
        a = self.get(attr_id)
        return {"id": attr_id, "source": a.source, "target": a.target, "seed": a.seed, "knobs": asdict(a.knobs),
                "losses": a.losses, "lora": self.adapter_of[a.engine]}

    def ids(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob(f"*{SUFFIX}") if ID_PATTERN.fullmatch(p.stem))

    def list(self) -> list[dict]:
        """Every attribute of this model in the store (files for other models, or damaged ones, are skipped)."""
        out = []
        for attr_id in self.ids():
            try:
                out.append(self.describe(attr_id))
            except SvdeditError:
                continue
        return out

    def delete(self, attr_id: str) -> None:
        path = self.path(attr_id)
        if not path.is_file():
            raise NotFoundError(f"there is no attribute {shown(attr_id)} in this store.")
        path.unlink()
        with self._lock:
            self._loaded.pop(attr_id, None)
