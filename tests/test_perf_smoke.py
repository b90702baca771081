"""The perf/ benchmarks run, at a tiny scale, and write their tables, JSON and plots.

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

import pytest

REPO = Path(__file__).resolve().parent.parent
PERF = REPO / "perf"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, netfilter)"),
    pytest.mark.skipif(not shutil.which("nft") or not shutil.which("iptables-nft-restore")
                       or not shutil.which("iptables-legacy-restore") or not shutil.which("ipset"),
                       reason="needs nftables, iptables (nft and legacy) and ipset"),
]


def _netns() -> set[str]:
    return set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()


def _run(script: str, *args: str, timeout: float = 120) -> str:
    proc = subprocess.run([sys.executable, str(PERF / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, f"{script} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _ours(names: set[str], prefix: str) -> set[str]:
    return {n for n in names if n.startswith(prefix)}


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
