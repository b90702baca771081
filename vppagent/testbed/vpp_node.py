"""VPP under ``vppagent vpp run`` for one testbed node (the multi-node ``Cluster`` uses it).

A VPP node is a testbed ``Node`` whose underlay veth is its uplink: the
manager (``vppagent vpp run``, started from a thread inside the node netns,
as the node scenario does) parks that veth in VPP's netns, creates it in VPP
as af_packet with the node's address and routes, and gives Linux a veth host
interface carrying the uplink's name, MAC and addresses.  The agent then
runs ``dataplane: {type: vpp, podInterface: af_packet}`` against that VPP.

``VppRuntime`` only writes the two config sections (``vpp:`` and the
``dataplane:`` options), starts, waits for and stops the manager, and reads
VPP's FIB (what other nodes' routes look like on a VPP node).  Everything it
starts is stopped by ``stop()``, also VPPs a killed manager left behind;
``reap_orphans()`` ends the managers and VPPs of testbeds whose process died
(their scratch directory is gone).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from vppagent.testbed.agent import REPO
from vppagent.testbed.netns import call_in

VPP_BIN = os.environ.get("VPP_BIN", "")
VPP_PLUGIN_PATH = os.environ.get("VPP_PLUGIN_PATH", "")
BUFFERS = 16384
ALL = 0xFFFFFFFF
SCRATCH_PREFIX = "/tmp/vppagent-"      # the testbeds' tempfile.mkdtemp prefix


def vpp_available() -> bool:
    return bool(VPP_BIN) and os.access(VPP_BIN, os.X_OK)


class VppRuntime:
    """One node's VPP and its manager; ``run_dir`` must be short (unix socket paths)."""

    def __init__(self, uplink: str, run_dir: Path, vpp_netns: str, *,
                 heap_size: str = "256M", buffers: int = BUFFERS, poll_sleep_usec: int = 100,
                 encap_overhead: int = 0, binary: str | None = None, plugin_path: str | None = None) -> None:
        self.uplink, self.vpp_netns = uplink, vpp_netns
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.heap_size, self.buffers, self.poll_sleep_usec = heap_size, buffers, poll_sleep_usec
        self.encap_overhead = encap_overhead
        self.binary = binary or VPP_BIN
        self.plugin_path = plugin_path if plugin_path is not None else VPP_PLUGIN_PATH
        if not self.binary:
            raise RuntimeError("a VPP node needs a VPP binary ($VPP_BIN)")
        self.manager: subprocess.Popen[bytes] | None = None
        self.manager_log = self.run_dir / "manager.log"
        self._started = 0.0
        self._conn: Any = None

    # -- config ------------------------------------------------------------------------

    @property
    def api_socket(self) -> str:
        return str(self.run_dir / "api.sock")

    @property
    def uplink_vpp(self) -> str:
        """VPP's name of the af_packet uplink."""
        return f"host-{self.uplink}"

    def vpp_section(self) -> dict[str, Any]:
        """The ``vpp:`` section: a small VPP (4k pages, modest heap, idle sleep) on the uplink."""
        vpp: dict[str, Any] = {
            "binary": self.binary, "runtimeDir": str(self.run_dir), "heapSize": self.heap_size,
            "buffers": self.buffers, "pageSize": "4k", "pollSleepUsec": self.poll_sleep_usec,
            "netns": self.vpp_netns, "uplink": {"interface": self.uplink, "driver": "af_packet"},
            "hostInterface": {"kind": "veth"},      # no /dev/vhost-net on the test machines
            "supervise": {"restartPolicy": "never", "readyTimeout": 30, "stopTimeout": 10},
        }
        if self.plugin_path:
            vpp["pluginPath"] = self.plugin_path
        return vpp

    def dataplane_section(self) -> dict[str, Any]:
        """The agent's ``dataplane:`` options for this VPP (``type`` is the node's)."""
        dp: dict[str, Any] = {
            "socket": self.api_socket, "podInterface": "af_packet", "vppNetns": self.vpp_netns,
            "uplinkInterface": self.uplink_vpp, "stateDir": str(self.run_dir / "vpp-state"),
            "refreshInterval": None, "bufferAdmission": {"buffers": self.buffers},
        }
        if self.encap_overhead:
            dp["encapOverhead"] = self.encap_overhead
        return dp

    # -- manager -----------------------------------------------------------------------

    @property
    def status_file(self) -> Path:
        return self.run_dir / "manager-status.json"

    def start(self, node_netns: str, config_path: Path) -> None:
        """Start ``vppagent vpp run --config config_path`` in the node netns (``wait_ready``
        waits for it); the config holds ``vpp_section()``."""
        if self.manager is not None and self.manager.poll() is None:
            raise RuntimeError("the manager is already running")
        self._started = time.time()
        argv = [sys.executable, "-m", "vppagent", "vpp", "run", "--config", str(config_path)]

        def spawn() -> subprocess.Popen[bytes]:
            # Forked from a thread in the node netns, not through ``ip netns exec``: that gives
            # the child a mount namespace of its own, where the netns the manager adds for VPP
            # would be mounted out of everyone else's sight.
            with open(self.manager_log, "ab") as out:
                return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        start_new_session=True, cwd=str(REPO),
                                        env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.manager = call_in(node_netns, spawn)

    def status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def ready(self) -> bool:
        """The manager reported ready since it was started (raises if it exited)."""
        if self.manager is None:
            raise RuntimeError("the manager was not started")
        if self.manager.poll() is not None:
            raise RuntimeError(f"vppagent vpp run exited with {self.manager.returncode}\n{self.diag()}")
        s = self.status()
        return s.get("state") == "ready" and s.get("time", 0) >= self._started

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"VPP was not up under vppagent vpp run within {timeout:g} s\n{self.diag()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the manager (it stops VPP and gives the uplink back to Linux), then make
        sure no VPP of ours is left; never raises."""
        self.disconnect()
        proc, self.manager = self.manager, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for pid in self.vpp_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            from vppagent.vpp_node.config import _default_prefix
            from vppagent.vpp_node.process import remove_stale_files
            remove_stale_files(_default_prefix(str(self.run_dir)))

    def vpp_pids(self) -> list[int]:
        """VPP processes whose startup.conf lives in our run dir (whoever started them)."""
        return [pid for pid, argv in _processes() if _is_vpp(argv) and _config_of(argv).startswith(
            f"{self.run_dir}/")]

    # -- VPP state ---------------------------------------------------------------------

    def _connection(self) -> Any:
        """A connection kept between calls (the caller's thread owns it); re-made after a failure."""
        from vppagent.vpp.connection import VppConnection
        if self._conn is None:
            conn = VppConnection(self.api_socket, client_name=f"testbed-{os.getpid()}")
            conn.connect()
            self._conn = conn
        return self._conn

    def disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.disconnect()

    def dump(self, message: str, **args: Any) -> list[Any]:
        try:
            return self._connection().dump(message, **args)
        except Exception:
            self.disconnect()
            raise

    def routes(self, table: int = 0) -> list[str]:
        """Table ``table``'s IPv4 routes that have a next hop, as ``ip route`` would print them
        (``<prefix> via <nh> dev <interface>``): other nodes' blocks, the underlay's gateways."""
        names = {int(d.sw_if_index): str(d.interface_name) for d in self.dump("sw_interface_dump", sw_if_index=ALL)}
        out = []
        for d in self.dump("ip_route_v2_dump", table={"table_id": table, "is_ip6": False}):
            for path in d.route.paths:
                nh = ipaddress.ip_address(str(path.nh.address.ip4))
                if int(nh) == 0:
                    continue
                dev = names.get(int(path.sw_if_index), "")
                out.append(f"{ipaddress.ip_network(str(d.route.prefix))} via {nh}" + (f" dev {dev}" if dev else ""))
        return out

    def cli(self, command: str) -> str:
        """A VPP CLI command's output (diagnostics)."""
        vppctl = str(Path(self.binary).with_name("vppctl"))
        proc = subprocess.run([vppctl, "-s", str(self.run_dir / "cli.sock"), command], capture_output=True,
                              text=True, timeout=10)
        return proc.stdout + proc.stderr

    def diag(self, chars: int = 3000) -> str:
        parts = [f"manager status: {self.status()}"]
        for path in (self.manager_log, self.run_dir / "vpp.log", self.run_dir / "vpp.out"):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)


# -- orphans -----------------------------------------------------------------------------

def _processes() -> list[tuple[int, list[str]]]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                raw = (d / "cmdline").read_bytes()
                if raw:
                    out.append((int(d.name), [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")]))
    return out


def _is_vpp(argv: list[str]) -> bool:
    return bool(argv) and Path(argv[0]).name == "vpp"


def _is_manager(argv: list[str]) -> bool:
    return "vppagent" in argv and argv[argv.index("vppagent") + 1:][:2] == ["vpp", "run"]


def _config_of(argv: list[str]) -> str:
    for flag in ("-c", "--config"):
        if flag in argv[:-1]:
            return argv[argv.index(flag) + 1]
    return ""


def reap_orphans() -> list[int]:
    """SIGKILL the managers and VPPs whose config sits in a testbed scratch directory that no
    longer exists (the testbed was killed and reaped by the registry); returns their pids."""
    killed = []
    for pid, argv in _processes():
        if not (_is_vpp(argv) or _is_manager(argv)):
            continue
        config = _config_of(argv)
        if not config.startswith(SCRATCH_PREFIX):
            continue
        scratch = SCRATCH_PREFIX + config[len(SCRATCH_PREFIX):].split("/", 1)[0]
        if os.path.isdir(scratch):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed
