"""Polling until a condition holds, for tests and the testbed."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(cond: Callable[[], T], timeout: float = 20.0, what: str = "condition", interval: float = 0.02,
             diag: Callable[[], str] | None = None) -> T:
    """Call ``cond`` every ``interval`` seconds until it returns something truthy, and return that.

    After ``timeout`` seconds: AssertionError "timed out waiting for <what>", followed by ``diag()``
    (logs, state) when given.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{diag()}" if diag is not None else ""))
