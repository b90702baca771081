"""The real-netns test harness for pytest: ``vppagent.testbed`` plus the pytest-only bits.

The implementation (and its full API documentation) lives in
:mod:`vppagent.testbed`, shared with ``make demo`` and perf scripts; this
module keeps the names tests have always imported::

    import pytest
    from tests.linux_harness import Node, ROOT_ONLY

    pytestmark = ROOT_ONLY            # = [pytest.mark.root, skip unless root]

    def test_something():
        with Node(dataplane="nftables") as node:
            web = node.add_pod("shop", "web", labels={"app": "web"}, ports=[("http", 8080, "TCP")])
            db = node.add_pod("shop", "db")
            assert node.reachable(web, db, 5432)
"""

from __future__ import annotations

import os

import pytest

from vppagent.testbed import CNI_VERSION, PYTHON, REPO, CniCall, Listener, Node, Outcome, Place, Pod

IS_ROOT = os.geteuid() == 0
ROOT_ONLY = [pytest.mark.root, pytest.mark.skipif(not IS_ROOT, reason="needs root (network namespaces)")]

__all__ = ["CNI_VERSION", "IS_ROOT", "PYTHON", "REPO", "ROOT_ONLY", "CniCall", "Listener", "Node", "Outcome",
           "Place", "Pod"]
