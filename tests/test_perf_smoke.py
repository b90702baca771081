"""The perf/ benchmarks run, at a tiny scale, and write their tables, JSON and plots.

The VPP benchmark runs against the fake VPP here (no root needed); its real-VPP
mode and ``vpp_dataplane_bench.py`` are run by hand (see perf/README.md).

These prove the scripts work (topology, dataplanes, measurement, cleanup);
they never assert on timings. Output goes to a temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parent.parent
PERF = REPO / "perf"

LINUX_MARKS = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, netfilter)"),
    pytest.mark.skipif(not shutil.which("nft") or not shutil.which("iptables-nft-restore")
                       or not shutil.which("iptables-legacy-restore") or not shutil.which("ipset"),
                       reason="needs nftables, iptables (nft and legacy) and ipset"),
]


def linux(fn: Callable[..., None]) -> Callable[..., None]:
    """The Linux benchmarks need root and the netfilter tools; the VPP ones here use the fake."""
    for mark in reversed(LINUX_MARKS):
        fn = mark(fn)
    return fn


def _netns() -> set[str]:
    return set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()


def _run(script: str, *args: str, timeout: float = 120) -> str:
    proc = subprocess.run([sys.executable, str(PERF / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _ours(names: set[str], prefix: str) -> set[str]:
    return {n for n in names if n.startswith(prefix)}


@linux
def test_linux_control_bench_tiny(tmp_path: Path) -> None:
    before = _netns()
    out = _run("linux_control_bench.py", "--pods", "10", "--policies", "10", "--services", "10",
               "--changes", "2", "--out", str(tmp_path), "--tag", "smoke")
    for label in ("full sync", "one policy change", "one pod label change", "one service endpoint change",
                  "kernel objects", "peak RSS", "kube-proxy restore (nft)"):
        assert label in out, out
    res = json.loads((tmp_path / "linux_control-smoke.json").read_text())
    assert set(res["modes"]) == {"iptables", "iptables-legacy", "nftables"}
    assert set(res["baselines"]) == {"kube-proxy-nft", "kube-proxy-legacy"}
    for mode, r in res["modes"].items():
        assert r["scale"] == {"pods": 10, "policies": 10, "services": 10}, mode
        assert r["kernel"]["rules"] > 0 and r["kernel"]["chains"] > 0, mode
        assert set(r["single_ms"]) == {"policy", "pod_label", "service_endpoint"}, mode
        assert r["peak_rss_mib"] > 0 and r["full_total_s"] > 0 and r["services_only_s"] > 0, mode
    for r in res["baselines"].values():
        assert r["kernel"]["rules"] == 7 + 10 * (2 + 3 * 3)    # kube-proxy's layout for 10 × 3
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        assert (tmp_path / "linux_control-smoke.png").stat().st_size > 0
    assert not _ours(_netns() - before, "lcb") and not _ours(_netns() - before, "kpb"), "netns left behind"


@linux
@pytest.mark.skipif(not shutil.which("iperf3"), reason="needs iperf3")
def test_linux_dataplane_bench_tiny(tmp_path: Path) -> None:
    before = _netns()
    out = _run("linux_dataplane_bench.py", "--rules", "10", "--modes", "iptables,nftables",
               "--seconds", "1", "--conn-seconds", "0.3", "--conn-max", "500", "--repeats", "1",
               "--out", str(tmp_path), "--tag", "smoke")
    assert "Gbit/s" in out and "conn/s" in out, out
    res = json.loads((tmp_path / "linux_dataplane-smoke.json").read_text())
    assert set(res["modes"]) == {"no-policy", "iptables", "nftables"}
    for mode, r in res["modes"].items():
        assert [p["rules"] for p in r["points"]] == [10], mode
        for p in r["points"]:
            assert p["gbps"] > 0 and p["conn_per_s"] > 0, (mode, p)
            # the policy is in force in the policy modes, absent without one
            assert p["closed_port"] == ("refused" if mode == "no-policy" else "dropped"), (mode, p)
    tens = [r["points"][0] for m, r in res["modes"].items() if m != "no-policy"]
    assert all(p["policies"] == 2 and p["kernel"]["rules"] > 0 for p in tens)    # 10 filler rules + the allow
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        for name in ("throughput", "connections"):
            assert (tmp_path / f"linux_dataplane-smoke-{name}.png").stat().st_size > 0
    assert not _ours(_netns() - before, "ldb"), "netns left behind"


def test_vpp_bench_quick_against_the_fake(tmp_path: Path) -> None:
    """perf/vpp_bench.py --quick with $VPP_BIN unset: the fake VPP, labelled as such, seconds."""
    env = {k: v for k, v in os.environ.items() if k != "VPP_BIN"}
    proc = subprocess.run([sys.executable, str(PERF / "vpp_bench.py"), "--quick", "--out", str(tmp_path),
                           "--tag", "smoke"], capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert proc.returncode == 0, f"vpp_bench.py failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    out = proc.stdout
    assert "FAKE VPP" in out and "pods/s" in out and "policies/s" in out and "msgs/s" in out, out
    res = json.loads((tmp_path / "vpp_control-smoke.json").read_text())
    assert res["fake"] is True and res["target"].startswith("FAKE VPP")
    assert set(res["engines"]) == {"npol", "acl"}
    assert {e: r["vpp_engine"] for e, r in res["engines"].items()} == {"npol": "hybrid", "acl": "acl"}
    for engine, r in res["engines"].items():
        assert r["pods"]["count"] == 6 and r["pods"]["per_s"] > 0 and r["pods"]["messages"] > 0, engine
        assert r["policies"]["per_s"] > 0 and r["policies"]["rules"] > 0, engine
        assert r["removals"]["pods"]["per_s"] > 0, engine
    (svc,) = res["services"]["sizes"]
    assert svc["count"] == 10 and svc["add"]["per_s"] > 0 and svc["add"]["messages"] >= 10
    m = res["messages"]
    assert m["raw_sync"]["per_s"] > 0 and m["agent_sync"]["per_s"] > 0 and m["agent_pipelined"]["per_s"] > 0
    assert m["raw_async"] is None and m["raw_socket"] is None      # no socket with the fake
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        assert (tmp_path / "vpp_control-smoke.png").stat().st_size > 0


def test_vpp_dataplane_bench_without_vpp_skips_cleanly(tmp_path: Path) -> None:
    """Without $VPP_BIN there are no packets to measure: it says so and succeeds."""
    env = {k: v for k, v in os.environ.items() if k != "VPP_BIN"}
    proc = subprocess.run([sys.executable, str(PERF / "vpp_dataplane_bench.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "no real VPP" in proc.stdout
    assert not list(tmp_path.iterdir())


def test_sync_bench_quick(tmp_path: Path) -> None:
    """perf/sync_bench.py --quick: the fan-out and memory parts (no root needed) and, as root, the
    real-agent part in parallel with them; JSON complete, no namespace or process left behind."""
    real = os.geteuid() == 0 and bool(shutil.which("nft")) and bool(shutil.which("ipset"))
    script = str(PERF / "sync_bench.py")
    runs = {"sim": ["--parts", "fanout,memory"]} | ({"real": ["--parts", "real"]} if real else {})
    before = _netns()
    procs = {tag: subprocess.Popen([sys.executable, script, "--quick", *args, "--out", str(tmp_path), "--tag", tag],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for tag, args in runs.items()}
    outs = {tag: p.communicate(timeout=120) for tag, p in procs.items()}
    for tag, p in procs.items():
        assert p.returncode == 0, f"{tag}:\n{outs[tag][0]}\n{outs[tag][1]}"
    res = json.loads((tmp_path / "sync_bench-sim.json").read_text())
    fan = res["fanout"]
    assert (fan["one"]["subscribers"], fan["many"]["subscribers"]) == (1, 4)
    for phase in (fan["one"], fan["many"]):
        assert phase["lost"] == {"policy": 0, "pod": 0} and phase["client_errors"] == []
        assert all(len(v) == 2 for v in phase["samples"].values())
        assert phase["overflows"] == 0 and phase["client_resyncs"] == 0
    assert fan["many"]["burst"]["messages"] == 10 * 4
    mem = res["memory"]
    assert mem["rss0_mib"] > 0 and mem["rss_subs_mib"] > 0 and mem["baseline"]["rss_calc_mib"] > 0
    assert all(len(v) == 1 for v in mem["change_s"].values())
    assert "### 2. Fan-out" in outs["sim"][0] and "### 3. Memory" in outs["sim"][0]
    if real:
        r = json.loads((tmp_path / "sync_bench-real.json").read_text())["real"]["nftables"]
        assert r["lost"] == {"policy": 0, "pod": 0, "pod-cni": 0}, r["lost"]
        assert all(len(v) == 1 for v in r["samples"].values())
        assert "### 1." in outs["real"][0]
        ours = {f"{c}{procs['real'].pid % 1000:03d}" for c in "kh"}     # Cluster and Node netns tokens
        assert not {n for n in _netns() - before if n[:4] in ours}, "netns left behind"
