"""Sources and IPAM block stores by datastore type (imports only what is used)."""

from __future__ import annotations

from pathlib import Path

from vppagent.ipam.store import BlockStore, FileBlockStore
from vppagent.sources.base import Source
from vppagent.sources.config import DatastoreConfig


def create_source(ds: DatastoreConfig, file_path: str | None = None, poll_interval: float | None = None) -> Source:
    """The source for ``ds``; ``file_path``/``poll_interval`` override the file datastore's."""
    if ds.type == "file":
        from vppagent.sources.file import FileSource

        return FileSource(Path(file_path or ds.path), interval=poll_interval or ds.poll_interval)
    if ds.type == "kubernetes":
        from vppagent.sources.kubernetes import KubernetesSource

        return KubernetesSource(kubeconfig=ds.kubeconfig)
    if ds.type == "etcd":
        from vppagent.sources.etcd import EtcdSource

        return EtcdSource(endpoints=list(ds.endpoints))
    raise ValueError(f"datastore type {ds.type!r} has no source of its own")


def create_block_store(ds: DatastoreConfig, state_dir: str) -> BlockStore:
    """Where IPAM blocks live: with the datastore, so every node sees every node's blocks."""
    if ds.type == "kubernetes":
        from vppagent.ipam.k8s_store import KubernetesBlockStore

        return KubernetesBlockStore(kubeconfig=ds.kubeconfig)
    if ds.type == "etcd":
        from vppagent.ipam.etcd_store import EtcdBlockStore

        return EtcdBlockStore(endpoints=list(ds.endpoints))
    return FileBlockStore(state_dir)
