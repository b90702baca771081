"""Renders VPP's startup.conf and startup CLI script from ``startup-conf/`` templates.

The templates are plain startup.conf files with ``${name}`` placeholders, so
an operator can read (or replace) exactly what VPP will be given; a
placeholder alone on its line may expand to several lines (plugins, DPDK
devices) and disappears when empty.  Every rendering is checked against VPP's
own option parsers (``conf_syntax``) before it is returned.

The startup CLI script (``unix { exec ... }``) holds what the declared API
message table does not carry: the host interface's VRF, proxy ARP range and
L4 punt (Calico/VPP does the same from its exec template), and the creation
of af_xdp/rdma uplinks.

``start_vpp`` (from ``process``) is re-exported here: tests and tools start a
real VPP from a rendered config with it.
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any, Callable, Mapping

from vppagent.model.errors import ValidationError
from vppagent.vpp_node.conf_syntax import check_startup_conf
from vppagent.vpp_node.config import HostFacts, NodeConfig, format_size, parse_node_config
from vppagent.vpp_node.process import VppProcess, start_vpp

__all__ = ["TEMPLATE_DIR", "VppProcess", "render_startup_cli", "render_startup_conf", "start_vpp",
           "template_for", "uplink_vpp_name", "write_startup_files"]

TEMPLATE_DIR = Path(os.environ.get("VPPAGENT_STARTUP_CONF_DIR")
                    or Path(__file__).resolve().parents[2] / "startup-conf")
UIO_DRIVER = "vfio-pci"

PciResolver = Callable[[str], str]     # Linux interface -> PCI address


def template_for(cfg: NodeConfig) -> Path:
    """The template file: ``vpp.template`` (a name in ``startup-conf/`` or a
    path), or chosen from the uplink driver and page size."""
    if cfg.template != "auto":
        path = Path(cfg.template)
        if not path.is_absolute() and path.parent == Path("."):
            path = TEMPLATE_DIR / (cfg.template if cfg.template.endswith(".conf") else cfg.template + ".conf")
        if not path.is_file():
            raise ValidationError("vpp.template", f"no template {str(path)!r}")
        return path
    driver, huge = (cfg.uplink.driver if cfg.uplink else "af_packet"), cfg.page_size != "4k"
    name = {"af_packet": "af_packet" if huge else "af_packet-nohuge",
            "dpdk": "dpdk" if huge else "dpdk-nohuge",
            "af_xdp": "af_xdp", "rdma": "rdma", "dev": "dev"}[driver]
    return TEMPLATE_DIR / f"{name}.conf"


def uplink_vpp_name(cfg: NodeConfig) -> str:
    """The uplink's interface name inside VPP (af_packet forces ``host-``)."""
    assert cfg.uplink is not None
    if cfg.uplink.driver == "af_packet":
        return f"host-{cfg.uplink.interface}"
    return cfg.uplink.interface


def _core_list(cores: tuple[int, ...]) -> str:
    """(1, 2, 3, 6) -> "1-3,6"."""
    out: list[str] = []
    start = prev = cores[0]
    for c in cores[1:] + (-2,):
        if c == prev + 1:
            prev = c
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = c
    return ",".join(out)


def _default_pci(interface: str) -> str:
    from vppagent.vpp_node.sriov import Sysfs
    return Sysfs().pci_of_netdev(interface, field="vpp.uplink.pci")


def _cnat_section(cfg: NodeConfig) -> str:
    """The ``cnat { ... }`` stanza, only when the plugin is loaded (VPP refuses
    a section nobody parses)."""
    if "cnat" not in cfg.plugins:
        return ""
    timeout = f"{cfg.cnat.session_cleanup_timeout:g}"
    return "\n".join(["cnat {", f"  session-max {cfg.cnat.session_max}",
                      f"  session-cleanup-timeout {timeout}", "}"])


