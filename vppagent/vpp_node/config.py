"""The ``vpp:`` section of the agent config: VPP's process, CPUs, memory and uplink.

Validated up front so that VPP never starts with a configuration it would
reject or that could not work on this host (Calico/VPP users meet those as
"VPP failing to start for hugepages/memory/CPU flags" and "Out of buffers").
Unknown keys, impossible CPU sets and impossible buffer counts are errors
naming the field (``vpp.workers: core 5 is beyond this host's 2 CPUs``).

```yaml
vpp:
  binary: /usr/bin/vpp              # default $VPP_BIN, else /usr/bin/vpp
  pluginPath: /usr/lib/x86_64-linux-gnu/vpp_plugins   # default $VPP_PLUGIN_PATH, else VPP's own
  runtimeDir: /run/vpp              # sockets, log, rendered files
  apiSocket: /run/vpp/api.sock      # default <runtimeDir>/api.sock (also statsSocket, cliSocket,
  statsSocket: /run/vpp/stats.sock  #   logFile, execFile: the startup CLI script)
  apiPrefix: vppagent-1a2b3c        # api-segment prefix; default derived from runtimeDir
  template: auto                    # a file in startup-conf/ (auto: by uplink driver and pageSize)
  mainCore: 0
  workers: "1-3"                    # a core list ("1-3,6"), a count (2), or none
  buffers: 16384                    # buffers-per-numa
  pageSize: 4k                      # 4k | 2M | 1G: heap and buffers (4k needs no hugepages)
  heapSize: 1G
  statsSize: 32M
  pollSleepUsec: 100                # optional: idle main loop sleeps (low CPU on small nodes)
  cnat:                             # the cnat plugin's stanza (written when cnat is loaded)
    sessionMax: 262144              # session table size (VPP's default, 16M, needs GBs of heap)
    sessionCleanupTimeout: 0.1      # seconds between scanner passes (expires stale UDP flows)
  netns: vppagent-vpp               # VPP runs here; af_packet/af_xdp/rdma uplinks are parked here
  plugins: [af_packet, tap, ...]    # plugins to load (all others disabled); default by driver
  uplink:
    interface: eth0                 # required
    driver: af_packet               # af_packet | af_xdp | dpdk | rdma | dev (VPP dev infra, e.g. iavf)
    pci: "0000:01:00.0"             # dpdk, dev: default read from sysfs for the interface
    devDriver: iavf                 # dev only
    rxQueues: 1
    txQueues: 1
    rxRingSize: 1024
    txRingSize: 1024
    mtu: 1500                       # default: the uplink's Linux MTU
  hostInterface:
    kind: tap                       # tap (Calico's vpptap0) | veth (af_packet on a veth pair)
    rxRingSize: 1024
    txRingSize: 1024
    vppMac: "02:ca:11:c0:fd:10"     # VPP's side of the host interface
    vrf: 1000000                    # VRF of the host interface in VPP
  supervise:
    restartPolicy: on-failure       # never | on-failure | always
    maxRestarts: 5
    restartDelay: 1.0               # seconds, doubled per restart (at most 30)
    readyTimeout: 30
    stopTimeout: 10
    stateFile: /run/vpp/uplink-state.json     # recorded Linux state (crash recovery)
    statusFile: /run/vpp/manager-status.json  # readiness for the agent
  sriov:                            # optional: VFs on a physical function
    pf: eth1
    numVfs: 4
    sysfsRoot: /sys
    vfs:
      - {index: 0, mac: "02:00:00:00:01:00", vlan: 100, qos: 0, trust: true, spoofCheck: false,
         driver: vfio-pci, attach: dev}      # attach: none | dev (dev_attach) | dpdk (startup.conf)
```

Buffer admission (``buffers``): VPP needs, per numa node, at least the rx and
tx rings of every interface it owns plus two frames (2 x 256) per thread:
``rxQueues*rxRingSize + txQueues*txRingSize`` (uplink) ``+ rxRingSize +
txRingSize`` (host interface) ``+ 512 * (1 + workers)``.  Pods add their own
rings later (the dataplane's admission check).  Memory: each buffer takes
about ``BUFFER_FOOTPRINT`` bytes; with 4k pages buffers, heap and stats must
fit in MemAvailable, with hugepages in the free hugepages of that size.

cnat (``cnat``): VPP sizes cnat's session hash from ``session-max`` on the
main heap the first time a flow is translated; with its default (16M
sessions, ~2.6G) a node with a normal heap aborts on its first Service
packet.  ``sessionMax`` must therefore fit in half the heap
(``CNAT_SESSION_BYTES`` each).  The scanner runs every
``sessionCleanupTimeout`` seconds and looks at the table for at most 100 us
per pass, so a small table and a short period are what make the sessions of
a removed backend expire within seconds.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from vppagent.manifests.fields import Fields
from vppagent.model.errors import ValidationError

DRIVERS = ("af_packet", "af_xdp", "dpdk", "rdma", "dev")
HOST_KINDS = ("tap", "veth")
RESTART_POLICIES = ("never", "on-failure", "always")
PAGE_SIZES = {"4k": 4 << 10, "2M": 2 << 20, "1G": 1 << 30}
VF_ATTACH = ("none", "dev", "dpdk")
BUFFER_FOOTPRINT = 2048 + 128 + 128 + 64   # data + vlib_buffer_t + pre-data + alignment
FRAME_BUFFERS_PER_THREAD = 512
SUN_PATH_MAX = 107
CNAT_SESSION_MAX = 1 << 24                  # VPP's own limit (CNAT_MAX_SESSIONS)
CNAT_SESSION_BYTES = 162                    # 2.4 buckets x 56-byte kv x 1.2 (cnat_session.c)
# Plugins the agent itself uses (the dataplane's declared messages) plus ping.
BASE_PLUGINS = ("af_packet", "tap", "memif", "acl", "cnat", "nat", "npol", "ping", "vxlan")
DRIVER_PLUGINS = {"af_xdp": ("af_xdp",), "dpdk": ("dpdk",), "rdma": ("rdma",)}
DEFAULT_VPP_MAC = "02:ca:11:c0:fd:10"
DEFAULT_HOST_VRF = 1_000_000
_PCI = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$")
_MAC = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")
_IFNAME = re.compile(r"^[^/\s:]{1,15}$")
_PLUGIN = re.compile(r"^[a-z0-9_]+$")
_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)\s*$")


@dataclass(frozen=True)
class HostFacts:
    """What this host can give VPP; injected in tests, probed otherwise."""

    cpu_count: int
    mem_available: int                          # bytes
    hugepages_free: Mapping[int, int] = field(default_factory=dict)   # page bytes -> free pages
    plugin_files: frozenset[str] | None = None  # *.so in pluginPath (None: not checked)

    @classmethod
    def probe(cls, plugin_path: str | None = None) -> "HostFacts":
        return cls(cpu_count=os.cpu_count() or 1, mem_available=_mem_available(),
                   hugepages_free=_hugepages_free(), plugin_files=_plugin_files(plugin_path))


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _hugepages_free() -> dict[int, int]:
    out: dict[int, int] = {}
    base = Path("/sys/kernel/mm/hugepages")
    for d in base.glob("hugepages-*kB") if base.is_dir() else ():
        try:
            out[int(d.name[len("hugepages-"):-2]) * 1024] = int((d / "free_hugepages").read_text())
        except (OSError, ValueError):
            continue
    return out


def _plugin_files(plugin_path: str | None) -> frozenset[str] | None:
    if not plugin_path or not os.path.isdir(plugin_path):
        return None
    return frozenset(n for n in os.listdir(plugin_path) if n.endswith(".so"))


@dataclass(frozen=True)
class UplinkConfig:
    interface: str
    driver: str = "af_packet"
    pci: str | None = None
    dev_driver: str = "iavf"
    rx_queues: int = 1
    tx_queues: int = 1
    rx_ring_size: int = 1024
    tx_ring_size: int = 1024
    mtu: int | None = None


@dataclass(frozen=True)
class HostInterfaceConfig:
    kind: str = "tap"
    rx_ring_size: int = 1024
    tx_ring_size: int = 1024
    vpp_mac: str = DEFAULT_VPP_MAC
    vrf: int = DEFAULT_HOST_VRF


@dataclass(frozen=True)
class CnatConfig:
    session_max: int = 1 << 18
    session_cleanup_timeout: float = 0.1

    @property
    def session_bytes(self) -> int:
        return self.session_max * CNAT_SESSION_BYTES


@dataclass(frozen=True)
class SuperviseConfig:
    restart_policy: str = "on-failure"
    max_restarts: int = 5
    restart_delay: float = 1.0
    ready_timeout: float = 30.0
    stop_timeout: float = 10.0
    state_file: str = ""
    status_file: str = ""


@dataclass(frozen=True)
class VfConfig:
    index: int
    mac: str | None = None
    vlan: int | None = None
    qos: int = 0
    trust: bool | None = None
    spoof_check: bool | None = None
    driver: str | None = "vfio-pci"
    attach: str = "none"


@dataclass(frozen=True)
class SriovConfig:
    pf: str
    num_vfs: int
    sysfs_root: str = "/sys"
    vfs: tuple[VfConfig, ...] = ()


@dataclass(frozen=True)
class NodeConfig:
    """A validated ``vpp:`` section (paths resolved, defaults filled in).
    ``uplink`` None: VPP alone (tests, tools); ``vpp run`` needs one."""

    uplink: UplinkConfig | None = None
    binary: str = "/usr/bin/vpp"
    plugin_path: str | None = None
    runtime_dir: str = "/run/vpp"
    api_socket: str = ""
    stats_socket: str = ""
    cli_socket: str = ""
    log_file: str = ""
    exec_file: str = ""
    api_prefix: str = ""
    template: str = "auto"
    main_core: int = 0
    workers: tuple[int, ...] | int = ()        # core list, or a count VPP places itself
    buffers: int = 16384
    page_size: str = "4k"
    heap_size: int = 1 << 30
    stats_size: int = 32 << 20
    poll_sleep_usec: int | None = None
    netns: str = "vppagent-vpp"
    plugins: tuple[str, ...] = ()
    host_interface: HostInterfaceConfig = field(default_factory=HostInterfaceConfig)
    supervise: SuperviseConfig = field(default_factory=SuperviseConfig)
    sriov: SriovConfig | None = None
    cnat: CnatConfig = field(default_factory=CnatConfig)

    @property
    def worker_count(self) -> int:
        return self.workers if isinstance(self.workers, int) else len(self.workers)

    @property
    def buffers_needed(self) -> int:
        """The admission floor described in the module docstring."""
        u, h = self.uplink, self.host_interface
        rings = u.rx_queues * u.rx_ring_size + u.tx_queues * u.tx_ring_size if u else 0
        return (rings + h.rx_ring_size + h.tx_ring_size
                + FRAME_BUFFERS_PER_THREAD * (1 + self.worker_count))

    def with_runtime_dir(self, runtime_dir: str) -> "NodeConfig":
        """The same node with every runtime path moved under ``runtime_dir``
        (how tests run several VPPs side by side)."""
        return replace(self, runtime_dir=runtime_dir, **_paths(runtime_dir, {}),
                       api_prefix=_default_prefix(runtime_dir),
                       supervise=replace(self.supervise, **_supervise_paths(runtime_dir, {})))


# ------------------------------------------------------------------ parsing

def load_node_config(path: str, *, host: HostFacts | None = None, check_host: bool = True) -> NodeConfig:
    """Read a YAML file holding a ``vpp:`` section (other top-level sections
    belong to the agent and are left to its own loader)."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise ValidationError("", f"cannot read {path}: {e.strerror}", path) from None
    except yaml.YAMLError as e:
        raise ValidationError("", f"invalid YAML: {e}", path) from None
    if not isinstance(data, Mapping) or "vpp" not in data:
        raise ValidationError("vpp", "no vpp: section in the config", path)
    try:
        return parse_node_config(data["vpp"], host=host, check_host=check_host)
    except ValidationError as e:
        raise e.with_source(path) from None


