"""``vppagent vpp run``: what Calico/VPP's vpp-manager does, supervised.

One run: record the uplink's Linux state (saved to ``supervise.stateFile``
before anything changes), create VPP's network namespace (or take over the
one the previous run kept: the host ends of af_packet pods' veths live
there, and deleting it would take every pod's interface down with VPP), hand the uplink
over (``uplink.park``), render startup.conf and the startup CLI script, start
VPP in its namespace, wait until its API answers and the script has run,
create and wire the uplink and the host interface in VPP, give the host
interface the uplink's Linux identity (``linux_state.apply``), attach SR-IOV
VFs, and report ready in ``supervise.statusFile``.

Then supervise: VPP exiting, crashing or no longer answering (a control ping
every ``HEALTH_INTERVAL``) ends the run.  Every end -- SIGTERM/SIGINT, VPP
exit, a failed start -- tears down in reverse and restores Linux as recorded
(checked against the record and logged when anything differs).  The restart
policy then decides: ``never``, ``on-failure`` (VPP exited non-zero, hung or
failed to start), ``always``; at most ``maxRestarts`` times, with a doubling
delay.  A manager that was itself killed leaves its state file behind: the
next start kills the VPP it had started and restores Linux from the file
before anything else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from vppagent.vpp.connection import VppConnection
from vppagent.vpp.errors import VppError
from vppagent.vpp.messages import requests
from vppagent.vpp_node import host_interface, linux_state
from vppagent.vpp_node.config import NodeConfig
from vppagent.vpp_node.linux_state import LinkState
from vppagent.vpp_node.netns import Netns, create_netns, delete_netns
from vppagent.vpp_node.process import VppProcess, launch, remove_stale_files
from vppagent.vpp_node.sriov import PyrouteVfNetlink, Sysfs, VfInfo, VfNetlink, attach_vfs, setup_vfs
from vppagent.vpp_node.startup import write_startup_files
from vppagent.vpp_node.uplink import Parked, create_in_vpp, park, unpark
from vppagent.vpp_node.vpp_wiring import wire_host_interface, wire_uplink

log = logging.getLogger(__name__)

HEALTH_INTERVAL = 5.0
MAX_RESTART_DELAY = 30.0
MANAGER_MODULES = frozenset({"memclnt", "vpe", "interface", "ip", "ip_neighbor", "arp", "af_packet",
                             "tapv2", "dev"})


class ManagerError(RuntimeError):
    """A step of bringing the node up failed (the message says which)."""


def _optional_modules() -> frozenset[str]:
    """Everything the agent's table declares that the manager does not use:
    a VPP without (say) npol must still get its uplink."""
    return frozenset(m.module for m in requests()) - MANAGER_MODULES


class Manager:
    """Brings VPP up on the node, supervises it, gives Linux back."""

    def __init__(self, cfg: NodeConfig, *, node: Netns | None = None, sysfs: Sysfs | None = None,
                 vf_netlink: VfNetlink | None = None,
                 connect: Callable[[NodeConfig], Any] | None = None) -> None:
        if cfg.uplink is None:
            raise ManagerError("vpp.uplink: required to run VPP on the node")
        self.cfg = cfg
        self.node = node or Netns(None)
        self.vpp_ns = Netns(cfg.netns)
        self.sysfs = sysfs or Sysfs(cfg.sriov.sysfs_root if cfg.sriov else "/sys")
        self.vf_netlink = vf_netlink or PyrouteVfNetlink(self.node)
        self._connect = connect or self._default_connect
        self.stop_event = threading.Event()
        self.vpp: VppProcess | None = None
        self.conn: Any = None
        self.state: LinkState | None = None
        self.parked: Parked | None = None
        self.vfs: list[VfInfo] = []
        self.restarts = 0
        self.uplink_sw_if_index: int | None = None
        self.host_sw_if_index: int | None = None
        self.last_restore_problems: list[str] = []
        self._own_netns = False

    # ---------------------------------------------------------------- status

    def _status(self, state: str, **extra: Any) -> None:
        data = {"state": state, "time": time.time(), "restarts": self.restarts, "netns": self.cfg.netns,
                "uplink": self.cfg.uplink.interface if self.cfg.uplink else None,
                "apiSocket": self.cfg.api_socket, "statsSocket": self.cfg.stats_socket,
                "vppPid": self.vpp.pid if self.vpp and self.vpp.alive() else None,
                "uplinkSwIfIndex": self.uplink_sw_if_index, "hostSwIfIndex": self.host_sw_if_index,
                "restoreProblems": self.last_restore_problems, **extra}
        path = self.cfg.supervise.status_file
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
        log.info("status: %s%s", state, f" ({extra})" if extra else "")

    def _save_state(self) -> None:
        assert self.state is not None
        self.state.save(self.cfg.supervise.state_file, parked=self.parked.to_json() if self.parked else None,
                        vppPid=self.vpp.pid if self.vpp else None, vppNetns=self.cfg.netns,
                        hostKind=self.cfg.host_interface.kind)

    # ------------------------------------------------------------------- run

    def run(self) -> int:
        """Until stopped; the process exit status (0: stopped by a signal or
        VPP exited cleanly without a restart policy asking for more)."""
        self._install_signals()
        self.recover()
        while True:
            try:
                self.start()
                outcome = self.supervise()
            except Exception as e:   # any failed step: tear down, then the restart policy decides
                log.error("bringing VPP up failed: %s", e)
                outcome = f"failed: {e}"
            rc = self.vpp.returncode if self.vpp else None
            self.teardown()
            if os.path.exists(self.cfg.supervise.state_file):
                # Linux is not back as recorded: starting again would record (and later "restore") that
                self._status("failed", reason=f"{outcome}; restoring Linux failed (see the log; the record "
                                              f"stays in {self.cfg.supervise.state_file})", exitCode=rc)
                return 1
            if outcome == "stopped":
                self._status("stopped")
                return 0
            failed = outcome != "exited" or rc != 0
            policy = self.cfg.supervise.restart_policy
            again = policy == "always" or (policy == "on-failure" and failed)
            if again and self.restarts < self.cfg.supervise.max_restarts and not self.stop_event.is_set():
                delay = min(self.cfg.supervise.restart_delay * 2 ** self.restarts, MAX_RESTART_DELAY)
                self.restarts += 1
                self._status("restarting", reason=outcome, exitCode=rc, delay=delay)
                if self.stop_event.wait(delay):
                    self._status("stopped")
                    return 0
                continue
            self._status("failed" if failed else "exited", reason=outcome, exitCode=rc)
            return 1 if failed else 0

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop_event.set())

    def stop(self) -> None:
        """Ask ``run`` to stop (what SIGTERM does)."""
        self.stop_event.set()

    # ----------------------------------------------------------------- start

    def _default_connect(self, cfg: NodeConfig) -> Any:
        conn = VppConnection(cfg.api_socket, client_name="vppagent-manager", optional=_optional_modules())
        conn.connect()
        return conn

    def start(self) -> None:
        cfg = self.cfg
        assert cfg.uplink is not None
        self.uplink_sw_if_index = self.host_sw_if_index = None
        self._status("starting")
        if cfg.host_interface.kind == "tap":
            host_interface.check_tap_possible()          # before anything changes
        self.state = linux_state.record(self.node, cfg.uplink.interface)
        self.parked = None
        self._save_state()
        log.info("recorded %s: %d addresses, %d routes, MAC %s, MTU %d", self.state.name,
                 len(self.state.addresses), len(self.state.routes), self.state.mac, self.state.mtu)
        if cfg.sriov:
            self.vfs = setup_vfs(cfg.sriov, self.sysfs, self.vf_netlink)
        self._claim_netns()
        self.parked = park(self.node, self.vpp_ns, self.state, cfg, self.sysfs)
        self._save_state()
        conf = write_startup_files(cfg, pci_of=lambda _: self.parked.pci if self.parked else "",
                                   vf_pcis={v.index: v.pci for v in self.vfs})
        remove_stale_files(cfg.api_prefix, (cfg.api_socket, cfg.stats_socket, cfg.cli_socket))
        output = os.path.join(cfg.runtime_dir, "vpp.out")
        proc = launch(cfg.binary, conf, Path(output), cfg.netns)
        self.vpp = VppProcess(proc, conf_path=conf, api_socket=cfg.api_socket, stats_socket=cfg.stats_socket,
                              cli_socket=cfg.cli_socket, log_file=cfg.log_file, output_file=Path(output),
                              api_prefix=cfg.api_prefix, workdir=None, binary=cfg.binary, netns=cfg.netns)
        self._save_state()
        deadline = time.monotonic() + cfg.supervise.ready_timeout
        self.vpp.wait_ready(cfg.supervise.ready_timeout)
        self.conn = self._connect(cfg)
        self._wait_startup_script(deadline)
        self.uplink_sw_if_index = create_in_vpp(self.conn, cfg, self.state,
                                                timeout=max(1.0, deadline - time.monotonic()))
        wire_uplink(self.conn, cfg, self.uplink_sw_if_index, self.state)
        host = host_interface.create(self.conn, cfg, self.node, self.vpp_ns, self.state)
        self.host_sw_if_index = host.sw_if_index
        wire_host_interface(self.conn, cfg, host.sw_if_index, self.state)
        problems = linux_state.apply(self.node, self.state, identity=True)
        if cfg.sriov:
            attach_vfs(self.conn, cfg.sriov, self.vfs)
        self._status("ready", vppVersion=getattr(self.conn, "version", ""), hostInterface=host.kind,
                     linuxProblems=problems)

    def _claim_netns(self) -> None:
        """Create VPP's netns, or take over the one a previous run kept because pod
        interfaces live there (see ``_delete_netns``); never one a process runs in."""
        name = self.cfg.netns
        if self.vpp_ns.exists():
            users = _processes_in(self.vpp_ns)
            if users:
                raise ManagerError(f"network namespace {name} is in use by process(es) "
                                   f"{', '.join(map(str, users))} (another manager's VPP?)")
            log.info("reusing network namespace %s: it holds pod interfaces from before", name)
        else:
            create_netns(name)
        self._own_netns = True

    def _wait_startup_script(self, deadline: float) -> None:
        """VPP runs the startup CLI script ~2 s after start; its last line
        creates the IPv6 host VRF."""
        vrf = self.cfg.host_interface.vrf
        while True:
            tables = self.conn.dump("ip_table_dump")
            if any(t.table.table_id == vrf and t.table.is_ip6 for t in tables):
                return
            if not self.vpp or not self.vpp.alive():
                raise ManagerError("VPP exited while running its startup CLI script")
            if time.monotonic() > deadline:
                raise ManagerError(f"VPP did not finish its startup CLI script ({self.cfg.exec_file}) in "
                                   f"{self.cfg.supervise.ready_timeout}s; see {self.cfg.log_file}")
            time.sleep(0.1)

    # ------------------------------------------------------------- supervise

    def supervise(self) -> str:
        """Wait for a stop request, VPP's exit or VPP hanging."""
        assert self.vpp is not None
        next_check = time.monotonic() + HEALTH_INTERVAL
        while True:
            if self.stop_event.is_set():
                return "stopped"
            if not self.vpp.alive():
                log.warning("VPP exited with %s", self.vpp.returncode)
                return "exited"
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + HEALTH_INTERVAL
                try:
                    self.conn.check_alive()
                except VppError as e:
                    if self.vpp.alive():
                        log.error("VPP does not answer (%s): killing it", e)
                        self.vpp.kill()
                        return "hung"
            self.stop_event.wait(0.1)

    # -------------------------------------------------------------- teardown

    def teardown(self) -> None:
        """Stop VPP and give Linux back what was recorded.  Best effort at
        each step: a failing step is logged and the next one still runs."""
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.disconnect()
            self.conn = None
        if self.vpp is not None:
            self.vpp.stop(self.cfg.supervise.stop_timeout)
        if self.state is not None:
            self._restore(self.state, self.parked)
        self.vpp = None
        self.state, self.parked = None, None

    def _restore(self, state: LinkState, parked: Parked | None) -> None:
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("remove the host interface", lambda: host_interface.remove_linux_side(
                self.node, state.name, state.ifindex)),
        ]
        if parked is not None:
            steps.append(("give the uplink back", lambda: unpark(self.node, parked, state, self.sysfs)))
        steps.append(("restore the uplink's Linux state", lambda: self._apply_recorded(state)))
        if self._own_netns:
            steps.append(("delete VPP's network namespace", self._delete_netns))
        failed = False
        for what, fn in steps:
            try:
                fn()
            except Exception as e:
                failed = True
                log.error("cannot %s: %s", what, e)
        if not failed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.cfg.supervise.state_file)

    def _delete_netns(self) -> None:
        """Delete VPP's netns unless pod interfaces live there: the af_packet pods' veths have
        their host end in it, and deleting it would take every pod's interface down with
        VPP (the agent re-attaches them to the next VPP instead)."""
        if self.vpp_ns.exists() and _has_links(self.vpp_ns):
            log.info("keeping network namespace %s: pod interfaces live there", self.cfg.netns)
        else:
            delete_netns(self.cfg.netns)
        self._own_netns = False

    def _apply_recorded(self, state: LinkState) -> None:
        problems = linux_state.apply(self.node, state, identity=True)
        now = linux_state.record(self.node, state.name)
        diffs = state.differences(now)
        self.last_restore_problems = problems + diffs
        if diffs:
            log.error("%s differs from its recorded state after restore: %s", state.name, "; ".join(diffs))
        else:
            log.info("%s restored as recorded", state.name)

    def recover(self) -> bool:
        """Undo what a killed manager left (its state file); True if it did."""
        loaded = linux_state.load_state(self.cfg.supervise.state_file)
        if loaded is None:
            if self.vpp_ns.exists() and not _has_links(self.vpp_ns):
                delete_netns(self.cfg.netns)
            return False
        state, extra = loaded
        log.warning("found %s from a previous run: restoring %s first", self.cfg.supervise.state_file, state.name)
        _kill_stale_vpp(extra.get("vppPid"), self.cfg.binary)
        parked = Parked(**extra["parked"]) if extra.get("parked") else None
        self._own_netns = self.vpp_ns.exists()      # a previous run of ours created it
        self._restore(replace(state), parked)
        return True


def _processes_in(ns: Netns) -> list[int]:
    """Processes whose (main thread's) network namespace is ``ns``."""
    try:
        target = os.stat(ns.path)
    except OSError:
        return []
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                st = os.stat(f"/proc/{name}/ns/net")
            except OSError:
                continue
            if (st.st_ino, st.st_dev) == (target.st_ino, target.st_dev):
                out.append(int(name))
    return out


def _has_links(ns: Netns) -> bool:
    return ns.run(lambda ipr: any(link.get_attr("IFLA_IFNAME") != "lo" for link in ipr.get_links()))


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _kill_stale_vpp(pid: int | None, binary: str) -> None:
    """SIGTERM then SIGKILL the VPP a previous manager started (if that pid
    is still a VPP)."""
    if not pid:
        return
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return
    if os.path.basename(argv0) != os.path.basename(binary) or not _alive(pid):
        return
    log.warning("stopping VPP %d left by a previous run", pid)
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _alive(pid):
            return


def run_manager(cfg: NodeConfig) -> int:
    """Entry point of ``vppagent vpp run``."""
    return Manager(cfg).run()