def template_values(cfg: NodeConfig, *, pci_of: PciResolver | None = None,
                    vf_pcis: Mapping[int, str] | None = None, exec_script: bool = True) -> dict[str, str]:
    """Every placeholder's text.  ``pci_of`` finds the uplink's PCI address
    when ``uplink.pci`` is unset (sysfs by default); ``vf_pcis`` maps SR-IOV
    VF indexes to PCI addresses (VFs only exist once created); without
    ``exec_script`` VPP runs no startup CLI script (a bare VPP for tests)."""
    u = cfg.uplink
    unix = [f"exec {cfg.exec_file}"] if exec_script else []
    if cfg.poll_sleep_usec is not None:
        unix.append(f"poll-sleep-usec {cfg.poll_sleep_usec}")
    cpu = [f"main-core {cfg.main_core}"]
    if isinstance(cfg.workers, int) and cfg.workers:
        cpu.append(f"workers {cfg.workers}")
    elif isinstance(cfg.workers, tuple) and cfg.workers:
        cpu.append(f"corelist-workers {_core_list(cfg.workers)}")
    plugins = [f"path {cfg.plugin_path}"] if cfg.plugin_path else []
    plugins.append("plugin default { disable }")
    plugins += [f"plugin {p}_plugin.so {{ enable }}" for p in cfg.plugins]
    values = {
        "runtime_dir": cfg.runtime_dir, "cli_socket": cfg.cli_socket, "log_file": cfg.log_file,
        "unix_lines": "\n".join(unix), "api_prefix": cfg.api_prefix, "api_socket": cfg.api_socket,
        "stats_socket": cfg.stats_socket, "stats_size": format_size(cfg.stats_size),
        "heap_size": format_size(cfg.heap_size), "page_size": cfg.page_size, "buffers": str(cfg.buffers),
        "cpu_lines": "\n".join(cpu), "plugin_lines": "\n".join(plugins), "uio_driver": UIO_DRIVER,
        "rx_queues": str(u.rx_queues if u else 1), "tx_queues": str(u.tx_queues if u else 1),
        "rx_ring_size": str(u.rx_ring_size if u else 1024), "tx_ring_size": str(u.tx_ring_size if u else 1024),
        "dpdk_device_lines": "", "device_lines": "", "cnat_section": _cnat_section(cfg),
    }
    if u is not None and u.driver in ("dpdk", "dev"):
        pci = u.pci or (pci_of or _default_pci)(u.interface)
        if u.driver == "dpdk":
            values["dpdk_device_lines"] = f"dev {pci} {{ name {u.interface} }}"
        else:
            values["device_lines"] = "\n".join([
                f"dev pci/{pci} {{", f"  driver {u.dev_driver}", "  port 0 {", f"    name {u.interface}",
                f"    num-rx-queues {u.rx_queues}", f"    num-tx-queues {u.tx_queues}",
                f"    rx-queue-size {u.rx_ring_size}", f"    tx-queue-size {u.tx_ring_size}", "  }", "}"])
    if cfg.sriov:
        lines = [values["dpdk_device_lines"]] if values["dpdk_device_lines"] else []
        for i, vf in enumerate(cfg.sriov.vfs):
            if vf.attach != "dpdk":
                continue
            pci = (vf_pcis or {}).get(vf.index)
            if pci is None:
                raise ValidationError(f"vpp.sriov.vfs[{i}]", f"VF {vf.index} of {cfg.sriov.pf} has no PCI "
                                                             f"address yet (create the VFs first)")
            lines.append(f"dev {pci} {{ name {cfg.sriov.pf}v{vf.index} }}")
        values["dpdk_device_lines"] = "\n".join(lines)
    return values


def _fill(template: str, values: Mapping[str, str], source: str) -> str:
    """``string.Template`` substitution where a placeholder alone on its
    line takes that line's indentation for each of its lines."""
    out: list[str] = []
    for line in template.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            out.append(line)
            continue
        if stripped.startswith("${") and stripped.endswith("}") and stripped.count("${") == 1:
            key = stripped[2:-1]
            if key not in values:
                raise ValidationError("vpp.template", f"{source}: unknown placeholder ${{{key}}}")
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + v for v in values[key].splitlines() if v.strip())
            continue
        try:
            out.append(string.Template(line).substitute(values))
        except KeyError as e:
            raise ValidationError("vpp.template", f"{source}: unknown placeholder ${{{e.args[0]}}}") from None
        except ValueError as e:
            raise ValidationError("vpp.template", f"{source}: {e}") from None
    return "\n".join(out) + "\n"


