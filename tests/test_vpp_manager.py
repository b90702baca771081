"""``vppagent vpp run``: record/restore of the uplink's Linux state (root, no
VPP needed), VPP-side wiring against the fake VPP, and (``vpp`` marker) the
whole manager with a real VPP inside test namespaces: the uplink handed over,
its identity on a host interface, traffic through VPP, restore on SIGTERM,
restart after a VPP crash, recovery after a killed manager."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from vpp_env import fake_vpp
from vppagent.dataplane.linux.netlink_ns import open_netns, run_in_netns
from vppagent.vpp.connection import VppConnection
from vppagent.vpp.fake import FakeVpp
from vppagent.vpp_node import linux_state
from vppagent.vpp_node.config import HostFacts, parse_node_config
from vppagent.vpp_node.host_interface import veth_peer_name
from vppagent.vpp_node.linux_state import AddrState, LinkState, RouteState
from vppagent.vpp_node.manager import Manager
from vppagent.vpp_node.netns import Netns, create_netns, delete_netns
from vppagent.vpp_node.uplink import Parked, create_in_vpp, park, unpark
from vppagent.vpp_node.vpp_wiring import PUNT_NH4, PUNT_NH6, route_via_uplink, wire_host_interface, wire_uplink

IS_ROOT = os.geteuid() == 0
needs_vpp = pytest.mark.skipif(not os.environ.get("VPP_BIN"), reason="VPP_BIN not set")
HOST = HostFacts(cpu_count=4, mem_available=16 << 30)
MAC = "02:5e:00:00:aa:01"
IFF_UP = 1


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, text=True)


@contextlib.contextmanager
def topology(suffix: str = "") -> Iterator[dict[str, str]]:
    """node netns with an "uplink" veth (addresses, routes, neighbour,
    sysctls) whose other end is in a peer netns; everything removed after."""
    tok = secrets.token_hex(3)
    t = {"node": f"vm{tok}n", "peer": f"vm{tok}p", "vpp": f"vm{tok}v", "uplink": f"up{tok}",
         "peer_if": f"pe{tok}", "tok": tok}
    try:
        for ns in (t["node"], t["peer"]):
            create_netns(ns)
            for key in ("all", "default"):
                subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{key}.accept_dad=0"],
                               check=True, capture_output=True)
        n, p = t["node"], t["peer"]
        ip(n, "link", "add", t["uplink"], "address", MAC, "mtu", "1450", "type", "veth", "peer", "name",
           t["peer_if"], "netns", p)
        ip(n, "addr", "add", "10.77.0.2/24", "dev", t["uplink"])
        ip(n, "addr", "add", "10.77.0.3/24", "dev", t["uplink"])               # a secondary
        ip(n, "addr", "add", "2001:db8:77::2/64", "dev", t["uplink"])
        ip(n, "link", "set", t["uplink"], "up")
        ip(n, "route", "add", "default", "via", "10.77.0.1", "dev", t["uplink"])
        ip(n, "route", "add", "198.51.100.0/24", "via", "10.77.0.1", "dev", t["uplink"], "metric", "30",
           "proto", "static")
        ip(n, "route", "add", "203.0.113.0/24", "dev", t["uplink"], "table", "100")
        ip(n, "-6", "route", "add", "default", "via", "2001:db8:77::1", "dev", t["uplink"])
        ip(n, "neigh", "add", "10.77.0.250", "lladdr", "02:00:00:00:00:fa", "dev", t["uplink"], "nud", "permanent")
        subprocess.run(["ip", "netns", "exec", n, "sysctl", "-qw", f"net.ipv4.conf.{t['uplink']}.rp_filter=2"],
                       check=True, capture_output=True)
        ip(p, "addr", "add", "10.77.0.1/24", "dev", t["peer_if"])
        ip(p, "addr", "add", "2001:db8:77::1/64", "dev", t["peer_if"])
        ip(p, "link", "set", t["peer_if"], "mtu", "1450", "up")
        yield t
    finally:
        for ns in (t["vpp"], t["node"], t["peer"]):
            delete_netns(ns)


def snapshot(ns: str) -> dict[str, Any]:
    """Everything Linux has in a namespace, independent of ifindex."""
    def work(ipr: Any) -> dict[str, Any]:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        links = []
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            links.append((link.get_attr("IFLA_IFNAME"), info.get_attr("IFLA_INFO_KIND") if info else None,
                          link.get_attr("IFLA_ADDRESS"), link.get_attr("IFLA_MTU"), link["flags"] & (IFF_UP | 0x100),
                          link.get_attr("IFLA_TXQLEN")))
        addrs = [(names[a["index"]], a.get_attr("IFA_ADDRESS"), a["prefixlen"], a["scope"],
                  (a.get_attr("IFA_FLAGS") or a["flags"]) & ~linux_state.VOLATILE_ADDR_FLAGS,
                  a.get_attr("IFA_LABEL")) for a in ipr.get_addr()]
        routes = [(r["family"], r.get_attr("RTA_TABLE"), r.get_attr("RTA_DST"), r["dst_len"],
                   r.get_attr("RTA_GATEWAY"), names.get(r.get_attr("RTA_OIF")), r["proto"], r["scope"], r["type"],
                   r.get_attr("RTA_PRIORITY"), r.get_attr("RTA_PREFSRC"))
                  for fam in (socket.AF_INET, socket.AF_INET6) for r in ipr.route("dump", family=fam)]
        neigh = [(names.get(x["ifindex"]), x.get_attr("NDA_DST"), x.get_attr("NDA_LLADDR"))
                 for fam in (socket.AF_INET, socket.AF_INET6)
                 for x in ipr.get_neighbours(family=fam) if x["state"] & linux_state.NUD_PERMANENT]
        return {"links": sorted(links, key=str), "addresses": sorted(addrs, key=str),
                "routes": sorted(routes, key=str), "neighbours": sorted(neigh, key=str)}
    return Netns(ns).run(work)


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
             diag: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{diag()}")
        time.sleep(interval)


# ------------------------------------------------------------ record/restore

@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="needs root")
def test_record_mirror_restore_is_exact() -> None:
    with topology() as t:
        node, vpp_ns = Netns(t["node"]), t["vpp"]
        before = snapshot(t["node"])
        state = linux_state.record(node, t["uplink"])
        assert state.mac == MAC and state.mtu == 1450 and state.up
        assert {a.address for a in state.addresses} >= {"10.77.0.2", "10.77.0.3", "2001:db8:77::2"}
        routes = {r.describe() for r in state.routes}
        assert "default via 10.77.0.1 table 254 proto 3 metric None" in routes
        assert "198.51.100.0/24 via 10.77.0.1 table 254 proto 4 metric 30" in routes
        assert any(r.table == 100 and r.dst == "203.0.113.0" for r in state.routes)
        assert any(r.family == socket.AF_INET6 and r.dst is None and r.gateway == "2001:db8:77::1"
                   for r in state.routes)
        assert [(n.dst, n.lladdr) for n in state.neighbours] == [("10.77.0.250", "02:00:00:00:00:fa")]
        assert ("ipv4/rp_filter", "2") in state.sysctls

        # take the uplink away (as for VPP) and give its identity to a new veth
        create_netns(vpp_ns)
        parked = park(node, Netns(vpp_ns), state, parse_node_config(
            {"uplink": {"interface": t["uplink"]}, "netns": vpp_ns}, host=HOST))
        assert parked == Parked(driver="af_packet", name=t["uplink"], vpp_netns=vpp_ns)
        assert linux_state.record(Netns(vpp_ns), t["uplink"]).addresses == ()
        ip(t["node"], "link", "add", t["uplink"], "address", MAC, "type", "veth", "peer", "name",
           veth_peer_name(t["uplink"]), "netns", vpp_ns)
        ip(vpp_ns, "link", "set", veth_peer_name(t["uplink"]), "up")          # carrier, as VPP's end has
        assert linux_state.apply(node, state) == []
        mirror = linux_state.record(node, t["uplink"])
        assert mirror.ifindex != state.ifindex and mirror.kind == "veth"
        assert state.differences(mirror) == []

        # give it back: host interface gone, uplink home, everything as before
        ip(t["node"], "link", "del", t["uplink"])
        unpark(node, parked, state)
        assert linux_state.apply(node, state) == []
        assert state.differences(linux_state.record(node, t["uplink"])) == []
        assert snapshot(t["node"]) == before


def test_state_file_roundtrip(tmp_path: Path) -> None:
    state = LinkState(name="eth0", ifindex=2, kind=None, mac=MAC, mtu=1500, up=True,
                      addresses=(AddrState(2, "10.0.0.2", 24, flags=128, label="eth0"),
                                 AddrState(10, "2001:db8::2", 64, valid_lft=300, preferred_lft=100)),
                      routes=(RouteState(2, 254, None, 0, gateway="10.0.0.1", metrics=(("RTAX_MTU", 1400),)),),
                      sysctls=(("ipv4/rp_filter", "1"),))
    path = str(tmp_path / "s" / "state.json")
    state.save(path, parked={"driver": "af_packet", "name": "eth0"}, vppPid=42)
    loaded, extra = linux_state.load_state(path)
    assert loaded == state and extra == {"parked": {"driver": "af_packet", "name": "eth0"}, "vppPid": 42}
    assert linux_state.load_state(str(tmp_path / "none.json")) is None
    changed = LinkState(**{**state.__dict__, "mtu": 1400, "routes": ()})
    diffs = state.differences(changed)
    assert any(d.startswith("mtu: recorded 1500, now 1400") for d in diffs)
    assert any(d.startswith("routes: missing") and "default via 10.0.0.1" in d for d in diffs), diffs


@pytest.mark.root
@pytest.mark.skipif(not IS_ROOT, reason="needs root")
def test_recover_after_a_killed_manager(tmp_path: Path) -> None:
    """A manager killed mid-run left the uplink parked, a host veth and its
    state file: the next manager restores Linux from the file first."""
    with topology() as t:
        before = snapshot(t["node"])
        cfg = parse_node_config({"runtimeDir": str(tmp_path), "netns": t["vpp"],
                                 "uplink": {"interface": t["uplink"]}, "hostInterface": {"kind": "veth"}},
                                host=HOST)
        node = Netns(t["node"])
        state = linux_state.record(node, t["uplink"])
        create_netns(t["vpp"])
        parked = park(node, Netns(t["vpp"]), state, cfg)
        ip(t["node"], "link", "add", t["uplink"], "address", MAC, "type", "veth", "peer", "name",
           veth_peer_name(t["uplink"]), "netns", t["vpp"])
        linux_state.apply(node, state)
        state.save(cfg.supervise.state_file, parked=parked.to_json(), vppPid=None, vppNetns=t["vpp"])

        assert Manager(cfg, node=node).recover() is True
        assert snapshot(t["node"]) == before
        assert not Netns(t["vpp"]).exists()
        assert not os.path.exists(cfg.supervise.state_file)
        assert Manager(cfg, node=node).recover() is False          # nothing left to do


# ------------------------------------------------------------ restart policy

class ScriptedManager(Manager):
    """``run``'s policy with scripted outcomes instead of a VPP."""

    def __init__(self, cfg: Any, outcomes: list[tuple[str, int | None]]) -> None:
        super().__init__(cfg, node=Netns(None))
        self.outcomes = outcomes
        self.started = 0
        self.vpp_rc: int | None = None

    def recover(self) -> bool:
        return False

    def start(self) -> None:
        self.started += 1
        outcome, self.vpp_rc = self.outcomes.pop(0)
        if outcome.startswith("failed"):
            raise RuntimeError(outcome)
        self._outcome = outcome

    def supervise(self) -> str:
        return self._outcome

    def teardown(self) -> None:
        pass

    @property
    def vpp(self) -> Any:                              # run() reads vpp.returncode before teardown
        return type("ExitedVpp", (), {"returncode": self.vpp_rc, "alive": lambda self: False, "pid": 1})()

    @vpp.setter
    def vpp(self, value: Any) -> None:                 # Manager.__init__ sets it
        pass