def parse_node_config(data: Any, *, host: HostFacts | None = None,
                      check_host: bool = True) -> NodeConfig:
    """Validate a ``vpp:`` mapping.  ``host`` defaults to this machine's
    facts; ``check_host=False`` renders for another machine (only the
    syntax and internal consistency are checked)."""
    top = Fields(data, "vpp", strict=True)
    env = os.environ
    binary = top.str("binary") or env.get("VPP_BIN") or "/usr/bin/vpp"
    plugin_path = top.str("pluginPath") or env.get("VPP_PLUGIN_PATH") or None
    runtime_dir = top.str("runtimeDir") or "/run/vpp"
    if not os.path.isabs(runtime_dir):
        raise ValidationError(top.at("runtimeDir"), f"must be an absolute path, got {runtime_dir!r}")
    paths = _paths(runtime_dir, {k: top.str(k) for k in
                                 ("apiSocket", "statsSocket", "cliSocket", "logFile", "execFile")})
    for key, attr in (("apiSocket", "api_socket"), ("statsSocket", "stats_socket"),
                      ("cliSocket", "cli_socket")):
        if len(paths[attr].encode()) > SUN_PATH_MAX:
            raise ValidationError(top.at(key), f"socket path longer than {SUN_PATH_MAX} bytes: {paths[attr]}")
    api_prefix = top.str("apiPrefix") or _default_prefix(runtime_dir)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", api_prefix):
        raise ValidationError(top.at("apiPrefix"), f"invalid api-segment prefix {api_prefix!r}")
    template = top.str("template") or "auto"
    main_core = top.int("mainCore", 0, lo=0)
    assert main_core is not None
    workers = _workers(top.raw("workers"), top.at("workers"))
    buffers = top.int("buffers", 16384, lo=1)
    assert buffers is not None
    page_size = _page_size(top.raw("pageSize", "4k"), top.at("pageSize"))
    heap_size = _size(top.raw("heapSize", "1G"), top.at("heapSize"), minimum=64 << 20)
    stats_size = _size(top.raw("statsSize", "32M"), top.at("statsSize"), minimum=1 << 20)
    poll_sleep = top.int("pollSleepUsec", None, lo=0, hi=1_000_000)
    netns = top.str("netns") or "vppagent-vpp"
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", netns):
        raise ValidationError(top.at("netns"), f"invalid network namespace name {netns!r}")
    uplink = _uplink(top.sub("uplink")) if top.has("uplink") else None
    hostif = _host_interface(top.sub("hostInterface"))
    supervise = _supervise(top.sub("supervise"), runtime_dir)
    sriov = _sriov(top.sub("sriov")) if top.has("sriov") else None
    cnat = _cnat(top.sub("cnat"))
    plugins = _plugins(top, uplink.driver if uplink else None)
    top.check_unknown()

    cfg = NodeConfig(uplink=uplink, binary=binary, plugin_path=plugin_path, runtime_dir=runtime_dir,
                     api_prefix=api_prefix, template=template, main_core=main_core, workers=workers,
                     buffers=buffers, page_size=page_size, heap_size=heap_size, stats_size=stats_size,
                     poll_sleep_usec=poll_sleep, netns=netns, plugins=plugins,
                     host_interface=hostif, supervise=supervise, sriov=sriov, cnat=cnat, **paths)
    _check_consistency(cfg)
    if check_host:
        check_against_host(cfg, host or HostFacts.probe(plugin_path))
    return cfg