def _as_config(node_config: NodeConfig | Mapping[str, Any], host: HostFacts | None) -> NodeConfig:
    if isinstance(node_config, NodeConfig):
        return node_config
    return parse_node_config(node_config, host=host)


def render_startup_conf(node_config: NodeConfig | Mapping[str, Any], *, host: HostFacts | None = None,
                        pci_of: PciResolver | None = None, vf_pcis: Mapping[int, str] | None = None,
                        exec_script: bool = True) -> str:
    """startup.conf text for a node (a ``NodeConfig`` or a raw ``vpp:``
    mapping, validated against ``host``).  Raises ``ValidationError``."""
    cfg = _as_config(node_config, host)
    path = template_for(cfg)
    values = template_values(cfg, pci_of=pci_of, vf_pcis=vf_pcis, exec_script=exec_script)
    text = _fill(path.read_text(), values, path.name)
    try:
        check_startup_conf(text)
    except ValueError as e:
        raise ValidationError("vpp.template", f"{path.name} renders an invalid startup.conf: {e}") from None
    return text


def render_startup_cli(node_config: NodeConfig | Mapping[str, Any], *,
                       host: HostFacts | None = None) -> str:
    """The startup CLI script VPP runs at start (``unix { exec ... }``)."""
    cfg = _as_config(node_config, host)
    u, vrf = cfg.uplink, cfg.host_interface.vrf
    lines = [
        "# vppagent startup CLI (rendered): what the API table does not carry.",
        "# VPP runs it about 2 s after start; its last line (the IPv6 host VRF) tells the",
        "# manager it is done.",
        "# The host interface's VRF and a proxy ARP range covering it: Linux ARPs for any",
        "# address through the host interface and VPP answers, then routes.",
        f"ip table add {vrf}",
        f"set arp proxy table-id {vrf} start 0.0.0.0 end 255.255.255.255",
        "# Local traffic VPP does not handle itself goes to Linux (ip punt redirect).",
        "set punt ipv4 udp all",
        "set punt ipv6 udp all",
        "set punt ipv4 tcp all",
        "set punt ipv6 tcp all",
    ]
    if u is not None and u.driver in ("af_xdp", "rdma"):
        lines.append(f"create interface {u.driver} host-if {u.interface} name {u.interface} "
                     f"num-rx-queues {u.rx_queues} rx-queue-size {u.rx_ring_size} tx-queue-size {u.tx_ring_size}")
    lines.append(f"ip6 table add {vrf}")
    return "\n".join(lines) + "\n"


def write_startup_files(cfg: NodeConfig, *, pci_of: PciResolver | None = None,
                        vf_pcis: Mapping[int, str] | None = None, exec_script: bool = True) -> Path:
    """Write startup.conf and the startup CLI script into the runtime
    directory; return the startup.conf path."""
    conf = render_startup_conf(cfg, pci_of=pci_of, vf_pcis=vf_pcis, exec_script=exec_script)
    cli = render_startup_cli(cfg)
    os.makedirs(cfg.runtime_dir, exist_ok=True)
    os.makedirs(os.path.dirname(cfg.exec_file), exist_ok=True)
    path = Path(cfg.runtime_dir) / "startup.conf"
    _write_atomic(path, conf)
    _write_atomic(Path(cfg.exec_file), cli)
    return path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rendered_with_cli_comment(cfg: NodeConfig, **kw: Any) -> str:
    """startup.conf followed by the startup CLI script as ``##`` comments:
    what ``vppagent vpp render-config`` prints (still a valid startup.conf)."""
    conf = render_startup_conf(cfg, **kw)
    cli = render_startup_cli(cfg)
    return conf + f"## ---- {cfg.exec_file} (startup CLI script, unix exec) ----\n" + "".join(
        f"## {line}\n" for line in cli.splitlines())

