"""IPAM blocks as ``crd.projectcalico.org/v1`` IPAMBlock objects in the Kubernetes API.

Every node's agent shares the same blocks through the API server, which
gives exactly the compare-and-swap the allocator needs: PUT with
``metadata.resourceVersion`` fails with 409 when someone else wrote first,
POST fails with 409 when the block already exists, DELETE carries a
resourceVersion precondition.

Revisions: Kubernetes calls resourceVersions opaque strings, the
:class:`BlockStore` interface types them ``int``. Every kube-apiserver today
hands out etcd revisions (decimal integers), so they are returned as ``int``;
a non-decimal one is passed through unchanged as ``str``. Either way the
allocator only hands a revision back to this store, which sends
``str(revision)``, so nothing is ever compared or computed on it.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any, cast

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from vppagent.ipam.blocks import Block, IPNetwork
from vppagent.ipam.objects import (
    BLOCK_API_VERSION, BLOCK_GROUP, BLOCK_PLURAL, block_from_object, block_object_name, block_to_object,
)
from vppagent.ipam.store import BlockStore, Revision
from vppagent.sources.kubernetes import load_api_client

_VERSION = BLOCK_API_VERSION.split("/")[1]


def _revision(obj: dict[str, Any]) -> Revision:
    rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return int(rv) if rv.isdecimal() else cast(Revision, rv)


class KubernetesBlockStore(BlockStore):
    """Blocks shared by all nodes through the API server (Calico's Kubernetes-datastore IPAM)."""

    def __init__(self, api_client: k8s.ApiClient | None = None, *, kubeconfig: str | Path | None = None,
                 request_timeout: float = 10.0) -> None:
        """Pass an ``ApiClient`` (the caller closes it), or a kubeconfig (None: in-cluster config)."""
        self._own_client = api_client is None
        self._client = api_client if api_client is not None else load_api_client(kubeconfig)
        self._api = k8s.CustomObjectsApi(self._client)
        self._timeout = request_timeout

    def close(self) -> None:
        """Drop pooled connections of a client this store created."""
        if self._own_client:
            self._client.close()

    def _call(self, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        fn = getattr(self._api, method)
        resp = fn(BLOCK_GROUP, _VERSION, BLOCK_PLURAL, *args, _preload_content=False,
                  _request_timeout=self._timeout, **kwargs)
        try:
            return json.loads(resp.data)
        finally:
            resp.release_conn()

    def list_blocks(self) -> list[tuple[Block, Revision]]:
        body = self._call("list_cluster_custom_object")
        return [(block_from_object(o, f"IPAMBlock {o.get('metadata', {}).get('name')}"), _revision(o))
                for o in body.get("items") or []]

    def get_block(self, cidr: IPNetwork) -> tuple[Block, Revision] | None:
        name = block_object_name(ipaddress.ip_network(cidr))
        try:
            obj = self._call("get_cluster_custom_object", name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return block_from_object(obj, f"IPAMBlock {name}"), _revision(obj)

    def create_block(self, block: Block) -> Revision | None:
        try:
            obj = self._call("create_cluster_custom_object", block_to_object(block))
        except ApiException as exc:
            if exc.status == 409:          # AlreadyExists: another node claimed it first
                return None
            raise
        return _revision(obj)

    def update_block(self, block: Block, revision: Revision) -> Revision | None:
        body = block_to_object(block)
        body["metadata"]["resourceVersion"] = str(revision)
        try:
            obj = self._call("replace_cluster_custom_object", body["metadata"]["name"], body)
        except ApiException as exc:
            if exc.status in (404, 409):   # changed or gone since we read it
                return None
            raise
        return _revision(obj)

    def delete_block(self, cidr: IPNetwork, revision: Revision) -> bool:
        name = block_object_name(ipaddress.ip_network(cidr))
        options = k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(resource_version=str(revision)))
        try:
            self._call("delete_cluster_custom_object", name, body=options)
        except ApiException as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True
