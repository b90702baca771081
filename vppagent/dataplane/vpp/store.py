"""What the agent must remember about VPP that VPP cannot tell it.

npol objects and cnat feature enablements have no tags and no dumps, so the
ids the agent got for them are kept in ``<stateDir>/vpp-objects.json``,
together with an *epoch*: a random name also given to a tagged marker table
in VPP.  On start the marker is looked up: same epoch, same VPP instance, the
recorded objects still exist and are adopted; otherwise VPP restarted and
nothing recorded exists any more.  Pod specs (what CNI asked for) live in
``<stateDir>/pods/<ifname>.json`` so a restarted agent can rebuild every pod.

Values are frozen dataclasses from ``keys.py``/``pods.py``; ``encode`` and
``decode`` turn them into JSON and back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Iterator

from vppagent.dataplane.vpp import keys as _keys
from vppagent.ipam.store import atomic_write_json

log = logging.getLogger(__name__)

_TYPES: dict[str, type] = {
    name: obj for name, obj in vars(_keys).items() if dataclasses.is_dataclass(obj) and isinstance(obj, type)
}


def register(cls: type) -> type:
    """Make another dataclass storable (decorator)."""
    _TYPES[cls.__name__] = cls
    return cls


def encode(obj: Any) -> Any:
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__t": type(obj).__name__,
                **{f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}}
    if isinstance(obj, tuple):
        return {"__tuple": [encode(v) for v in obj]}
    if isinstance(obj, frozenset):
        return {"__frozenset": sorted((encode(v) for v in obj), key=repr)}
    if isinstance(obj, list):
        return [encode(v) for v in obj]
    if isinstance(obj, dict):
        return {"__dict": [[encode(k), encode(v)] for k, v in obj.items()]}
    raise TypeError(f"cannot store {type(obj).__name__}")


def decode(data: Any) -> Any:
    if isinstance(data, list):
        return [decode(v) for v in data]
    if not isinstance(data, dict):
        return data
    if "__tuple" in data:
        return tuple(decode(v) for v in data["__tuple"])
    if "__frozenset" in data:
        return frozenset(decode(v) for v in data["__frozenset"])
    if "__dict" in data:
        return {decode(k): decode(v) for k, v in data["__dict"]}
    cls = _TYPES[data["__t"]]
    return cls(**{k: decode(v) for k, v in data.items() if k != "__t"})


class StateStore:
    """Recorded VPP objects per kind, and the pod specs; ``directory`` None keeps it in memory."""

    def __init__(self, directory: str | Path | None) -> None:
        self.dir = Path(directory) if directory is not None else None
        self.epoch: str = ""
        self._objects: dict[str, dict[Any, tuple[Any, Any]]] = {}
        # each entry encoded once, when it is put: a save then only serializes, instead of encoding
        # every object again (the file is rewritten after each commit and grows with the pods)
        self._rows: dict[str, dict[Any, list[Any]]] = {}
        self._dirty = False
        self.writes = 0            # files written (objects and pod specs), for benchmarks
        self._load()

    # ------------------------------------------------------------ objects

    @property
    def _path(self) -> Path | None:
        return self.dir / "vpp-objects.json" if self.dir is not None else None

    def _load(self) -> None:
        path = self._path
        if path is None or not path.exists():
            return
        try:
            data = json.loads(path.read_text())
            self.epoch = str(data.get("epoch", ""))
            for kind, rows in data.get("objects", {}).items():
                objs, encoded = self._objects.setdefault(kind, {}), self._rows.setdefault(kind, {})
                for row in rows:
                    k, v, m = row
                    key = decode(k)
                    objs[key] = (decode(v), decode(m))
                    encoded[key] = row
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("ignoring unreadable VPP state file %s: %s", path, exc)
            self.epoch, self._objects, self._rows = "", {}, {}

    def objects(self, kind: str) -> dict[Any, tuple[Any, Any]]:
        return dict(self._objects.get(kind, {}))

    def get(self, kind: str, key: Any) -> tuple[Any, Any] | None:
        return self._objects.get(kind, {}).get(key)

    def put(self, kind: str, key: Any, value: Any, meta: Any) -> None:
        self._objects.setdefault(kind, {})[key] = (value, meta)
        self._rows.setdefault(kind, {})[key] = [encode(key), encode(value), encode(meta)]
        self._dirty = True

    def remove(self, kind: str, key: Any) -> None:
        if self._objects.get(kind, {}).pop(key, None) is not None:
            self._rows.get(kind, {}).pop(key, None)
            self._dirty = True

    def new_epoch(self) -> str:
        """VPP is a new instance: forget every recorded object."""
        self.epoch = secrets.token_hex(6)
        self._objects, self._rows = {}, {}
        self._dirty = True
        return self.epoch

    def save(self) -> None:
        path = self._path
        if not self._dirty or path is None:
            self._dirty = False
            return
        rows = {kind: list(encoded.values()) for kind, encoded in self._rows.items()}
        atomic_write_json(path, {"version": 1, "epoch": self.epoch, "objects": rows})
        self.writes += 1
        self._dirty = False

    # ------------------------------------------------------------ pods

    @property
    def _pods(self) -> Path | None:
        return self.dir / "pods" if self.dir is not None else None

    def save_pod(self, ifname: str, spec: Any) -> None:
        if self._pods is not None:
            atomic_write_json(self._pods / f"{ifname}.json", encode(spec))
            self.writes += 1

    def remove_pod(self, ifname: str) -> None:
        if self._pods is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._pods / f"{ifname}.json")

    def pods(self) -> Iterator[Any]:
        if self._pods is None or not self._pods.is_dir():
            return
        for path in sorted(self._pods.glob("*.json")):
            try:
                yield decode(json.loads(path.read_text()))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error("ignoring unreadable pod spec %s: %s", path, exc)
