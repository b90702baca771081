"""The ``datastore:`` section shared by ``vppagent run`` and ``vppagent sync``.

```yaml
datastore: {type: file, path: manifests/, pollInterval: 1}
datastore: {type: kubernetes, kubeconfig: /etc/kubernetes/admin.conf}   # no kubeconfig: in-cluster
datastore: {type: etcd, endpoints: [http://127.0.0.1:2379]}
datastore: {type: sync, address: unix:///run/vppagent/sync.sock}        # node agents only
datastore: {type: sync, address: sync.example:7443, tls: {cert: c.pem, key: k.pem, ca: ca.pem}}
```
"""

from __future__ import annotations

from dataclasses import dataclass

from vppagent.manifests.fields import Fields
from vppagent.model.errors import ValidationError

DATASTORE_TYPES = ("file", "kubernetes", "etcd", "sync")
SERVER_DATASTORE_TYPES = ("file", "kubernetes", "etcd")


@dataclass(frozen=True)
class ClientTLS:
    cert: str
    key: str
    ca: str


@dataclass(frozen=True)
class DatastoreConfig:
    type: str = "file"
    path: str = "examples"
    poll_interval: float = 1.0
    kubeconfig: str | None = None
    endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    address: str = ""
    tls: ClientTLS | None = None


def parse_datastore(ds: Fields, types: tuple[str, ...] = DATASTORE_TYPES) -> DatastoreConfig:
    """Validate a ``datastore`` mapping (``ds`` must be strict); errors name the field."""
    defaults = DatastoreConfig()
    kind = ds.str("type") or "file"
    if kind not in types:
        raise ValidationError(ds.at("type"), f"unknown datastore type {kind!r} (known: {', '.join(types)})")
    poll = ds.number("pollInterval")
    if poll is not None and poll <= 0:
        raise ValidationError(ds.at("pollInterval"), "must be positive")
    path = ds.str("path") or defaults.path
    kubeconfig = ds.str("kubeconfig") or None
    endpoints = defaults.endpoints
    if ds.has("endpoints"):
        endpoints = tuple(_url(v, p) for p, v in ds.list("endpoints"))
        if not endpoints:
            raise ValidationError(ds.at("endpoints"), "at least one etcd endpoint is required")
        for (p, _), url in zip(ds.list("endpoints"), endpoints):
            if url.startswith("https://"):
                raise ValidationError(p, "TLS to etcd is not supported yet: use an http:// endpoint")
    address = ds.str("address")
    tls = None
    if ds.has("tls"):
        t = ds.sub("tls", strict=True)
        tls = ClientTLS(t.str("cert", required=True), t.str("key", required=True), t.str("ca", required=True))
        t.check_unknown()
    ds.check_unknown()
    if kind == "sync":
        if not address:
            raise ValidationError(ds.at("address"), "the sync datastore needs the sync layer's address"
                                  " (unix:///path or host:port)")
        if not address.startswith("unix:") and tls is None:
            raise ValidationError(ds.at("tls"), f"refusing plain TCP to {address}: give tls {{cert, key, ca}}"
                                  " or use a unix socket")
    return DatastoreConfig(type=kind, path=path, poll_interval=poll if poll is not None else defaults.poll_interval,
                           kubeconfig=kubeconfig, endpoints=endpoints, address=address, tls=tls)


def _url(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ValidationError(path, f"expected an http(s):// URL, got {value!r}")
    return value
