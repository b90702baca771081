"""Where a testbed writes its objects: named groups of Kubernetes/Calico objects.

A test names a group ("pod-shop-web", "policy") and replaces or removes it
whole, whatever the datastore: a directory of YAML files here; the
Kubernetes and etcd writers live beside their in-test servers.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterable, Protocol

import yaml


class DatastoreWriter(Protocol):
    def write(self, name: str, docs: Iterable[dict] | str) -> None:
        """Create or replace the group ``name``; objects it no longer holds are deleted."""

    def remove(self, name: str) -> None:
        """Delete every object of the group (nothing there is fine)."""


class FileDatastore:
    """``<dir>/<name>.yaml``, written atomically (the file source polls the directory)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, docs: Iterable[dict] | str) -> None:
        text = docs if isinstance(docs, str) else yaml.safe_dump_all(list(docs), sort_keys=False)
        path = self.directory / f"{name}.yaml"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"{name}.yaml").unlink()
