#!/usr/bin/env python3
"""VPP control-plane benchmark: how fast the agent programs VPP, and how fast it talks to it.

Against a real VPP when ``$VPP_BIN`` is set (plugins from ``$VPP_PLUGIN_PATH``),
otherwise against the fake VPP (``vppagent/vpp/fake.py``), which has no
dataplane and no socket: its numbers measure only the agent's own Python and
every table says FAKE. Per policy engine (``npol``, which is npol plus the ACL
plugin for ICMP, and the ``acl`` fallback) one fresh VPP runs in a network
namespace of its own, and the VPP dataplane (``podInterface: af_packet``) runs
in this process, fed by CalcGraph:

* pods/s: N pods wired one at a time as CNI ADDs arrive (veth, af_packet
  host-interface, per-pod VRFs, loopback + unnumbered, /32 route and static
  neighbour), each followed by its WorkloadEndpoint update (the namespace
  profile rendered onto the interface); pod netns are made beforehand, as a
  container runtime does, and not timed;
* policies/s: P policies (linux_control_bench's mix of Kubernetes, Calico
  and tiered global policies, with selectors that become IP sets) in one
  update batch, calculation apart; one policy added and one changed with all
  in place; all removed;
* services/s (first lane only: the policy engine plays no part): for each
  batch size S, S ClusterIP services with E backends as cnat translations,
  then --single more one at a time, then all removed;
* pod DELs/s: every pod's endpoint removed and its CNI DEL;
* where the time goes: each phase split into Linux (pyroute2), VPP API
  exchanges, state files and the rest (reconciler, rendering), VPP API time
  per pod by message, and with --profile the hottest functions;
* messages/s: ``control_ping`` (and ``ip_route_add_del``) through the agent's
  ``VppConnection``, synchronous (``call``) and pipelined (``pipeline``), beside
  a raw vpp_papi ``VPPApiClient`` loop (the baseline), vpp_papi's asyncio
  client and a raw socket with vpp_papi's codec (window 1 and 256, no reader
  thread) in the same run, with ratios to the baseline.

    sudo -E .venv/bin/python perf/vpp_bench.py [--pods 50] [--policies 200] [--services 100,500]
        [--single 5] [--endpoints 3] [--engines npol,acl] [--messages 10000] [--sync-messages 3000]
        [--repeats 3] [--skip messages,pods,services] [--poll-sleep-usec 100] [--quick] [--fake] [--profile]
        [--af-packet-ring vpp|RX_FRAME,RX_FRAMES,TX_FRAME,TX_FRAMES] [--out perf/out] [--tag NAME] [--no-plot]

Writes perf/out/vpp_control[-TAG].json, .png and -pod-add.png. A real VPP needs
root. Every VPP, netns and veth this run makes is removed at the end, also
after a failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import ipaddress
import logging
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "perf"))

import plot  # noqa: E402
from benchlib import add_output_args, md_table, write_results  # noqa: E402
from linux_control_bench import namespaces, percentile, policy, pool, service_namespaces, services, tiers  # noqa: E402

NODE = "node1"
ENGINES = ("npol", "acl")
PLUGINS = ("af_packet", "tap", "memif", "acl", "cnat", "npol", "ping")
# Everything this run creates is named vpb<TOKEN>…, so parallel runs (and other people's VPPs) never collide.
TOKEN = f"{os.getpid() % 100000:x}{secrets.token_hex(2)}"
# What VPP maps for one af_packet pod besides its rings (interface, queues), measured: ~2 MiB. The rings
# themselves come from the dataplane's afPacketRing (~14 MiB by default; ~76 MiB with VPP's own defaults,
# --af-packet-ring vpp, which the agent used before it passed sizes).
AF_PACKET_EXTRA_MIB = 2
FAKE_LABEL = "FAKE VPP (vppagent/vpp/fake.py: no real VPP, no socket; measures the agent's Python only)"


def vpp_bin() -> str:
    return os.environ.get("VPP_BIN", "")


def vpp_plugin_path() -> str:
    return os.environ.get("VPP_PLUGIN_PATH", "")


# ---------------------------------------------------------------- cleanup registry

class _Registry:
    """What this process created (VPP process groups, netns, dirs), removed at exit even when a
    ``finally`` never ran (a second Ctrl-C during cleanup, an exception in a constructor)."""

    def __init__(self) -> None:
        self.pgids: set[int] = set()
        self.netns: set[str] = set()
        self.dirs: set[str] = set()
        atexit.register(self.sweep)

    def sweep(self) -> None:
        for pgid in list(self.pgids):
            kill_group(pgid)
        netns_del(*sorted(self.netns))
        for d in list(self.dirs):
            shutil.rmtree(d, ignore_errors=True)
        self.dirs.clear()


REGISTRY = _Registry()


def kill_group(pgid: int, timeout: float = 10.0) -> None:
    """SIGTERM a process group we started, SIGKILL it if it lingers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            with contextlib.suppress(ChildProcessError):
                os.waitpid(-pgid, os.WNOHANG)
            time.sleep(0.05)
        else:
            continue
        break
    REGISTRY.pgids.discard(pgid)


def run(argv: list[str], stdin: str | None = None, timeout: float = 120, check: bool = True) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])}: exit {proc.returncode}: {(proc.stderr or proc.stdout).strip()[:500]}")
    return proc.stdout


def netns_add(*names: str) -> None:
    """Create namespaces (one ``ip -batch``), loopback up; registered for removal first."""
    if not names:
        return
    REGISTRY.netns.update(names)
    run(["ip", "-batch", "-"], "".join(f"netns add {n}\n" for n in names))
    for n in names:
        run(["ip", "-n", n, "link", "set", "lo", "up"])


def netns_del(*names: str) -> None:
    """Delete namespaces (and with them every veth that has an end inside)."""
    names = tuple(n for n in names if os.path.exists(f"/run/netns/{n}"))
    if names:
        subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"netns del {n}\n" for n in names),
                       capture_output=True, text=True, timeout=120)
    REGISTRY.netns.difference_update(names)


def host_info() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_start": os.getloadavg()}


def load_note(host: dict[str, Any]) -> str:
    return (f"{host['cpus']} CPUs shared with other work; load average {host['loadavg_start'][0]:.2f} at start, "
            f"{host.get('loadavg_end', os.getloadavg())[0]:.2f} at end")


# ---------------------------------------------------------------- a real VPP

