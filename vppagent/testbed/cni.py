"""Running the CNI plugin exactly as a container runtime does: CNI_* environment, config on stdin."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

CNI_VERSION = "1.0.0"


@dataclass
class Pod:
    """A pod sandbox wired through the CNI plugin."""

    namespace: str
    name: str
    netns: str                      # netns name (under /var/run/netns)
    container_id: str
    ifname: str = "eth0"
    result: dict = field(default_factory=dict)    # the CNI ADD result

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def netns_path(self) -> str:
        return f"/var/run/netns/{self.netns}"

    @property
    def ips(self) -> list[str]:
        return [ip["address"].split("/")[0] for ip in self.result.get("ips", [])]

    @property
    def ip(self) -> str:
        """The first IPv4 address (StopIteration if none)."""
        return next(ip for ip in self.ips if ":" not in ip)

    @property
    def ip6(self) -> str:
        return next(ip for ip in self.ips if ":" in ip)

    @property
    def host_interface(self) -> str:
        return self.result["interfaces"][0]["name"]


@dataclass
class CniCall:
    """One plugin execution: exit code, parsed stdout (result or error object), stderr."""

    returncode: int
    output: Any
    stderr: str
    elapsed: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def error(self) -> dict | None:
        return self.output if not self.ok and isinstance(self.output, dict) else None


def cni_args(namespace: str = "", pod: str = "", container_id: str = "", ips: Sequence[str] = ()) -> str:
    """``CNI_ARGS`` as the kubelet's runtime builds it, plus ``IP=`` for requested addresses."""
    args = "IgnoreUnknown=1"
    if namespace or pod:
        args += f";K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={container_id}"
    if ips:
        args += f";IP={','.join(ips)}"
    return args


def run_plugin(plugin: str | Path, command: str, *, container_id: str, netns: str = "", ifname: str = "eth0",
               args: str = "IgnoreUnknown=1", conf: Mapping[str, Any] | None = None,
               stdin: bytes | None = None, env: Mapping[str, str | None] | None = None,
               in_netns: str | None = None, timeout: float = 120.0) -> CniCall:
    """Execute the plugin once; ``in_netns`` runs it from that netns (as the node's runtime would).

    ``env`` entries override the CNI_* variables (``None`` removes one);
    ``stdin`` replaces the JSON-encoded ``conf`` (to send malformed input).
    """
    environ: dict[str, str | None] = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
        "CNI_ARGS": args, "CNI_PATH": str(Path(str(plugin)).parent),
    }
    environ.update(env or {})
    clean = {k: v for k, v in environ.items() if v is not None}
    argv = [str(plugin)]
    if in_netns:
        argv = ["ip", "netns", "exec", in_netns, *argv]
    data = json.dumps(dict(conf or {})).encode() if stdin is None else stdin
    started = time.monotonic()
    proc = subprocess.run(argv, input=data, env=clean, capture_output=True, timeout=timeout)
    elapsed = time.monotonic() - started
    out = proc.stdout.decode()
    try:
        parsed: Any = json.loads(out) if out.strip() else None
    except ValueError:
        parsed = out
    return CniCall(proc.returncode, parsed, proc.stderr.decode(), elapsed)
