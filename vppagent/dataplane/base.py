"""The one interface every dataplane implements, and the base most use.

The daemon only ever talks to ``Dataplane``: it feeds batches of the update
stream, calls ``run_periodic`` from its loop and reports ``status``/``dump``.
``ReconcilingDataplane`` supplies the common machinery: it folds updates into
a ``DataplaneState``, lets the subclass translate each *changed* update into
reconciler keys (so a batch costs what changed, not the whole state), and
commits once per batch, only after ``InSync``.
"""

from __future__ import annotations

import abc
import ipaddress
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping, Sequence

from vppagent.model.state import DataplaneState
from vppagent.model.updates import InSync, Update
from vppagent.reconciler import Backoff, Reconciler, Report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkloadWiring:
    """What a dataplane needs to give a pod its interface (from a CNI ADD).

    ``ips`` are host addresses (/32, /128) the agent's IPAM assigned (or the
    CNI request carried); ``annotations`` are the pod's, so a dataplane can
    honour per-pod choices (e.g. memif vs tap on VPP).
    """

    container_id: str
    netns: str
    interface_name: str                      # inside the pod, e.g. eth0
    host_interface_name: str                 # e.g. cali1234567890a
    ips: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]
    mtu: int = 1500
    namespace: str = ""
    pod: str = ""
    annotations: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class WiredWorkload:
    """What the CNI result reports back."""

    host_interface_name: str
    host_mac: str = ""
    container_mac: str = ""
    gateway_v4: str = "169.254.1.1"
    gateway_v6: str = "fe80::ecee:eeff:feee:eeee"


class WiringError(Exception):
    """Wiring a pod failed for a reason the CNI caller should read verbatim."""


@dataclass(frozen=True)
class DataplaneStatus:
    name: str
    connected: bool
    in_sync: bool
    ready: bool
    pending: int = 0
    failed: int = 0
    last_error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)


class Dataplane(abc.ABC):
    """What the daemon drives. Calls come from one thread at a time."""

    name: str = "dataplane"

    @abc.abstractmethod
    def start(self) -> None:
        """Connect and read back actual state; write nothing yet."""

    @abc.abstractmethod
    def apply(self, updates: Sequence[Update]) -> None:
        """Consume a batch of the update stream; nothing is written before InSync."""

    @abc.abstractmethod
    def run_periodic(self) -> None:
        """Retry failures whose backoff elapsed; periodically re-read and repair."""

    @abc.abstractmethod
    def resync(self) -> dict[str, Any]:
        """Full read-back and repair; returns a report."""

    @abc.abstractmethod
    def status(self) -> DataplaneStatus:
        """A cheap summary for health checks and ``vppagent status``."""

    @abc.abstractmethod
    def dump(self) -> dict[str, Any]:
        """JSON-serialisable desired and actual state, for the Dump RPC."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Disconnect, leaving the dataplane programmed as it is."""

    # -- pod wiring (CNI); called on the agent's owner thread ------------------------

    def wire_workload(self, wiring: WorkloadWiring) -> WiredWorkload:
        """Create the pod's interface, addresses and routes; idempotent per container.

        Raise ``WiringError`` with a message a person understands; nothing may be
        left half-created. The default wires nothing (dataplane ``none``).
        """
        return WiredWorkload(wiring.host_interface_name)

    def unwire_workload(self, wiring: WorkloadWiring) -> None:
        """Remove what ``wire_workload`` created; succeeds when it is already gone."""

    def check_workload(self, wiring: WorkloadWiring) -> list[str]:
        """Describe drift between what was wired and what exists (empty: fine)."""
        return []


class ReconcilingDataplane(Dataplane):
    """A dataplane whose objects are reconciler keys.

    Subclasses register their descriptors on ``self.reconciler`` in their
    ``__init__``, implement ``on_update`` and optionally ``connect`` /
    ``disconnect``. ``set_group``/``drop_group`` help translate one model
    object into many keys without remembering which keys it produced.
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        backoff: Backoff | None = None,
        refresh_interval: float | None = None,
    ) -> None:
        if name:
            self.name = name
        self.state = DataplaneState()
        self.reconciler = Reconciler(clock=clock, backoff=backoff)
        self._clock = clock
        self._refresh_interval = refresh_interval
        self._next_refresh: float | None = None
        self._connected = False
        self._last_error: str | None = None
        self._groups: dict[Hashable, dict[Hashable, Any]] = {}
        self._owner: dict[Hashable, Hashable] = {}
        self.last_report: Report | None = None

    # -- subclass hooks ----------------------------------------------------------------

    def connect(self) -> None:
        """Open the backend connection (default: nothing to open)."""

    def disconnect(self) -> None:
        """Close the backend connection (default: nothing to close)."""

    @abc.abstractmethod
    def on_update(self, update: Update, state: DataplaneState) -> None:
        """Translate one update (already folded into ``state``) into set/delete calls."""

    # -- key groups ------------------------------------------------------------------

    def set_group(self, owner: Hashable, items: Mapping[Hashable, Any]) -> None:
        """Make ``owner`` produce exactly ``items``; its keys no longer produced are deleted.

        A key belongs to the owner that set it last; dropping an owner never
        deletes a key another owner has since claimed.
        """
        old = self._groups.pop(owner, {})
        for key in old.keys() - items.keys():
            if self._owner.get(key) == owner:
                del self._owner[key]
                self.reconciler.delete(key)
        for key, value in items.items():
            self._owner[key] = owner
            self.reconciler.set(key, value)
        if items:
            self._groups[owner] = dict(items)

    def drop_group(self, owner: Hashable) -> None:
        self.set_group(owner, {})

    # -- Dataplane -------------------------------------------------------------------

    def start(self) -> None:
        self.connect()
        self._connected = True
        errors = self.reconciler.read_actual()
        if errors:
            self._last_error = errors[-1]

    def apply(self, updates: Sequence[Update]) -> None:
        self.fold(updates)
        if self.state.in_sync:
            self._note(self.reconciler.commit())

    def fold(self, updates: Sequence[Update]) -> None:
        """Fold a batch into the state and translate it, without committing.

        Subclasses that need extra steps before their commit call this from
        their own ``apply``.
        """
        for update in updates:
            try:
                self.state.apply(update)
                self.on_update(update, self.state)
            except Exception as exc:   # one bad update must not stall the stream
                self._last_error = f"{type(update).__name__}: {exc}"
                log.error("%s: cannot apply %r: %s", self.name, update, exc)
                continue
            if isinstance(update, InSync):
                self.reconciler.mark_in_sync()

    def run_periodic(self) -> None:
        self._note(self.reconciler.run_due_retries())
        due = self._next_refresh
        if due is not None and self.state.in_sync and self._clock() >= due:
            self.resync()

    def resync(self) -> dict[str, Any]:
        return self._note(self.reconciler.resync()).as_dict()

    def status(self) -> DataplaneStatus:
        stats = self.reconciler.stats()
        counts = dict(self.state.counts())
        counts.update(keys_desired=stats["desired"], keys_configured=stats["configured"])
        return DataplaneStatus(
            name=self.name,
            connected=self._connected,
            in_sync=self.state.in_sync and self.reconciler.in_sync,
            ready=self.is_ready(stats),
            pending=stats["pending"],
            failed=stats["failed"],
            last_error=self._last_error,
            counts=counts,
        )

    def is_ready(self, stats: Mapping[str, int]) -> bool:
        """Ready = connected, in sync and nothing failing (override to relax)."""
        return self._connected and self.state.in_sync and stats["failed"] == 0

    def dump(self) -> dict[str, Any]:
        out = self.reconciler.dump()
        out.update(name=self.name, connected=self._connected, counts=self.state.counts(),
                   last_error=self._last_error)
        return out

    def stop(self) -> None:
        if self._connected:
            self._connected = False
            self.disconnect()

    def _note(self, report: Report) -> Report:
        """Remember a report; every full resync restarts the refresh timer."""
        self.last_report = report
        if report.errors:
            self._last_error = report.errors[-1]
        if report.resync and not report.deferred and self._refresh_interval:
            self._next_refresh = self._clock() + self._refresh_interval
        return report
