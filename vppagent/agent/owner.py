"""Work handed to one owner thread by other threads, which wait for its result.

The agent and the sync layer keep their calculation, dataplane and IPAM on
one thread (clients such as vpp_papi are not thread-safe); gRPC worker
threads ``submit`` calls to it, and its loop runs them in ``drain``.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")


class OwnerQueue:
    """Calls queued for the owner thread (the creating thread until ``claim``)."""

    def __init__(self) -> None:
        self._work: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future]] = queue.Queue()
        self._owner = threading.current_thread()

    def claim(self) -> None:
        """Make the calling thread the owner."""
        self._owner = threading.current_thread()

    def submit(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Run ``fn`` on the owner thread and return its result (or raise its error); called on the
        owner thread, ``fn`` runs at once."""
        if threading.current_thread() is self._owner:
            return fn()
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._work.put((fn, fut))
        return fut.result(timeout=timeout)

    def wake(self) -> None:
        """Make a ``drain`` waiting for work return now."""
        self._work.put((lambda: None, concurrent.futures.Future()))

    def drain(self, wait: float = 0.0) -> None:
        """On the owner thread: run every queued call, after waiting up to ``wait`` seconds for one."""
        try:
            fn, fut = self._work.get(timeout=wait)
        except queue.Empty:
            return
        while True:
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # handed to the waiting caller
                    fut.set_exception(exc)
            try:
                fn, fut = self._work.get_nowait()
            except queue.Empty:
                return