class VppProcess:
    """``$VPP_BIN`` in a netns of its own with a private runtime dir and api-segment prefix.

    The startup.conf is written here (4k pages, no hugepages) rather than taken
    from the project's templates so the benchmark pins exactly what it measures:
    ``buffers`` sized for the pods (af_packet holds 256 per pod), a small cnat
    session table, ``poll_sleep_usec`` (None: no fixed sleep; VPP then sleeps in epoll
    while idle, as af_packet runs in interrupt mode).
    """

    def __init__(self, tag: str, *, buffers: int = 16384, poll_sleep_usec: int | None = 100,
                 main_core: int | None = None, heap: str = "1G") -> None:
        self.tag = tag
        self.buffers = buffers
        self.netns = f"vpb{TOKEN}{tag}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"vpb{TOKEN}{tag}-"))
        REGISTRY.dirs.add(str(self.dir))
        self.socket = str(self.dir / "api.sock")
        self.cli_socket = str(self.dir / "cli.sock")
        self.proc: subprocess.Popen[bytes] | None = None
        self.version = ""
        sleep = f"  poll-sleep-usec {poll_sleep_usec}\n" if poll_sleep_usec else ""
        cpu = f"cpu {{ main-core {main_core} }}\n" if main_core is not None else ""
        path = f"  path {vpp_plugin_path()}\n" if vpp_plugin_path() else ""
        (self.dir / "startup.conf").write_text(
            f"unix {{\n  nodaemon\n  nosyslog\n  runtime-dir {self.dir}\n  cli-listen {self.cli_socket}\n"
            f"  log {self.dir}/vpp.log\n{sleep}}}\n"
            f"api-segment {{ prefix vpb{TOKEN}{tag} }}\n"
            f"socksvr {{ socket-name {self.socket} }}\n"
            f"statseg {{ socket-name {self.dir}/stats.sock size 32m page-size 4k }}\n"
            f"memory {{ main-heap-size {heap} main-heap-page-size 4k }}\n"
            f"buffers {{ buffers-per-numa {buffers} page-size 4k }}\n"
            f"{cpu}"
            "cnat { session-max 65536 }\n"
            f"plugins {{\n{path}  plugin default {{ disable }}\n"
            + "".join(f"  plugin {p}_plugin.so {{ enable }}\n" for p in PLUGINS) + "}\n")

    def start(self, timeout: float = 60.0) -> None:
        from vppagent.vpp.connection import VppConnection
        netns_add(self.netns)
        with open(self.dir / "vpp.out", "ab") as out:
            self.proc = subprocess.Popen(["ip", "netns", "exec", self.netns, vpp_bin(), "-c", str(self.dir / "startup.conf")],
                                         stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        REGISTRY.pgids.add(self.proc.pid)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"VPP exited ({self.proc.returncode}): {self.log()[-2000:]}")
            if os.path.exists(self.socket):
                conn = VppConnection(self.socket, f"vpb-probe-{TOKEN}", timeout=5.0)
                try:
                    conn.connect()
                    self.version = conn.version
                    conn.disconnect()
                    return
                except Exception:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"VPP did not answer on {self.socket} within {timeout}s: {self.log()[-2000:]}")
            time.sleep(0.1)

    def log(self) -> str:
        text = ""
        for name in ("vpp.out", "vpp.log"):
            with contextlib.suppress(OSError):
                text += (self.dir / name).read_text(errors="replace")
        return text

    def cli(self, command: str) -> str:
        vppctl = str(Path(vpp_bin()).with_name("vppctl"))
        return run([vppctl, "-s", self.cli_socket, *command.split()], timeout=30)

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            kill_group(proc.pid)
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        netns_del(self.netns)
        shutil.rmtree(self.dir, ignore_errors=True)
        REGISTRY.dirs.discard(str(self.dir))


# ---------------------------------------------------------------- targets: real or fake

class NullLinux:
    """``PodLinux`` for the fake VPP: there is no dataplane, so no veth is made."""

    def __init__(self) -> None:
        self.veths: set[str] = set()

    def create_veth(self, host: str, netns: str, pod_ifname: str, ips: tuple[str, ...], mtu: int, pod_mac: str) -> None:
        self.veths.add(host)

    def delete_veth(self, host: str) -> None:
        self.veths.discard(host)

    def host_end_exists(self, host: str) -> bool:
        return host in self.veths

    def configure_l3(self, netns: str, pod_ifname: str, ips: tuple[str, ...], mtu: int) -> None:
        pass

    def delete_pod_link(self, netns: str, pod_ifname: str) -> None:
        pass

    def check(self, netns: str, pod_ifname: str, ips: tuple[str, ...], mtu: int) -> list[str]:
        return []


class Target:
    """One VPP to program: a real process (``VppProcess``) or the fake, behind one interface."""

    def __init__(self, tag: str, fake: bool, *, buffers: int = 16384, poll_sleep_usec: int | None = 100,
                 main_core: int | None = None, af_packet_ring: Any = None) -> None:
        self.fake = fake
        self.buffers = buffers
        self.af_packet_ring = af_packet_ring      # None: the dataplane's default
        self.tag = tag
        self.state_dir = Path(tempfile.mkdtemp(prefix=f"vpb{TOKEN}{tag}-state-"))
        REGISTRY.dirs.add(str(self.state_dir))
        self.vpp: VppProcess | None = None
        self.fake_vpp: Any = None
        self.pod_netns: list[str] = []
        try:
            if fake:
                from vppagent.vpp.fake import FakeVpp
                self.fake_vpp = FakeVpp()
                self.socket = f"/nonexistent/fake-{TOKEN}-{tag}.sock"
                self.version = self.fake_vpp.version
            else:
                self.vpp = VppProcess(tag, buffers=buffers, poll_sleep_usec=poll_sleep_usec, main_core=main_core)
                self.vpp.start()
                self.socket = self.vpp.socket
                self.version = self.vpp.version
        except BaseException:
            self.close()
            raise

    @property
    def label(self) -> str:
        return FAKE_LABEL if self.fake else f"VPP {self.version}"

    @property
    def client_factory(self) -> Callable[..., Any] | None:
        return self.fake_vpp.client_factory if self.fake else None

    @property
    def vpp_netns(self) -> str | None:
        return self.vpp.netns if self.vpp else None

    def linux(self) -> Any:
        if self.fake:
            return NullLinux()
        from vppagent.dataplane.vpp.podlinux import PodLinux
        return PodLinux(self.vpp_netns)

    def make_pod_netns(self, count: int) -> list[str]:
        """Pod namespaces, as a container runtime makes them before CNI ADD (not timed)."""
        names = [f"vpb{TOKEN}{self.tag}p{i}" for i in range(len(self.pod_netns), len(self.pod_netns) + count)]
        if not self.fake:
            for k in range(0, len(names), 100):
                netns_add(*names[k:k + 100])
        self.pod_netns += names
        return names

    def dataplane(self, engine: str, **extra: Any) -> Any:
        from vppagent.dataplane.vpp import VppConfig, VppDataplane
        from vppagent.dataplane.vpp.config import BufferAdmission
        if self.af_packet_ring is not None:
            extra.setdefault("af_packet_ring", self.af_packet_ring)
        cfg = VppConfig(socket=self.socket, pod_interface="af_packet", policy=engine, vpp_netns=self.vpp_netns,
                        state_dir=str(self.state_dir / engine), refresh_interval=None, node_name=NODE,
                        client_name=f"vpb-{TOKEN}-{engine}", timeout=30.0,
                        buffer_admission=BufferAdmission(buffers=self.buffers), **extra)
        return VppDataplane(cfg, client_factory=self.client_factory, linux=self.linux())

    def connection(self, name: str, **kw: Any) -> Any:
        from vppagent.vpp.connection import VppConnection
        return VppConnection(self.socket, f"vpb-{TOKEN}-{name}", self.client_factory, timeout=30.0, **kw)

    def close(self) -> None:
        try:
            if self.fake_vpp is not None:
                self.fake_vpp.close()
            if self.vpp is not None:
                self.vpp.close()
        finally:
            for k in range(0, len(self.pod_netns), 200):
                netns_del(*self.pod_netns[k:k + 200])
            self.pod_netns = []
            shutil.rmtree(self.state_dir, ignore_errors=True)
            REGISTRY.dirs.discard(str(self.state_dir))


