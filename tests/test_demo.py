"""``make demo`` (``python -m vppagent.demo``): every flow matches the evaluator, it is quick,
and nothing is left behind — also when it is interrupted or killed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.linux_harness import ROOT_ONLY
from vppagent.testbed.registry import REGISTRY, reap_stale

pytestmark = ROOT_ONLY
REPO = Path(__file__).resolve().parent.parent
DEMO = [sys.executable, "-m", "vppagent.demo"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1")


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def token_of(output: str) -> str:
    m = re.search(r"is netns (\S+)-node ", output)
    assert m, output
    return m.group(1)


def leftovers(token: str) -> list[str]:
    return sorted(n for n in netns_names() if n.startswith(token))


@pytest.mark.parametrize("dataplane", ["nftables", "iptables"])
def test_demo_matches_the_evaluator_and_cleans_up(dataplane: str) -> None:
    started = time.monotonic()
    proc = subprocess.run([*DEMO, "--dataplane", dataplane], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=120)
    elapsed = time.monotonic() - started
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    m = re.search(r"^(\d+)/(\d+) flows match the reference evaluator$", out, re.M)
    assert m and m.group(1) == m.group(2) and int(m.group(2)) >= 9, out
    assert not re.search(r"^\s*✗|(allow|deny) ✗", out, re.M), out      # no failed line, no wrong cell
    assert f"{dataplane} dataplane" in out
    assert re.search(r"answered by shop/frontend ×\d+, shop/frontend-2 ×\d+", out), out   # both backends
    assert "NodePort" in out and "Pods deleted with CNI DEL: 5/5 ok" in out
    assert leftovers(token_of(out)) == []
    assert elapsed < 60, f"the demo took {elapsed:.1f} s"


def _start_and_wait_for_pods() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(DEMO, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        seen += line
        if line.startswith("  tools/debug"):      # pods exist, the agent runs
            return proc, seen
    proc.wait(10)
    raise AssertionError(f"the demo ended before creating pods:\n{seen}")


def test_demo_interrupted_cleans_up() -> None:
    proc, seen = _start_and_wait_for_pods()
    token = token_of(seen)
    assert leftovers(token)
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0, seen + rest
    assert leftovers(token) == []


def test_a_killed_demo_is_reaped_by_the_next_testbed() -> None:
    proc, seen = _start_and_wait_for_pods()
    token = token_of(seen)
    proc.kill()
    proc.communicate(timeout=30)
    assert leftovers(token)                      # SIGKILL: no chance to clean up …
    record = json.loads((REGISTRY / f"{token}.json").read_text())
    assert record["agent_pid"] and Path(f"/proc/{record['agent_pid']}").exists()
    reap_stale()                                 # … the registry lets the next testbed do it
    assert leftovers(token) == []
    deadline = time.monotonic() + 5
    while Path(f"/proc/{record['agent_pid']}/cmdline").exists() and time.monotonic() < deadline:
        time.sleep(0.05)                         # (a zombie until its parent, ip netns exec's, reaps it)
    assert not (REGISTRY / f"{token}.json").exists()
    assert not any(Path("/tmp").glob(f"vppagent-{token}-*"))