@pytest.mark.parametrize("policy, outcomes, started, rc, final", [
    ("never", [("stopped", None)], 1, 0, "stopped"),
    ("never", [("exited", 1)], 1, 1, "failed"),
    ("never", [("exited", 0)], 1, 0, "exited"),
    ("on-failure", [("exited", 1), ("failed: boom", None), ("stopped", None)], 3, 0, "stopped"),
    ("on-failure", [("exited", 0)], 1, 0, "exited"),
    ("on-failure", [("hung", None)] * 3, 3, 1, "failed"),                 # maxRestarts 2
    ("always", [("exited", 0), ("exited", 0), ("stopped", None)], 3, 0, "stopped"),
])
def test_restart_policy(tmp_path: Path, policy: str, outcomes: list, started: int, rc: int, final: str) -> None:
    cfg = parse_node_config({"runtimeDir": str(tmp_path), "uplink": {"interface": "eth0"},
                             "supervise": {"restartPolicy": policy, "maxRestarts": 2, "restartDelay": 0.01}},
                            host=HOST)
    m = ScriptedManager(cfg, list(outcomes))
    assert m.run() == rc
    assert m.started == started
    status = json.loads(Path(cfg.supervise.status_file).read_text())
    assert status["state"] == final and status["restarts"] == started - 1


def test_a_failed_restore_stops_the_restarts(tmp_path: Path) -> None:
    cfg = parse_node_config({"runtimeDir": str(tmp_path), "uplink": {"interface": "eth0"},
                             "supervise": {"restartPolicy": "always", "restartDelay": 0.01}}, host=HOST)
    m = ScriptedManager(cfg, [("exited", 1), ("exited", 1)])
    Path(cfg.supervise.state_file).write_text("{}")                      # teardown left the record behind
    assert m.run() == 1 and m.started == 1
    status = json.loads(Path(cfg.supervise.status_file).read_text())
    assert status["state"] == "failed" and "restoring Linux failed" in status["reason"]


# --------------------------------------------------------- VPP side (fake)

def _state() -> LinkState:
    return LinkState(
        name="eth0", ifindex=2, kind=None, mac=MAC, mtu=1450, up=True,
        addresses=(AddrState(2, "10.77.0.2", 24, flags=0x80), AddrState(10, "2001:db8:77::2", 64, flags=0x80),
                   AddrState(10, "fe80::5e:ff:fe00:aa01", 64, scope=253, flags=0x80)),
        routes=(RouteState(2, 254, None, 0, gateway="10.77.0.1"),
                RouteState(2, 254, "198.51.100.0", 24, gateway="10.77.0.1", proto=4, priority=30),
                RouteState(2, 254, "10.77.0.0", 24, proto=2, scope=253),          # kernel: from the address
                RouteState(2, 100, "203.0.113.0", 24, scope=253),                 # other table: Linux only
                RouteState(10, 254, None, 0, gateway="2001:db8:77::1", priority=1024)))


@pytest.fixture
def fake() -> Iterator[FakeVpp]:
    with fake_vpp(pci_devices={"pci/0000:3b:02.0"}) as f:
        yield f


def _routes(fake: FakeVpp, af: int, table: int) -> dict[str, Any]:
    return {str(net): r for net, r in fake.state.routes[(af, table)].items()}


def test_vpp_wiring_against_the_fake(fake: FakeVpp) -> None:
    conn = VppConnection(client_factory=fake.client_factory, timeout=2.0)
    conn.connect()
    try:
        cfg = parse_node_config({"uplink": {"interface": "eth0"}, "hostInterface": {"kind": "veth", "vrf": 77}},
                                host=HOST)
        state = _state()
        up = create_in_vpp(conn, cfg, state)
        iface = fake.state.interfaces[up]
        assert iface.name == "host-eth0" and iface.mac == bytes.fromhex(MAC.replace(":", ""))
        assert iface.tag == "vppagent-uplink:eth0"
        wire_uplink(conn, cfg, up, state)
        assert iface.admin_up
        assert {str(a.prefix) for a in fake.state.addresses[up]} == {"10.77.0.2/24", "2001:db8:77::2/64"}
        v4 = _routes(fake, 4, 0)
        assert "0.0.0.0/0" in v4 and "198.51.100.0/24" in v4 and "203.0.113.0/24" not in v4
        assert "::/0" in _routes(fake, 6, 0)

        host = conn.call("af_packet_create_v3", mode=1, hw_addr="02:ca:11:c0:fd:10", use_random_hw_addr=False,
                         host_if_name=veth_peer_name("eth0"), flags=0, num_rx_queues=1,
                         num_tx_queues=1).sw_if_index
        wire_host_interface(conn, cfg, host, state)
        h = fake.state.interfaces[host]
        assert h.admin_up and h.proxy_arp
        assert {str(a.prefix) for a in fake.state.addresses[host]} == {"10.77.0.2/32", "2001:db8:77::2/128"}
        assert (4, 77) in fake.state.tables and (6, 77) in fake.state.tables
        assert "0.0.0.0/0" in _routes(fake, 4, 77) and "::/0" in _routes(fake, 6, 77)
        redirects = fake.state.punt_redirects
        assert {(k[1], str(v["nh"]), v["tx_sw_if_index"]) for k, v in redirects.items()} == {
            (4, PUNT_NH4, host), (6, PUNT_NH6, host)}
        neighbours = conn.dump("ip_neighbor_dump", sw_if_index=host, af=0)
        assert {str(n.neighbor.ip_address) for n in neighbours} >= {PUNT_NH4}

        # another node's pod block, via that node's address, out of the uplink
        route_via_uplink(conn, "10.65.7.0/26", "10.77.0.9", up)
        (path,) = _routes(fake, 4, 0)["10.65.7.0/26"].paths
        nh = path["nh"]["address"]                      # an untagged union: the fake decodes either arm
        assert path["sw_if_index"] == up and path["proto"] == 0
        assert (nh.get("ip4") or nh["ip6"]).packed[:4] == bytes([10, 77, 0, 9])
        route_via_uplink(conn, "10.65.7.0/26", "10.77.0.9", up, is_add=False)
        assert "10.65.7.0/26" not in _routes(fake, 4, 0)
        with pytest.raises(ValueError, match="different IP versions"):
            route_via_uplink(conn, "fd00::/64", "10.77.0.9", up)
    finally:
        conn.disconnect()


def test_dev_uplink_is_found_by_name(fake: FakeVpp) -> None:
    """A dev (or dpdk, af_xdp, rdma) uplink exists once VPP ran its startup
    configuration; the manager finds it by name and tags it."""
    conn = VppConnection(client_factory=fake.client_factory, timeout=2.0)
    conn.connect()
    try:
        cfg = parse_node_config({"uplink": {"interface": "ens2f0v0", "driver": "dev", "pci": "0000:3b:02.0"}},
                                host=HOST)
        dev = conn.call("dev_attach", device_id="pci/0000:3b:02.0", driver_name="iavf", flags=0, args="")
        made = conn.call("dev_create_port_if", dev_index=dev.dev_index, intf_name="ens2f0v0", port_id=0,
                         flags=0, args="").sw_if_index
        assert create_in_vpp(conn, cfg, _state()) == made
        assert fake.state.interfaces[made].tag == "vppagent-uplink:eth0"
        missing = parse_node_config({"uplink": {"interface": "nothere", "driver": "dpdk", "pci": "0000:01:00.0"}},
                                    host=HOST)
        with pytest.raises(Exception, match="no interface 'nothere'"):
            create_in_vpp(conn, missing, _state(), timeout=0.2)
    finally:
        conn.disconnect()


# --------------------------------------------------------------- real VPP

def _vpp_env() -> dict[str, str]:
    return {"binary": os.environ["VPP_BIN"],
            **({"pluginPath": os.environ["VPP_PLUGIN_PATH"]} if os.environ.get("VPP_PLUGIN_PATH") else {})}


class ManagerRun:
    """``vppagent vpp run`` as a process inside the node namespace."""

    def __init__(self, t: dict[str, str], workdir: Path, **vpp: Any) -> None:
        self.t = t
        self.dir = workdir
        self.run_dir = workdir / "run"
        cfg = {**_vpp_env(), "runtimeDir": str(self.run_dir), "heapSize": "256M", "buffers": 8192,
               "pollSleepUsec": 100, "netns": t["vpp"], "uplink": {"interface": t["uplink"]},
               "hostInterface": {"kind": "veth"},
               "supervise": {"restartPolicy": "never", "readyTimeout": 30, "stopTimeout": 10}}
        for key, value in vpp.items():
            cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and key in cfg else value
        self.config = workdir / "node.yaml"
        self.config.write_text(json.dumps({"vpp": cfg}))        # JSON is YAML
        self.log = workdir / "manager.log"
        self.proc: subprocess.Popen | None = None
        self.started = 0.0

    def start(self) -> "ManagerRun":
        self.started = time.time()
        argv = [sys.executable, "-m", "vppagent", "vpp", "run", "--config", str(self.config), "--log-level",
                "debug"]
        fd = open_netns(self.t["node"])
        try:
            def spawn() -> subprocess.Popen:
                with open(self.log, "ab") as out:
                    return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                            cwd=str(Path(__file__).resolve().parent.parent))
            self.proc = run_in_netns(fd, spawn)
        finally:
            os.close(fd)
        return self

    def status(self) -> dict[str, Any]:
        try:
            return json.loads((self.run_dir / "manager-status.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def diag(self) -> str:
        out = [f"status: {self.status()}", self.log.read_text()[-6000:] if self.log.exists() else ""]
        for name in ("vpp.log", "vpp.out"):
            p = self.run_dir / name
            if p.exists():
                out.append(f"--- {name}\n{p.read_text()[-3000:]}")
        return "\n".join(out)

    def wait_ready(self, restarts: int = 0, timeout: float = 40.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"manager exited with {self.proc.returncode}\n{self.diag()}")
            s = self.status()
            fresh = s.get("time", 0) >= self.started
            return s if fresh and s.get("state") == "ready" and s.get("restarts", 0) >= restarts else None
        return wait_for("the manager to be ready", ready, timeout, 0.1, self.diag)

    def stop(self, timeout: float = 40.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"manager did not stop\n{self.diag()}") from None

    def close(self) -> None:
        """Whatever happened: no manager, no VPP left."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pid in _vpp_pids(self.run_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _vpp_pids(run_dir: Path) -> list[int]:
    """VPP processes started with a config under ``run_dir``."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if str(run_dir) in (d / "cmdline").read_bytes().decode(errors="replace"):
                    out.append(int(d.name))
    return out


@contextlib.contextmanager
def manager_run(t: dict[str, str], **vpp: Any) -> Iterator[ManagerRun]:
    workdir = Path(f"/tmp/vmgr-{t['tok']}")
    workdir.mkdir()
    run = ManagerRun(t, workdir, **vpp)
    try:
        yield run
    finally:
        run.close()
        shutil.rmtree(workdir, ignore_errors=True)


def _in(ns: str, fn: Callable[[], Any]) -> Any:
    return Netns(ns).call(fn)


def exchange(server_ns: str, client_ns: str, addr: str, port: int, proto: str = "tcp",
             payload: bytes = b"x" * 5000) -> tuple[bytes, str]:
    """Send ``payload`` from ``client_ns`` to a one-shot server in
    ``server_ns``; returns (what the server answered, the client address it saw)."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    ready, box = threading.Event(), {}

    def serve() -> None:
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.settimeout(5)
            if proto == "tcp":
                s.listen(1)
                ready.set()
                c, peer = s.accept()
                with c:
                    c.settimeout(5)
                    data = b""
                    while len(data) < len(payload):
                        chunk = c.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    c.sendall(b"got %d" % len(data))
            else:
                ready.set()
                data, peer = s.recvfrom(65536)
                s.sendto(b"got %d" % len(data), peer)
            box["peer"] = peer[0]
        except Exception as e:    # handed to the test
            box["error"] = e
            ready.set()
        finally:
            s.close()

    server = threading.Thread(target=lambda: _in(server_ns, serve), daemon=True)
    server.start()
    ready.wait(5)

    def client() -> bytes:
        s = socket.socket(socket.AF_INET, kind)
        s.settimeout(5)
        with s:
            if proto == "tcp":
                s.connect((addr, port))
                s.sendall(payload)
                return s.recv(100)
            s.sendto(payload, (addr, port))
            return s.recv(100)
    try:
        answer = _in(client_ns, client)
    finally:
        server.join(10)
    if "error" in box:
        raise box["error"]
    return answer, box["peer"]


def _assert_handed_over(t: dict[str, str], before: LinkState, status: dict[str, Any]) -> None:
    node = Netns(t["node"])
    now = linux_state.record(node, t["uplink"])
    assert now.kind == "veth" and now.ifindex != before.ifindex       # the host interface, not the uplink
    assert before.differences(now) == []                                # same name, MAC, addresses, routes...
    assert linux_state.record(Netns(t["vpp"]), t["uplink"]).addresses == ()   # the uplink, parked for VPP
    assert status["uplinkSwIfIndex"] and status["hostSwIfIndex"] and status["vppPid"]


def _assert_traffic(t: dict[str, str]) -> None:
    assert exchange(t["node"], t["peer"], "10.77.0.2", 7001) == (b"got 5000", "10.77.0.1")
    assert exchange(t["peer"], t["node"], "10.77.0.1", 7002) == (b"got 5000", "10.77.0.2")
    assert exchange(t["node"], t["peer"], "10.77.0.2", 7003, "udp", b"y" * 1200) == (b"got 1200", "10.77.0.1")
    assert exchange(t["peer"], t["node"], "10.77.0.1", 7004, "udp", b"z" * 100) == (b"got 100", "10.77.0.2")


@pytest.mark.vpp
@needs_vpp
@pytest.mark.skipif(not IS_ROOT, reason="needs root")
def test_manager_hands_the_uplink_to_vpp_and_restores_linux() -> None:
    with topology() as t, manager_run(t) as run:
        before_ns = snapshot(t["node"])
        before = linux_state.record(Netns(t["node"]), t["uplink"])
        status = run.start().wait_ready()
        _assert_handed_over(t, before, status)
        _assert_traffic(t)
        vpp_pid = status["vppPid"]
        assert run.stop() == 0, run.diag()
        assert run.status()["state"] == "stopped" and run.status()["restoreProblems"] == []
        assert snapshot(t["node"]) == before_ns, run.diag()
        assert not Netns(t["vpp"]).exists()
        assert not os.path.exists(f"/proc/{vpp_pid}") and not _vpp_pids(run.run_dir)
        assert not (run.run_dir / "uplink-state.json").exists()
        assert not (run.run_dir / "api.sock").exists()


@pytest.mark.vpp
@needs_vpp
@pytest.mark.skipif(not IS_ROOT, reason="needs root")
def test_manager_restarts_a_crashed_vpp_and_restores_linux_in_between() -> None:
    with topology() as t, manager_run(t, supervise={"restartPolicy": "on-failure", "restartDelay": 0.2}) as run:
        before_ns = snapshot(t["node"])
        before = linux_state.record(Netns(t["node"]), t["uplink"])
        first = run.start().wait_ready()
        os.kill(first["vppPid"], signal.SIGKILL)
        second = run.wait_ready(restarts=1)
        assert second["vppPid"] != first["vppPid"] and second["restarts"] == 1
        _assert_handed_over(t, before, second)
        _assert_traffic(t)
        assert run.stop() == 0, run.diag()
        assert "restored as recorded" in run.log.read_text()
        assert snapshot(t["node"]) == before_ns, run.diag()
        assert not _vpp_pids(run.run_dir)


@pytest.mark.vpp
@needs_vpp
@pytest.mark.skipif(not IS_ROOT, reason="needs root")
def test_vpp_exit_without_restart_policy_restores_and_fails() -> None:
    with topology() as t, manager_run(t) as run:
        before_ns = snapshot(t["node"])
        status = run.start().wait_ready()
        os.kill(status["vppPid"], signal.SIGKILL)
        assert run.proc is not None
        rc = run.proc.wait(timeout=30)
        assert rc == 1, f"manager exit status {rc}\n{run.diag()}"
        assert run.status()["state"] == "failed"
        assert snapshot(t["node"]) == before_ns, run.diag()


@pytest.mark.vpp
@needs_vpp
@pytest.mark.skipif(not IS_ROOT, reason="needs root")
def test_a_killed_manager_is_recovered_by_the_next_one() -> None:
    with topology() as t, manager_run(t) as run:
        before_ns = snapshot(t["node"])
        status = run.start().wait_ready()
        assert run.proc is not None
        run.proc.kill()                              # SIGKILL: no teardown; VPP keeps the uplink
        run.proc.wait(timeout=10)
        assert os.path.exists(f"/proc/{status['vppPid']}")
        assert (run.run_dir / "uplink-state.json").exists()
        second = run.start().wait_ready()            # recovers first, then starts again
        assert second["vppPid"] != status["vppPid"] and not os.path.exists(f"/proc/{status['vppPid']}")
        assert "from a previous run" in run.log.read_text()
        _assert_traffic(t)
        assert run.stop() == 0, run.diag()
        assert snapshot(t["node"]) == before_ns, run.diag()


@pytest.mark.vpp
@needs_vpp
@pytest.mark.skipif(not IS_ROOT, reason="needs root")
def test_tap_host_interface() -> None:
    """tap (the default) needs /dev/vhost-net; without it the manager fails
    cleanly and Linux is restored exactly."""
    with topology() as t, manager_run(t, hostInterface={"kind": "tap"}) as run:
        before_ns = snapshot(t["node"])
        before = linux_state.record(Netns(t["node"]), t["uplink"])
        run.start()
        if os.path.exists("/dev/vhost-net"):
            status = run.wait_ready()
            now = linux_state.record(Netns(t["node"]), t["uplink"])
            assert now.kind == "tun" and before.differences(now) == []
            _assert_traffic(t)
            assert status["hostInterface"] == "tap"
            assert run.stop() == 0, run.diag()
        else:
            assert run.proc is not None
            rc = run.proc.wait(timeout=40)
            assert rc == 1, f"manager exit status {rc}\n{run.diag()}"
            status = run.status()
            assert status["state"] == "failed" and "needs /dev/vhost-net" in status["reason"], status
        assert snapshot(t["node"]) == before_ns, run.diag()
        assert not Netns(t["vpp"]).exists() and not _vpp_pids(run.run_dir)


@pytest.mark.vpp
@needs_vpp
@pytest.mark.skipif(not IS_ROOT, reason="needs root")
def test_a_failure_after_the_handover_restores_linux() -> None:
    """VPP up, uplink parked, then a step fails (here: the startup CLI
    script, which VPP runs ~2 s after start, misses a 1.5 s readiness
    deadline): the manager tears down and Linux is back as recorded."""
    with topology() as t, manager_run(t, supervise={"readyTimeout": 1.5}) as run:
        before_ns = snapshot(t["node"])
        run.start()
        assert run.proc is not None
        rc = run.proc.wait(timeout=40)
        assert rc == 1, f"manager exit status {rc}\n{run.diag()}"
        status = run.status()
        assert status["state"] == "failed" and "startup CLI script" in status["reason"], status
        assert snapshot(t["node"]) == before_ns, run.diag()
        assert not Netns(t["vpp"]).exists() and not _vpp_pids(run.run_dir)