def buffers_for(pods: int) -> int:
    """VPP buffers for ``pods`` af_packet pods (256 each) plus the agent's 2,048 reserve, rounded up."""
    from vppagent.dataplane.vpp.buffers import AF_PACKET_RX_BATCH
    need = pods * AF_PACKET_RX_BATCH + 2048 + 4096
    return max(16384, 1 << (need - 1).bit_length())


# ---------------------------------------------------------------- where the time goes

class TimeSplit:
    """Wraps the dataplane's Linux, VPP-exchange and state-store entry points with timers, so a
    phase's wall time splits into Linux (pyroute2), VPP API (packing, socket, VPP, decoding),
    store (state files) and the rest (reconciler, rendering, calculation glue)."""

    BUCKETS = ("linux", "vpp_api", "store")

    def __init__(self, dp: Any) -> None:
        self.dp = dp
        self.acc = dict.fromkeys(self.BUCKETS, 0.0)
        self._depth = 0
        linux = dp.pods.linux
        for name in ("create_veth", "delete_veth", "host_end_exists", "configure_l3", "delete_pod_link", "check"):
            self._wrap(linux, name, "linux")
        self.by_message: dict[str, list[float]] = {}        # name -> [seconds, count]
        self._wrap(dp.conn, "_exchange", "vpp_api", self._attribute)
        for store in {id(dp.store): dp.store, id(dp.pods.store): dp.pods.store}.values():
            for name in ("save", "save_pod", "remove_pod"):
                if hasattr(store, name):
                    self._wrap(store, name, "store")

    def _attribute(self, args: tuple[Any, ...], seconds: float) -> None:
        """An exchange's time, shared equally by the messages it carried (pipelines mix them)."""
        calls = args[0] if args else []
        for msg_name, _ in calls:
            slot = self.by_message.setdefault(msg_name, [0.0, 0])
            slot[0] += seconds / len(calls)
            slot[1] += 1

    def _wrap(self, obj: Any, name: str, bucket: str,
              attribute: Callable[[tuple[Any, ...], float], None] | None = None) -> None:
        orig = getattr(obj, name)

        def timed(*a: Any, **kw: Any) -> Any:
            if self._depth:               # nested (a store save inside an exchange): count once
                return orig(*a, **kw)
            self._depth += 1
            t0 = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                dt = time.perf_counter() - t0
                self.acc[bucket] += dt
                if attribute is not None:
                    attribute(a, dt)
                self._depth -= 1

        setattr(obj, name, timed)

    def snapshot(self) -> dict[str, float]:
        stats = self.dp.conn.stats
        return {**self.acc, "messages": stats["messages"], "round_trips": stats["round_trips"],
                "store_writes": getattr(self.dp.store, "writes", 0)}

    @contextlib.contextmanager
    def phase(self, out: dict[str, Any], calc_s: float = 0.0) -> Iterator[None]:
        """Fill ``out`` with wall, bucket seconds, messages and round trips of the block."""
        before = self.snapshot()
        msgs_before = {k: list(v) for k, v in self.by_message.items()}
        t0 = time.perf_counter()
        yield
        wall = time.perf_counter() - t0
        after = self.snapshot()
        d = {k: after[k] - before[k] for k in after}
        by = {k: (v[0] - msgs_before.get(k, [0.0, 0])[0], v[1] - msgs_before.get(k, [0.0, 0])[1])
              for k, v in self.by_message.items()}
        out["by_message"] = {k: {"s": t, "n": c} for k, (t, c) in sorted(by.items(), key=lambda kv: -kv[1][0]) if c}
        out.update(wall_s=wall, linux_s=d["linux"], vpp_api_s=d["vpp_api"], store_s=d["store"],
                   other_s=max(0.0, wall - d["linux"] - d["vpp_api"] - d["store"]),
                   messages=int(d["messages"]), round_trips=int(d["round_trips"]),
                   store_writes=int(d["store_writes"]))


# ---------------------------------------------------------------- one engine: pods, policies, services

def pod_object(i: int, n_ns: int, app: str | None = None) -> dict:
    """Pod i (10.65.x.y), app label out of 25, a named port: what the policies select on."""
    from linux_control_bench import pod
    return pod(i, n_ns, app)


def pod_wiring(obj: dict, netns: str) -> Any:
    from vppagent.dataplane.base import WorkloadWiring
    from vppagent.manifests.k8s import workload_interface_name
    md = obj["metadata"]
    return WorkloadWiring(container_id=f"vpb{TOKEN}-{md['namespace']}-{md['name']}", netns=netns,
                          interface_name="eth0", host_interface_name=workload_interface_name(md["namespace"], md["name"]),
                          ips=tuple(ipaddress.ip_interface(f"{p['ip']}/32") for p in obj["status"]["podIPs"]),
                          mtu=1500, namespace=md["namespace"], pod=md["name"])


def check_report(dp: Any, what: str) -> None:
    """A phase must leave nothing failed or pending: a benchmark of errors measures nothing."""
    st = dp.status()
    if st.failed or st.pending or not st.ready:
        raise RuntimeError(f"{what}: dataplane not clean (ready={st.ready}, failed={st.failed}, "
                           f"pending={st.pending}, last error: {st.last_error})")


def rules_in(objs: list[dict]) -> int:
    n = 0
    for o in objs:
        spec = o.get("spec", {})
        n += len(spec.get("ingress", []) or []) + len(spec.get("egress", []) or [])
    return n


class Lane:
    """One dataplane on one target, fed by a CalcGraph; each ``apply_*`` is one measured phase."""

    def __init__(self, target: Target, engine: str, a: argparse.Namespace, profile: bool = False) -> None:
        from vppagent.calc.graph import CalcGraph
        from vppagent.manifests.loader import load_objects
        from vppagent.model.updates import InSync
        self.target, self.engine, self.a = target, engine, a
        self.profile = profile
        self.dp = target.dataplane(engine)
        self.split = TimeSplit(self.dp)
        t0 = time.perf_counter()
        self.dp.start()
        if not self.dp._connected:
            raise RuntimeError(f"dataplane did not connect to {target.socket}: {self.dp.status().last_error}")
        self.graph = CalcGraph(NODE)
        self.graph.apply_all(load_objects(self.base_objects(), "base"))
        self.dp.apply([*self.graph.flush(), InSync()])
        self.start_s = time.perf_counter() - t0
        check_report(self.dp, f"{engine}: start")

    def base_objects(self) -> list[dict]:
        a = self.a
        return namespaces(a.namespaces) + service_namespaces(max(a.services, default=0), a.namespaces) + tiers() + [pool()]

    @contextlib.contextmanager
    def phase(self, out: dict[str, Any], what: str) -> Iterator[None]:
        """A measured block (time split, optional cProfile); the dataplane must end clean."""
        prof = None
        if self.profile:
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        with self.split.phase(out):
            yield
        if prof is not None:
            prof.disable()
            out["profile"] = top_functions(prof)
        check_report(self.dp, f"{self.engine}: {what}")

    def feed(self, objs: list[dict], remove: bool = False) -> tuple[list[Any], float]:
        """Objects into the calculation; returns (updates, calculation seconds)."""
        from vppagent.manifests.loader import load_objects
        t = time.perf_counter()
        for r in load_objects(objs, "bench"):
            if remove:
                self.graph.remove(r)
            else:
                self.graph.update(r)
        updates = self.graph.flush()
        return updates, time.perf_counter() - t

    def close(self) -> None:
        self.dp.stop()


def top_functions(prof: Any, n: int = 10) -> list[dict[str, Any]]:
    """The functions with the most self time in a phase (for --profile): where the Python goes."""
    import pstats
    st = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_, ncalls, tottime, cum, _) in st.stats.items():      # type: ignore[attr-defined]
        where = file.split("/vppagent/", 1)[1] if "/vppagent/" in file else Path(file).name
        rows.append({"function": f"{where}:{line}({func})", "calls": ncalls, "self_s": tottime, "cum_s": cum})
    rows.sort(key=lambda r: -r["self_s"])
    return rows[:n]


def vpp_rss_mib(target: Target) -> float | None:
    """Resident memory of the VPP process (af_packet rings are mapped into it)."""
    if target.vpp is None or target.vpp.proc is None:
        return None
    pids = [target.vpp.proc.pid] + [int(p) for p in run(["pgrep", "-g", str(target.vpp.proc.pid)], check=False).split()]
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip().startswith("vpp"):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            continue
    return None