def _paths(runtime_dir: str, given: Mapping[str, str]) -> dict[str, str]:
    def pick(key: str, default: str) -> str:
        return given.get(key) or os.path.join(runtime_dir, default)
    return {"api_socket": pick("apiSocket", "api.sock"), "stats_socket": pick("statsSocket", "stats.sock"),
            "cli_socket": pick("cliSocket", "cli.sock"), "log_file": pick("logFile", "vpp.log"),
            "exec_file": pick("execFile", "startup.cli")}


def _supervise_paths(runtime_dir: str, given: Mapping[str, str]) -> dict[str, str]:
    return {"state_file": given.get("stateFile") or os.path.join(runtime_dir, "uplink-state.json"),
            "status_file": given.get("statusFile") or os.path.join(runtime_dir, "manager-status.json")}


def _default_prefix(runtime_dir: str) -> str:
    return "vppagent-" + hashlib.sha1(runtime_dir.encode()).hexdigest()[:8]


def parse_cpu_list(text: str, path: str) -> tuple[int, ...]:
    """``"1-3,6"`` -> (1, 2, 3, 6); malformed, reversed or repeated cores are errors."""
    cores: list[int] = []
    if not text.strip():
        raise ValidationError(path, "empty core list")
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise ValidationError(path, f"malformed core list {text!r} (expected e.g. \"1-3,6\")")
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo:
            raise ValidationError(path, f"reversed range {part.strip()!r} in {text!r}")
        for c in range(lo, hi + 1):
            if c in cores:
                raise ValidationError(path, f"core {c} listed twice in {text!r}")
            cores.append(c)
    return tuple(sorted(cores))


def _workers(value: Any, path: str) -> tuple[int, ...] | int:
    if value is None or value == "" or value == 0:
        return ()
    if isinstance(value, bool):
        raise ValidationError(path, f"expected a core list or a count, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValidationError(path, f"worker count must be positive, got {value}")
        return value
    if isinstance(value, str):
        return parse_cpu_list(value, path)
    raise ValidationError(path, f"expected a core list like \"1-3\" or a count, got {value!r}")


def _page_size(value: Any, path: str) -> str:
    text = str(value).strip()
    for name in PAGE_SIZES:
        if text.lower() == name.lower():
            return name
    raise ValidationError(path, f"unsupported page size {value!r} (use 4k, 2M or 1G)")


def parse_size(value: Any, path: str) -> int:
    """``512M``, ``1G``, ``4k`` or a byte count -> bytes."""
    if isinstance(value, bool):
        raise ValidationError(path, f"expected a size like 512M, got {value!r}")
    if isinstance(value, int):
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValidationError(path, f"expected a size like 512M or 1G, got {value!r}")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]


def _size(value: Any, path: str, minimum: int) -> int:
    n = parse_size(value, path)
    if n < minimum:
        raise ValidationError(path, f"{format_size(n)} is below the minimum {format_size(minimum)}")
    return n


def format_size(n: int) -> str:
    """Bytes as VPP's unformat_memory_size reads them (largest exact unit)."""
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def _ring(f: Fields, key: str, default: int) -> int:
    n = f.int(key, default, lo=64, hi=32768)
    assert n is not None
    if n & (n - 1):
        raise ValidationError(f.at(key), f"ring size must be a power of two, got {n}")
    return n


def _uplink(f: Fields) -> UplinkConfig:
    iface = f.str("interface", required=True)
    if not _IFNAME.match(iface):
        raise ValidationError(f.at("interface"), f"invalid Linux interface name {iface!r}")
    driver = f.str("driver") or "af_packet"
    if driver not in DRIVERS:
        raise ValidationError(f.at("driver"), f"unknown driver {driver!r} (known: {', '.join(DRIVERS)})")
    pci = f.str("pci") or None
    if pci is not None and not _PCI.match(pci):
        raise ValidationError(f.at("pci"), f"invalid PCI address {pci!r} (expected 0000:01:00.0)")
    dev_driver = f.str("devDriver") or "iavf"
    if not re.fullmatch(r"[a-z0-9_]{1,15}", dev_driver):
        raise ValidationError(f.at("devDriver"), f"invalid VPP device driver name {dev_driver!r}")
    rxq = f.int("rxQueues", 1, lo=1, hi=64)
    txq = f.int("txQueues", 1, lo=1, hi=64)
    mtu = f.int("mtu", None, lo=576, hi=9216)
    out = UplinkConfig(interface=iface, driver=driver, pci=pci, dev_driver=dev_driver,
                       rx_queues=rxq or 1, tx_queues=txq or 1, rx_ring_size=_ring(f, "rxRingSize", 1024),
                       tx_ring_size=_ring(f, "txRingSize", 1024), mtu=mtu)
    f.check_unknown()
    return out


def _host_interface(f: Fields) -> HostInterfaceConfig:
    kind = f.str("kind") or "tap"
    if kind not in HOST_KINDS:
        raise ValidationError(f.at("kind"), f"unknown host interface kind {kind!r} (known: {', '.join(HOST_KINDS)})")
    mac = f.str("vppMac") or DEFAULT_VPP_MAC
    if not _MAC.match(mac) or int(mac[:2], 16) & 1:
        raise ValidationError(f.at("vppMac"), f"invalid unicast MAC address {mac!r}")
    vrf = f.int("vrf", DEFAULT_HOST_VRF, lo=1, hi=0xFFFFFFFE)
    out = HostInterfaceConfig(kind=kind, rx_ring_size=_ring(f, "rxRingSize", 1024),
                              tx_ring_size=_ring(f, "txRingSize", 1024), vpp_mac=mac.lower(),
                              vrf=vrf or DEFAULT_HOST_VRF)
    f.check_unknown()
    return out


