"""The agent's configuration file (YAML); unknown keys are errors.

```yaml
nodeName: node1
datastore: {type: file, path: examples/}   # or kubernetes, etcd, sync: see vppagent.sources.config
dataplane: {type: none}
grpc: {socket: /run/vppagent/agent.sock}
health: {port: 9099}
stateDir: /var/lib/vppagent        # IPAM blocks and CNI workloads survive restarts here
cni: {mtu: 1500}                   # pod MTU when the CNI request names none
ipam: {defaultPools: [10.65.0.0/16]}   # used while the datastore holds no IPPool
```
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vppagent.manifests.fields import Fields, parse_network
from vppagent.model.errors import ValidationError
from vppagent.sources.config import DATASTORE_TYPES, DatastoreConfig, parse_datastore

DEFAULT_SOCKET = "/run/vppagent/agent.sock"
DEFAULT_STATE_DIR = "/var/lib/vppagent"
DEFAULT_POOLS = ("10.65.0.0/16",)


@dataclass(frozen=True)
class TLSConfig:
    cert: str
    key: str
    client_ca: str


@dataclass(frozen=True)
class AgentConfig:
    node_name: str = field(default_factory=socket.gethostname)
    datastore_type: str = "file"
    datastore_path: str = "examples"
    poll_interval: float = 1.0
    dataplane: dict[str, Any] = field(default_factory=lambda: {"type": "none"})
    grpc_socket: str = DEFAULT_SOCKET
    grpc_tcp: str | None = None
    grpc_tls: TLSConfig | None = None
    health_host: str = "127.0.0.1"
    health_port: int = 9099
    log_level: str = "info"
    resync_interval: float = 180.0
    vpp: dict[str, Any] | None = None      # the `vpp:` node section, read by `vppagent vpp run`
    state_dir: str = DEFAULT_STATE_DIR
    cni_mtu: int = 1500
    ipam_default_pools: tuple[str, ...] = DEFAULT_POOLS
    datastore: DatastoreConfig = field(default_factory=DatastoreConfig)


def parse_config(data: Any, source: str = "config") -> AgentConfig:
    """Validate a config mapping; errors name the field."""
    try:
        top = Fields(data, "", strict=True)
        defaults = AgentConfig()
        node = top.str("nodeName") or defaults.node_name
        datastore = parse_datastore(top.sub("datastore", strict=True))
        dp = top.raw("dataplane", {"type": "none"})
        if not isinstance(dp, dict) or not isinstance(dp.get("type", "none"), str):
            raise ValidationError("dataplane", "expected a mapping with a string 'type'")
        dp = {"type": "none", **dp}
        g = top.sub("grpc", strict=True)
        sock = g.str("socket") or DEFAULT_SOCKET
        tcp = None
        tls = None
        if g.has("tcp"):
            t = g.sub("tcp", strict=True)
            tcp = t.str("address", required=True)
            tls = TLSConfig(t.str("cert", required=True), t.str("key", required=True),
                            t.str("clientCA", required=True))
            t.check_unknown()
        g.check_unknown()
        h = top.sub("health", strict=True)
        port = h.int("port", defaults.health_port, lo=0, hi=65535)
        host = h.str("host") or defaults.health_host
        h.check_unknown()
        vpp_section = top.raw("vpp")
        if vpp_section is not None:
            from vppagent.vpp_node.config import parse_node_config

            parse_node_config(vpp_section, check_host=False)   # errors name vpp.<field>
        level = top.str("logLevel") or "info"
        if level.lower() not in ("debug", "info", "warning", "error"):
            raise ValidationError("logLevel", f"invalid log level {level!r} (debug, info, warning, error)")
        resync = top.number("resyncInterval")
        state_dir = top.str("stateDir") or defaults.state_dir
        c = top.sub("cni", strict=True)
        mtu = c.int("mtu", defaults.cni_mtu, lo=68, hi=65535)
        c.check_unknown()
        i = top.sub("ipam", strict=True)
        pools = defaults.ipam_default_pools
        if i.has("defaultPools"):
            pools = tuple(str(parse_network(v, p)) for p, v in i.list("defaultPools"))
        i.check_unknown()
        top.check_unknown()
    except ValidationError as exc:
        raise exc.with_source(source) from None
    return AgentConfig(
        node_name=node,
        datastore_type=datastore.type,
        datastore_path=datastore.path,
        poll_interval=datastore.poll_interval,
        datastore=datastore,
        dataplane=dp,
        grpc_socket=sock,
        grpc_tcp=tcp,
        grpc_tls=tls,
        health_host=host,
        health_port=port if port is not None else defaults.health_port,
        log_level=level.lower(),
        resync_interval=resync if resync is not None else defaults.resync_interval,
        vpp=vpp_section,
        state_dir=state_dir,
        cni_mtu=mtu if mtu is not None else defaults.cni_mtu,
        ipam_default_pools=pools,
    )


def load_config(path: str | Path | None) -> AgentConfig:
    """Read the config file; ``None`` gives the embedded defaults."""
    if path is None:
        return AgentConfig()
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ValidationError("", f"cannot read config: {exc.strerror}", str(p)) from None
    except yaml.YAMLError as exc:
        raise ValidationError("", f"invalid YAML: {exc}", str(p)) from None
    return parse_config(data or {}, str(p))