def run_pods_and_policies(lane: Lane, log: Callable[[str], None]) -> dict[str, Any]:
    """Pods one at a time (CNI ADD, then its endpoint update), policies in one batch, then both removed."""
    a, dp, target, engine = lane.a, lane.dp, lane.target, lane.engine
    res: dict[str, Any] = {"engine": engine, "vpp_engine": dp.engine, "start_s": lane.start_s}
    objs = [pod_object(i, a.namespaces) for i in range(a.pods)]
    netns = target.make_pod_netns(a.pods)
    wirings = [pod_wiring(o, ns) for o, ns in zip(objs, netns)]
    add_ms, wep_ms, afp_ms = [], [], []
    pods: dict[str, Any] = {"count": a.pods, "vpp_rss_before_mib": vpp_rss_mib(target)}
    afp = lane.split.by_message
    with lane.phase(pods, "pods"):
        for o, w in zip(objs, wirings):
            before = afp.get("af_packet_create_v3", [0.0])[0]
            t = time.perf_counter()
            dp.wire_workload(w)
            add_ms.append((time.perf_counter() - t) * 1e3)
            afp_ms.append((afp.get("af_packet_create_v3", [0.0])[0] - before) * 1e3)
            t = time.perf_counter()
            dp.apply(lane.feed([o])[0])
            wep_ms.append((time.perf_counter() - t) * 1e3)
    pods["vpp_rss_after_mib"] = vpp_rss_mib(target)
    k = max(1, min(10, a.pods // 4))
    pods.update(per_s=a.pods / pods["wall_s"], add_ms=add_ms, af_packet_create_ms=afp_ms,
                add_p50_ms=statistics.median(add_ms),
                add_p90_ms=percentile(add_ms, 0.9), wep_p50_ms=statistics.median(wep_ms),
                first_add_ms=statistics.median(add_ms[:k]), last_add_ms=statistics.median(add_ms[-k:]), ends=k)
    res["pods"] = pods
    rss = ""
    if pods["vpp_rss_after_mib"] is not None and pods["vpp_rss_before_mib"] is not None:
        rss = f", VPP RSS +{(pods['vpp_rss_after_mib'] - pods['vpp_rss_before_mib']) / a.pods:.0f} MiB per pod"
    log(f"{engine}: {a.pods} pods in {pods['wall_s']:.2f} s ({pods['per_s']:.1f}/s; ADD p50 "
        f"{pods['add_p50_ms']:.1f} ms, {pods['messages'] / a.pods:.1f} msgs and "
        f"{pods['round_trips'] / a.pods:.1f} round trips per pod{rss})")

    pol_objs = [policy(i, a.namespaces) for i in range(a.policies)]
    updates, calc = lane.feed(pol_objs)
    pol: dict[str, Any] = {"count": a.policies, "rules": rules_in(pol_objs), "updates": len(updates), "calc_s": calc}
    with lane.phase(pol, "policies"):
        dp.apply(updates)
    pol["per_s"] = a.policies / pol["wall_s"]
    pol["rules_per_s"] = pol["rules"] / pol["wall_s"]
    res["policies"] = pol
    log(f"{engine}: {a.policies} policies ({pol['rules']} rules, {len(updates)} updates) in "
        f"{pol['wall_s']:.2f} s + calc {calc:.2f} s ({pol['per_s']:.1f}/s; {pol['messages']} msgs)")

    # one more policy, and one changed, with everything in place: the latency a user sees
    one: dict[str, Any] = {}
    extra = policy(a.policies, a.namespaces)
    updates, calc = lane.feed([extra])
    with lane.phase(one, "one policy added"):
        dp.apply(updates)
    changed = policy(a.policies, a.namespaces, variant=1)
    updates, calc2 = lane.feed([changed])
    two: dict[str, Any] = {}
    with lane.phase(two, "one policy changed"):
        dp.apply(updates)
    res["one_policy"] = {"add_ms": one["wall_s"] * 1e3, "change_ms": two["wall_s"] * 1e3,
                         "calc_ms": (calc + calc2) / 2 * 1e3}
    pol_objs.append(changed)

    gone: dict[str, Any] = {"count": len(pol_objs)}
    updates, _ = lane.feed(pol_objs, remove=True)
    with lane.phase(gone, "removing policies"):
        dp.apply(updates)
    gone["per_s"] = gone["count"] / gone["wall_s"]
    dels: dict[str, Any] = {"count": a.pods}
    with lane.phase(dels, "pod DELs"):
        for o, w in zip(objs, wirings):
            dp.apply(lane.feed([o], remove=True)[0])
            dp.unwire_workload(w)
    dels["per_s"] = a.pods / dels["wall_s"]
    res["removals"] = {"policies": gone, "pods": dels}
    log(f"{engine}: removed {len(pol_objs)} policies in {gone['wall_s']:.2f} s, {a.pods} pods in {dels['wall_s']:.2f} s")
    return res


def run_services(lane: Lane, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """For each size S: S services in one batch, then ``--single`` more one at a time (the
    latency of one Service change with S in place), then all removed in one batch."""
    a, dp = lane.a, lane.dp
    out = []
    for n in a.services:
        objs = [o for s in range(n) for o in services(s, a.endpoints)]
        updates, calc = lane.feed(objs)
        add: dict[str, Any] = {"count": n, "endpoints": a.endpoints, "updates": len(updates), "calc_s": calc}
        with lane.phase(add, f"{n} services"):
            dp.apply(updates)
        add["per_s"] = n / add["wall_s"]
        singles = []
        for s in range(n, n + a.single):
            one: dict[str, Any] = {}
            updates, _ = lane.feed(services(s, a.endpoints))
            with lane.phase(one, "one service"):
                dp.apply(updates)
            singles.append(one["wall_s"] * 1e3)
            objs += services(s, a.endpoints)
        gone: dict[str, Any] = {"count": n + a.single}
        updates, _ = lane.feed(objs, remove=True)
        with lane.phase(gone, f"removing {n} services"):
            dp.apply(updates)
        gone["per_s"] = gone["count"] / gone["wall_s"]
        r = {"count": n, "add": add, "one_ms": statistics.median(singles) if singles else None,
             "one_ms_runs": singles, "remove": gone}
        out.append(r)
        log(f"services: {n} x {a.endpoints} in {add['wall_s']:.2f} s ({add['per_s']:.1f}/s, {add['messages']} msgs in "
            f"{add['round_trips']} round trips); one more: {r['one_ms'] or 0:.1f} ms; removed in {gone['wall_s']:.2f} s")
    return out


# ---------------------------------------------------------------- messages/s

def _rate(n: int, fn: Callable[[], Any], repeats: int) -> dict[str, Any]:
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(n / (time.perf_counter() - t0))
    return {"n": n, "per_s": statistics.median(runs), "runs": runs}


def raw_papi_sync(target: Target, n: int, repeats: int) -> dict[str, Any]:
    """vpp_papi's own synchronous call loop (``api.control_ping()``), no agent code."""
    if target.fake:
        client = target.fake_vpp.client_factory(server_address=target.socket, bootstrapapi=True)
    else:
        from vpp_papi import VPPApiClient
        client = VPPApiClient(server_address=target.socket, bootstrapapi=True)
    client.connect(f"vpb-{TOKEN}-raw")
    try:
        ping = client.api.control_ping
        ping()

        def loop() -> None:
            for _ in range(n):
                ping()
        return _rate(n, loop, repeats)
    finally:
        client.disconnect()


def raw_papi_async(target: Target, n: int, repeats: int) -> dict[str, Any] | None:
    """vpp_papi's asyncio client with all ``n`` requests in flight (``asyncio.gather``)."""
    if target.fake:
        return None
    from vpp_papi.vpp_papi_async import VPPApiClient as AsyncClient

    async def main() -> dict[str, Any]:
        client = AsyncClient(server_address=target.socket)
        if await client.connect(f"vpb-{TOKEN}-async", asyncio.Queue()) != 0:
            raise RuntimeError(f"vpp_papi async client cannot connect to {target.socket}")
        try:
            await client.api.control_ping()
            runs = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                replies = await asyncio.gather(*[client.api.control_ping() for _ in range(n)])
                runs.append(n / (time.perf_counter() - t0))
                if len(replies) != n or any(r.retval for r in replies):
                    raise RuntimeError("vpp_papi async: missing or failed replies")
            return {"n": n, "per_s": statistics.median(runs), "runs": runs}
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 10)
            for task in (getattr(client, "socket_task", None), getattr(client, "queue_task", None)):
                if task is not None and not task.done():
                    task.cancel()

    return asyncio.run(main())


def raw_socket_pipelined(target: Target, n: int, repeats: int, window: int = 256) -> dict[str, Any] | None:
    """The ceiling for a Python client using vpp_papi's codec: a socket of its own (no vpp_papi
    reader thread), ``window`` requests per ``sendall``, replies read with large ``recv`` calls
    and decoded with vpp_papi's message objects. Same packing, same window as the agent's
    ``pipeline``; only the read path differs."""
    if target.fake:
        return None
    import socket
    import struct
    from vpp_papi import VPPApiClient
    frame = struct.Struct(">QII")
    papi = VPPApiClient(server_address=target.socket, bootstrapapi=True)     # only for its message objects
    papi.connect(f"vpb-{TOKEN}-defs")
    msgs = papi.messages
    papi.disconnect()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(target.socket)
    buf = bytearray()

    def send(body: bytes) -> None:
        sock.sendall(frame.pack(0, len(body), 0) + body)

    def read_one() -> bytes:
        while True:
            if len(buf) >= 16:
                length = frame.unpack_from(buf)[1]
                if len(buf) >= 16 + length:
                    body = bytes(buf[16:16 + length])
                    del buf[:16 + length]
                    return body
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise RuntimeError("VPP closed the API socket")
            buf.extend(chunk)

    try:
        send(msgs["sockclnt_create"].pack({"_vl_msg_id": 15, "name": f"vpb-{TOKEN}-sock", "context": 124}))
        created, _ = msgs["sockclnt_create_reply"].unpack(read_one())
        table = {m.name: m.index for m in created.message_table}
        ping, reply = msgs["control_ping"], msgs["control_ping_reply"]
        ping_id = table[f"control_ping_{ping.crc[2:]}"]
        body = ping.pack({"_vl_msg_id": ping_id, "client_index": created.index, "context": 7})
        wire = frame.pack(0, len(body), 0) + body

        def pipelined() -> None:
            sent = got = 0
            while got < n:
                burst = min(window - (sent - got), n - sent)
                if burst > 0:
                    sock.sendall(wire * burst)
                    sent += burst
                low = (window // 2 if window > 1 else 0) if sent < n else 0
                while sent - got > low:
                    r, _ = reply.unpack(read_one())
                    if r.retval:
                        raise RuntimeError(f"control_ping retval {r.retval}")
                    got += 1
        return _rate(n, pipelined, repeats)
    finally:
        with contextlib.suppress(Exception):
            delete = msgs["sockclnt_delete"]
            send(delete.pack({"_vl_msg_id": table[f"sockclnt_delete_{delete.crc[2:]}"],  # type: ignore[possibly-undefined]
                              "client_index": created.index, "context": 8, "index": created.index}))  # type: ignore[possibly-undefined]
            read_one()
        sock.close()


def agent_messages(target: Target, n_sync: int, n_pipe: int, repeats: int) -> dict[str, Any]:
    """The agent's ``VppConnection``: ``call`` in a loop and ``pipeline`` (window 256), plus the
    pipelined rate of a message with real work in VPP (/32 routes added and deleted)."""
    conn = target.connection("msgs")
    conn.connect()
    try:
        out: dict[str, Any] = {}
        out["agent_sync"] = _rate(n_sync, lambda: [conn.call("control_ping") for _ in range(n_sync)], repeats)
        pings = [("control_ping", {})] * n_pipe
        out["agent_pipelined"] = _rate(n_pipe, lambda: conn.pipeline(pings), repeats)

        def routes(add: bool) -> list[tuple[str, dict[str, Any]]]:
            base = ipaddress.ip_address("10.250.0.0")
            return [("ip_route_add_del", {"is_add": add, "is_multipath": False, "route": {
                "table_id": 0, "prefix": f"{base + i}/32",
                "paths": [{"sw_if_index": 0xFFFFFFFF, "proto": 0, "type": 2}]}}) for i in range(n_pipe // 2)]
        adds, dels = routes(True), routes(False)
        out["agent_pipelined_routes"] = _rate(2 * len(adds), lambda: (conn.pipeline(adds), conn.pipeline(dels)), repeats)
        out["agent_sync_routes"] = _rate(2 * min(len(adds), n_sync // 2), lambda: (
            [conn.call(c[0], **c[1]) for c in adds[:n_sync // 2]], [conn.call(c[0], **c[1]) for c in dels[:n_sync // 2]]),
            repeats)
        return out
    finally:
        conn.disconnect()


def run_messages(target: Target, a: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    res: dict[str, Any] = {"target": target.label}
    res["raw_sync"] = raw_papi_sync(target, a.sync_messages, a.repeats)
    log(f"raw vpp_papi sync: {res['raw_sync']['per_s']:,.0f} msgs/s")
    res["raw_async"] = raw_papi_async(target, a.messages, a.repeats)
    if res["raw_async"]:
        log(f"raw vpp_papi asyncio: {res['raw_async']['per_s']:,.0f} msgs/s")
    res["raw_socket_sync"] = raw_socket_pipelined(target, a.sync_messages, a.repeats, window=1)
    res["raw_socket"] = raw_socket_pipelined(target, a.messages, a.repeats)
    if res["raw_socket"] and res["raw_socket_sync"]:
        log(f"raw socket: synchronous {res['raw_socket_sync']['per_s']:,.0f} msgs/s, "
            f"pipelined {res['raw_socket']['per_s']:,.0f} msgs/s")
    res.update(agent_messages(target, a.sync_messages, a.messages, a.repeats))
    log(f"agent sync: {res['agent_sync']['per_s']:,.0f} msgs/s, pipelined: "
        f"{res['agent_pipelined']['per_s']:,.0f} msgs/s")
    return res


# ---------------------------------------------------------------- output

def _ms(s: float, n: int) -> str:
    return f"{s / n * 1e3:.2f}" if n else "-"


def print_tables(res: dict[str, Any]) -> None:
    engines = res["engines"]
    print(f"\n## VPP control plane: {res['target']}\n")
    rows: list[list[str]] = []

    def row(label: str, get: Callable[[dict[str, Any]], str]) -> None:
        rows.append([label, *[get(engines[e]) for e in engines]])

    if engines:
        p0 = next(iter(engines.values()))
        row("policy engine in VPP", lambda r: r["vpp_engine"])
        row("start + in-sync (empty)", lambda r: f"{r['start_s']:.2f} s")
        row(f"pods/s (CNI ADD + endpoint update, {p0['pods']['count']} pods)", lambda r: f"{r['pods']['per_s']:.1f}")
        row("  ADD p50 / p90", lambda r: f"{r['pods']['add_p50_ms']:.0f} / {r['pods']['add_p90_ms']:.0f} ms")
        row(f"  ADD p50 of the first / last {p0['pods']['ends']}",
            lambda r: f"{r['pods']['first_add_ms']:.0f} / {r['pods']['last_add_ms']:.0f} ms")
        row(f"  af_packet_create_v3 p50 of the first / last {p0['pods']['ends']}",
            lambda r: "{:.0f} / {:.0f} ms".format(statistics.median(r["pods"]["af_packet_create_ms"][:r["pods"]["ends"]]),
                                                 statistics.median(r["pods"]["af_packet_create_ms"][-r["pods"]["ends"]:])))
        row("  endpoint update p50", lambda r: f"{r['pods']['wep_p50_ms']:.1f} ms")
        row("  VPP messages / round trips per pod",
            lambda r: f"{r['pods']['messages'] / r['pods']['count']:.1f} / {r['pods']['round_trips'] / r['pods']['count']:.1f}")
        row("  state files written per pod", lambda r: f"{r['pods'].get('store_writes', 0) / r['pods']['count']:.1f}")
        if p0["pods"].get("vpp_rss_after_mib") is not None:
            row("  VPP RSS per pod", lambda r: f"{(r['pods']['vpp_rss_after_mib'] - r['pods']['vpp_rss_before_mib']) / r['pods']['count']:.1f} MiB")
        pol = p0["policies"]
        row(f"policies/s ({pol['count']} policies, {pol['rules']} rules, one batch)", lambda r: f"{r['policies']['per_s']:.1f}")
        row("  dataplane / calculation", lambda r: f"{r['policies']['wall_s']:.2f} / {r['policies']['calc_s']:.2f} s")
        row("  VPP messages / round trips", lambda r: f"{r['policies']['messages']:,} / {r['policies']['round_trips']:,}")
        row("one policy added / changed (dataplane)",
            lambda r: f"{r['one_policy']['add_ms']:.1f} / {r['one_policy']['change_ms']:.1f} ms")
        row("policies removed/s (one batch)", lambda r: f"{r['removals']['policies']['per_s']:.1f}")
        row("pods removed/s (endpoint gone + CNI DEL)", lambda r: f"{r['removals']['pods']['per_s']:.1f}")
        print(md_table(["", *engines], rows))

    svc = res.get("services")
    if svc:
        print(f"\nServices (ClusterIP, {svc['endpoints']} backends each, as cnat translations; engine {svc['engine']}, "
              "the policy engine plays no part):\n")
        rows = []
        for r in svc["sizes"]:
            add, gone = r["add"], r["remove"]
            rows.append([f"{r['count']:,}", f"{add['per_s']:.1f}", f"{add['wall_s']:.2f} s", f"{add['calc_s']:.2f} s",
                         f"{add['messages']:,} / {add['round_trips']}",
                         f"{add['vpp_api_s'] / add['wall_s'] * 100:.0f} %",
                         f"{r['one_ms']:.1f} ms" if r["one_ms"] is not None else "-", f"{gone['per_s']:.1f}"])
        print(md_table(["services", "added/s", "dataplane", "calculation", "VPP msgs / round trips",
                        "share in VPP API", "one more service", "removed/s"], rows))

    print("\nWhere the time goes, ms per object: Linux netlink / VPP API exchanges / state files / rest (Python):\n")
    rows = []

    def split(r: dict[str, Any], n: int) -> str:
        return " / ".join(_ms(r[k], n) for k in ("linux_s", "vpp_api_s", "store_s", "other_s"))

    for e, r in engines.items():
        rows.append([f"pod ADD + endpoint ({e})", split(r["pods"], r["pods"]["count"])])
        rows.append([f"pod DEL ({e})", split(r["removals"]["pods"], r["removals"]["pods"]["count"])])
        rows.append([f"policy ({e}, in a batch of {r['policies']['count']})", split(r["policies"], r["policies"]["count"])])
    for r in (svc or {}).get("sizes", []):
        rows.append([f"service (batch of {r['count']})", split(r["add"], r["count"])])
    print(md_table(["object", "Linux / VPP API / files / rest"], rows))

    for e, r in engines.items():
        p = r["pods"]
        top = list(p["by_message"].items())[:6]
        if top:
            print(f"\nVPP API time per pod ADD by message ({e}; a pipeline's time is shared by its messages):\n")
            print(md_table(["message", "ms per pod", "calls per pod", "ms per call"],
                           [[k, f"{v['s'] / p['count'] * 1e3:.2f}", f"{v['n'] / p['count']:.1f}",
                             f"{v['s'] / v['n'] * 1e3:.2f}"] for k, v in top]))

    m = res.get("messages")
    if m:
        print(f"\n## Messages/s over the API socket: {m['target']}\n")
        base = m["raw_sync"]["per_s"]
        rows = []
        for key, label in (("raw_sync", "raw vpp_papi VPPApiClient, synchronous loop (baseline)"),
                           ("raw_async", "raw vpp_papi asyncio client, all in flight"),
                           ("raw_socket_sync", "raw socket + vpp_papi codec, synchronous"),
                           ("raw_socket", "raw socket + vpp_papi codec, window 256"),
                           ("agent_sync", "agent VppConnection.call, synchronous"),
                           ("agent_pipelined", "agent VppConnection.pipeline (window 256)"),
                           ("agent_sync_routes", "agent call, ip_route_add_del (/32 add+del)"),
                           ("agent_pipelined_routes", "agent pipeline, ip_route_add_del (/32 add+del)")):
            r = m.get(key)
            if r is None:
                rows.append([label, "n/a", "-", "-"])
                continue
            msg = "control_ping" if "routes" not in key else "ip_route_add_del"
            rows.append([label, f"{r['per_s']:,.0f}", f"{r['per_s'] / base:.2f}", f"{r['n']:,} x {msg}"])
        print(md_table(["client", "msgs/s", "vs raw sync", "messages per run"], rows))

    profiled = [(f"{e} {ph}", r[ph]) for e, r in engines.items() for ph in ("pods", "policies") if "profile" in r[ph]]
    profiled += [(f"services {r['count']}", r["add"]) for r in (svc or {}).get("sizes", []) if "profile" in r["add"]]
    for name, ph in profiled:
        print(f"\nProfile, {name} (functions with the most self time):\n")
        print(md_table(["function", "calls", "self", "cumulative"],
                       [[f["function"], f"{f['calls']:,}", f"{f['self_s']:.2f} s", f"{f['cum_s']:.2f} s"]
                        for f in ph["profile"]]))
    for note in res["notes"]:
        print(f"note: {note}")


def plot_results(res: dict[str, Any], stem: str, out: str) -> list[Path]:
    engines = res["engines"]
    names = list(engines)
    panels: list[dict[str, Any]] = []
    written = []
    if engines:
        panels.append({
            "title": "pods and policies (objects/s)", "ylabel": "per second", "log": True,
            "groups": ["pod ADDs", "pod DELs", "policies", "policies removed"],
            "series": {e: [engines[e]["pods"]["per_s"], engines[e]["removals"]["pods"]["per_s"],
                           engines[e]["policies"]["per_s"], engines[e]["removals"]["policies"]["per_s"]] for e in names}})
        panels.append({
            "title": "one pod ADD + endpoint: where the time goes", "ylabel": "ms per pod",
            "groups": ["Linux", "VPP API", "state files", "Python rest"],
            "series": {e: [engines[e]["pods"][k] / engines[e]["pods"]["count"] * 1e3
                           for k in ("linux_s", "vpp_api_s", "store_s", "other_s")] for e in names}})
    svc = res.get("services")
    if svc:
        panels.append({"title": "services (objects/s) by batch size", "ylabel": "per second", "log": True,
                       "groups": [f"{r['count']:,}" for r in svc["sizes"]],
                       "series": {"added/s": [r["add"]["per_s"] for r in svc["sizes"]],
                                  "removed/s": [r["remove"]["per_s"] for r in svc["sizes"]]}})
    m = res.get("messages")
    if m:
        keys = [("raw_sync", "raw sync"), ("raw_async", "raw asyncio"), ("raw_socket", "raw socket 256"),
                ("agent_sync", "agent sync"), ("agent_pipelined", "agent pipelined")]
        panels.append({"title": "control_ping messages/s", "ylabel": "messages/s", "log": True, "rotation": 20,
                       "groups": [label for _, label in keys],
                       "series": {"msgs/s": [m[k]["per_s"] if m.get(k) else None for k, _ in keys]}})
    if panels:
        path = plot.bar_panels(plot.out_path(f"{stem}.png", out), f"VPP control plane: {res['target']}", panels,
                               note="; ".join(res["notes"])[:220])
        if path:
            written.append(path)
    if engines:
        n = max(len(engines[e]["pods"]["add_ms"]) for e in names)
        series: dict[str, list[float | None]] = {}
        for e in names:
            series[f"{e}: CNI ADD"] = list(engines[e]["pods"]["add_ms"])
            if any(engines[e]["pods"]["af_packet_create_ms"]):
                series[f"{e}: of which af_packet_create_v3"] = list(engines[e]["pods"]["af_packet_create_ms"])
        path = plot.line_chart(plot.out_path(f"{stem}-pod-add.png", out), f"CNI ADD latency as pods accumulate: {res['target']}"[:90],
                               list(range(1, n + 1)), series,
                               xlabel="pod number (wired one after another)", ylabel="ADD latency (ms)",
                               note="; ".join(res["notes"])[:200])
        if path:
            written.append(path)
    return written


# ---------------------------------------------------------------- main

def quick(a: argparse.Namespace) -> None:
    a.pods, a.policies, a.namespaces, a.single = min(a.pods, 6), min(a.policies, 10), min(a.namespaces, 3), min(a.single, 2)
    a.services = [min(n, 10) for n in a.services[:1]]
    a.messages, a.sync_messages, a.repeats = min(a.messages, 1000), min(a.sync_messages, 200), 1


def parse_ring(text: str) -> Any:
    """``--af-packet-ring``: "" (the dataplane's default), "vpp" (VPP's own sizes, as the agent
    passed none before) or "RX_FRAME,RX_FRAMES_PER_BLOCK,TX_FRAME,TX_FRAMES_PER_BLOCK"."""
    from vppagent.dataplane.vpp.config import AfPacketRing
    if not text:
        return AfPacketRing()
    if text == "vpp":
        return AfPacketRing(0, 0, 0, 0)
    ring = AfPacketRing(*(int(x) for x in text.split(",")))
    problems = ring.problems(1500)
    if problems:
        raise ValueError("; ".join(problems))
    return ring


def ring_mib(ring: Any) -> float:
    return ring.ring_bytes() / (1 << 20) + AF_PACKET_EXTRA_MIB


def memory_guard(pods: int, fake: bool, ring: Any) -> str | None:
    """Refuse a pod count whose af_packet rings would not fit in this machine's free memory."""
    if fake:
        return None
    per_pod = ring_mib(ring)
    need = pods * per_pod
    try:
        avail = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                         if line.startswith("MemAvailable:"))) / 1024
    except (OSError, StopIteration):
        return None
    if need > 0.6 * avail:
        return (f"{pods} af_packet pods need about {need:,.0f} MiB of VPP memory for their rings "
                f"({per_pod:.0f} MiB each with --af-packet-ring), more than 60 % of the "
                f"{avail:,.0f} MiB available; use fewer --pods or smaller rings")
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=50, help="pods per engine (a real VPP maps ~16 MiB per pod, "
                    "~78 MiB with --af-packet-ring vpp)")
    ap.add_argument("--policies", type=int, default=200)
    ap.add_argument("--services", default="100,500", help="comma-separated batch sizes")
    ap.add_argument("--single", type=int, default=5, help="single services added one at a time after each batch")
    ap.add_argument("--endpoints", type=int, default=3, help="backends per service")
    ap.add_argument("--namespaces", type=int, default=10)
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"of {', '.join(ENGINES)}")
    ap.add_argument("--messages", type=int, default=10000, help="pipelined control_pings (and routes) per run")
    ap.add_argument("--sync-messages", type=int, default=3000, help="synchronous control_pings (and routes) per run")
    ap.add_argument("--repeats", type=int, default=3, help="runs per message rate (median)")
    ap.add_argument("--skip", default="", help="comma-separated parts to leave out: messages, pods, services")
    ap.add_argument("--quick", action="store_true", help="a tiny scale, seconds (the smoke test)")
    ap.add_argument("--fake", action="store_true", help="use the fake VPP even when $VPP_BIN is set")
    ap.add_argument("--af-packet-ring", default="",
                    help='af_packet pods\' ring sizes: "" the dataplane\'s default, "vpp" VPP\'s own (what the '
                         'agent used before passing sizes) or RX_FRAME,RX_FRAMES_PER_BLOCK,TX_FRAME,TX_FRAMES_PER_BLOCK')
    ap.add_argument("--profile", action="store_true", help="cProfile each phase; print the agent's hottest functions")
    ap.add_argument("--poll-sleep-usec", type=int, default=100,
                    help="VPP's unix poll-sleep-usec (0: off), 100 as in the project's test VPPs")
    add_output_args(ap)
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))     # unwind (and clean up) like Ctrl-C
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("vppagent.vpp.connection").setLevel(logging.ERROR)   # "VPP lacks optional …" per connect
    try:
        a.services = sorted({int(x) for x in a.services.split(",") if x.strip()})
    except ValueError:
        ap.error("--services takes comma-separated integers")
    if a.quick:
        quick(a)
    skip = {x for x in a.skip.split(",") if x}
    if skip - {"messages", "pods", "services"}:
        ap.error(f"--skip: unknown part(s) {', '.join(sorted(skip - {'messages', 'pods', 'services'}))}")
    engines = [e for e in a.engines.split(",") if e]
    for e in engines:
        if e not in ENGINES:
            ap.error(f"unknown engine {e!r} (known: {', '.join(ENGINES)})")
    fake = a.fake or not vpp_bin()
    if not fake:
        if not os.access(vpp_bin(), os.X_OK):
            ap.error(f"VPP_BIN={vpp_bin()} is not executable")
        if os.geteuid() != 0:
            print("vpp_bench with a real VPP needs root (network namespaces, veths)", file=sys.stderr)
            return 2
    try:
        ring = parse_ring(a.af_packet_ring)
    except (ValueError, TypeError) as e:
        ap.error(f"--af-packet-ring: {e}")
    problem = memory_guard(a.pods, fake, ring) if "pods" not in skip else None
    if problem:
        ap.error(problem)
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    res: dict[str, Any] = {
        "benchmark": "vpp_control", "fake": fake, "params": {k: v for k, v in vars(a).items() if k != "out"},
        "host": host_info(), "engines": {}, "notes": [],
    }
    if fake:
        res["notes"].append("FAKE VPP: no VPP process, no socket, no veths; the rates are the agent's Python "
                            "against an in-process stand-in, not VPP's")
    log(f"target: {'fake VPP' if fake else vpp_bin()}; load average {res['host']['loadavg_start'][0]:.2f}")
    try:
        for n, engine in enumerate(engines):
            target = Target(f"c{n}", fake, buffers=buffers_for(a.pods), poll_sleep_usec=a.poll_sleep_usec or None,
                            af_packet_ring=ring)
            try:
                res["target"] = target.label
                if n == 0 and "messages" not in skip:
                    res["messages"] = run_messages(target, a, log)
                lane = Lane(target, engine, a, profile=a.profile)
                try:
                    if "pods" not in skip:
                        res["engines"][engine] = run_pods_and_policies(lane, log)
                    if n == 0 and "services" not in skip and a.services:
                        res["services"] = {"engine": engine, "endpoints": a.endpoints,
                                           "sizes": run_services(lane, log)}
                finally:
                    lane.close()
            finally:
                target.close()
    finally:
        REGISTRY.sweep()
    res["elapsed_s"] = time.perf_counter() - started
    res["host"]["loadavg_end"] = os.getloadavg()
    res["notes"].append(load_note(res["host"]))
    if not fake and "pods" not in skip:
        res["notes"].append(f"VPP buffers-per-numa {buffers_for(a.pods):,} (an af_packet pod holds 256; the "
                            "default 16,384 admits 56 pods)")
    print_tables(res)
    write_results(res, "vpp_control", a, plot_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