def _supervise(f: Fields, runtime_dir: str) -> SuperviseConfig:
    policy = f.str("restartPolicy") or "on-failure"
    if policy not in RESTART_POLICIES:
        raise ValidationError(f.at("restartPolicy"),
                              f"unknown restart policy {policy!r} (known: {', '.join(RESTART_POLICIES)})")
    max_restarts = f.int("maxRestarts", 5, lo=0)
    delay = f.number("restartDelay")
    ready = f.number("readyTimeout")
    stop = f.number("stopTimeout")
    for key, v in (("restartDelay", delay), ("readyTimeout", ready), ("stopTimeout", stop)):
        if v is not None and v <= 0:
            raise ValidationError(f.at(key), f"must be positive, got {v}")
    paths = _supervise_paths(runtime_dir, {"stateFile": f.str("stateFile"),
                                           "statusFile": f.str("statusFile")})
    out = SuperviseConfig(restart_policy=policy, max_restarts=max_restarts if max_restarts is not None else 5,
                          restart_delay=delay or 1.0, ready_timeout=ready or 30.0,
                          stop_timeout=stop or 10.0, **paths)
    f.check_unknown()
    return out


def _cnat(f: Fields) -> CnatConfig:
    session_max = f.int("sessionMax", CnatConfig.session_max, lo=1024, hi=CNAT_SESSION_MAX)
    timeout = f.number("sessionCleanupTimeout")
    if timeout is not None and not 0 < timeout <= 60:
        raise ValidationError(f.at("sessionCleanupTimeout"), f"expected seconds in (0, 60], got {timeout}")
    f.check_unknown()
    return CnatConfig(session_max=session_max if session_max is not None else CnatConfig.session_max,
                      session_cleanup_timeout=timeout if timeout is not None else CnatConfig.session_cleanup_timeout)


def _sriov(f: Fields) -> SriovConfig:
    pf = f.str("pf", required=True)
    if not _IFNAME.match(pf):
        raise ValidationError(f.at("pf"), f"invalid Linux interface name {pf!r}")
    num = f.int("numVfs", None, lo=0, hi=256)
    if num is None:
        raise ValidationError(f.at("numVfs"), "required field is missing")
    root = f.str("sysfsRoot") or "/sys"
    vfs = []
    seen: set[int] = set()
    for path, item in f.list("vfs"):
        v = Fields(item, path, strict=True)
        index = v.int("index", None, lo=0)
        if index is None:
            raise ValidationError(v.at("index"), "required field is missing")
        if index >= num:
            raise ValidationError(v.at("index"), f"VF {index} does not exist with numVfs {num}")
        if index in seen:
            raise ValidationError(v.at("index"), f"VF {index} configured twice")
        seen.add(index)
        mac = v.str("mac") or None
        if mac is not None and (not _MAC.match(mac) or int(mac[:2], 16) & 1):
            raise ValidationError(v.at("mac"), f"invalid unicast MAC address {mac!r}")
        attach = v.str("attach") or "none"
        if attach not in VF_ATTACH:
            raise ValidationError(v.at("attach"), f"unknown attach mode {attach!r} (known: {', '.join(VF_ATTACH)})")
        v.raw("driver")                          # null keeps the kernel's VF driver
        driver = v.data["driver"] if "driver" in v.data else "vfio-pci"
        if driver is not None and not (isinstance(driver, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,32}", driver)):
            raise ValidationError(v.at("driver"), f"invalid kernel driver name {driver!r}")
        if attach != "none" and driver != "vfio-pci":
            raise ValidationError(v.at("driver"), f"attach {attach} needs driver vfio-pci, got {driver!r}")
        vfs.append(VfConfig(index=index, mac=mac.lower() if mac else None, vlan=v.int("vlan", None, lo=0, hi=4094),
                            qos=v.int("qos", 0, lo=0, hi=7) or 0,
                            trust=v.bool("trust") if v.has("trust") else None,
                            spoof_check=v.bool("spoofCheck") if v.has("spoofCheck") else None,
                            driver=driver, attach=attach))
        v.check_unknown()
    out = SriovConfig(pf=pf, num_vfs=num, sysfs_root=root, vfs=tuple(vfs))
    f.check_unknown()
    return out


def _plugins(top: Fields, driver: str | None) -> tuple[str, ...]:
    if not top.has("plugins"):
        return BASE_PLUGINS + DRIVER_PLUGINS.get(driver or "", ())
    names: list[str] = []
    for path, item in top.list("plugins"):
        if not isinstance(item, str):
            raise ValidationError(path, f"expected a plugin name, got {item!r}")
        name = item.removesuffix(".so").removesuffix("_plugin")
        if not _PLUGIN.match(name):
            raise ValidationError(path, f"invalid plugin name {item!r}")
        if name in names:
            raise ValidationError(path, f"plugin {name!r} listed twice")
        names.append(name)
    return tuple(names)


# ------------------------------------------------------------- validation

def _check_consistency(cfg: NodeConfig) -> None:
    """Checks that need no host facts."""
    if isinstance(cfg.workers, tuple) and cfg.main_core in cfg.workers:
        raise ValidationError("vpp.workers", f"main core {cfg.main_core} is also in the worker list")
    u = cfg.uplink
    if u is not None:
        for p in DRIVER_PLUGINS.get(u.driver, ()):
            if p not in cfg.plugins:
                raise ValidationError("vpp.plugins", f"uplink driver {u.driver} needs the {p} plugin")
        if cfg.host_interface.kind == "tap" and "tap" not in cfg.plugins:
            raise ValidationError("vpp.plugins", "hostInterface kind tap needs the tap plugin")
        if (u.driver == "af_packet" or cfg.host_interface.kind == "veth") and "af_packet" not in cfg.plugins:
            raise ValidationError("vpp.plugins", "af_packet interfaces need the af_packet plugin")
    if cfg.sriov and any(v.attach == "dpdk" for v in cfg.sriov.vfs) and "dpdk" not in cfg.plugins:
        raise ValidationError("vpp.sriov.vfs", "attach dpdk needs the dpdk plugin")
    if "cnat" in cfg.plugins and cfg.cnat.session_bytes > cfg.heap_size // 2:
        raise ValidationError(
            "vpp.cnat.sessionMax", f"{cfg.cnat.session_max} cnat sessions need about "
            f"{format_size(_round_up(cfg.cnat.session_bytes, 1 << 20))} of main heap; the heap is "
            f"{format_size(cfg.heap_size)} (raise heapSize or lower sessionMax)")
    if cfg.buffers < cfg.buffers_needed:
        rings = (f"the uplink's rings ({u.rx_queues}x{u.rx_ring_size} rx + {u.tx_queues}x{u.tx_ring_size} tx), "
                 if u else "")
        raise ValidationError(
            "vpp.buffers", f"{cfg.buffers} buffers are too few: {rings}the host interface's "
            f"rings and {1 + cfg.worker_count} threads need at least {cfg.buffers_needed}")


def check_against_host(cfg: NodeConfig, host: HostFacts) -> None:
    """Checks that depend on the machine VPP will run on."""
    cores = [cfg.main_core] + (list(cfg.workers) if isinstance(cfg.workers, tuple) else [])
    if cfg.main_core >= host.cpu_count:
        raise ValidationError("vpp.mainCore", f"core {cfg.main_core} is beyond this host's {host.cpu_count} CPUs")
    if isinstance(cfg.workers, tuple):
        beyond = [c for c in cores[1:] if c >= host.cpu_count]
        if beyond:
            raise ValidationError("vpp.workers", f"core {beyond[0]} is beyond this host's {host.cpu_count} CPUs "
                                                 f"(0-{host.cpu_count - 1})")
    elif cfg.workers >= host.cpu_count:
        raise ValidationError("vpp.workers", f"{cfg.workers} workers plus the main thread need more than "
                                             f"this host's {host.cpu_count} CPUs")
    buf_bytes = cfg.buffers * BUFFER_FOOTPRINT
    page = PAGE_SIZES[cfg.page_size]
    if cfg.page_size == "4k":
        total = buf_bytes + cfg.heap_size + cfg.stats_size
        if host.mem_available and total > host.mem_available:
            raise ValidationError(
                "vpp.buffers", f"{cfg.buffers} buffers ({format_size(_round_up(buf_bytes, 1 << 20))}) plus heap "
                f"{format_size(cfg.heap_size)} and stats {format_size(cfg.stats_size)} exceed the "
                f"{host.mem_available >> 20}M of available memory")
    else:
        free = host.hugepages_free.get(page, 0)
        if free == 0:
            raise ValidationError("vpp.pageSize", f"no free {cfg.page_size} hugepages on this host "
                                                  f"(use pageSize: 4k, or reserve hugepages)")
        needed = -(-buf_bytes // page) + -(-cfg.heap_size // page)
        if needed > free:
            raise ValidationError(
                "vpp.buffers", f"{cfg.buffers} buffers and a {format_size(cfg.heap_size)} heap need {needed} "
                f"{cfg.page_size} hugepages; {free} are free")
    if host.plugin_files is not None:
        for name in cfg.plugins:
            if f"{name}_plugin.so" not in host.plugin_files:
                raise ValidationError("vpp.plugins", f"{name}_plugin.so is not in {cfg.plugin_path}")


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit
