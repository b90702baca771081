"""NoneDataplane, the ReconcilingDataplane base and the dataplane registry."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Hashable, Mapping

import pytest

from vppagent.dataplane import (
    Dataplane, ReconcilingDataplane, create_dataplane, known_dataplanes, register_dataplane,
)
from vppagent.dataplane.none import ModelKey, NoneDataplane
from vppagent.model.resources import Action
from vppagent.model.state import DataplaneState
from vppagent.model.updates import (
    InSync, IPSetDeltaUpdate, IPSetRemove, IPSetType, IPSetUpdate, PolicyID, PolicyRemove,
    PolicyUpdate, ProfileRemove, ProfileUpdate, RenderedPolicy, RenderedRule, RuleOrigin, TierInfo,
    Update, WorkloadEndpointInfo, WorkloadEndpointRemove, WorkloadEndpointUpdate,
)
from vppagent.reconciler import Backoff, Descriptor, KeyState

PID = PolicyID("default", "ns/allow-web")
RULE = RenderedRule(action=Action.ALLOW, origin=RuleOrigin("ns/allow-web", 0), src_ip_set_ids=("s:web",))
WEP = WorkloadEndpointInfo(
    namespace="ns", pod="web-0", node="node1", endpoint="eth0", interface_name="cali1",
    profile_ids=("kns.ns",), tiers=(TierInfo("default", ingress_policies=("ns/allow-web",)),),
)
SNAPSHOT: list[Update] = [
    IPSetUpdate("s:web", IPSetType.NET, frozenset({"10.0.0.1/32"})),
    PolicyUpdate(PID, RenderedPolicy(inbound_rules=(RULE,))),
    ProfileUpdate("kns.ns"),
    WorkloadEndpointUpdate("ns/web-0/eth0", WEP),
]
KEYS = {ModelKey("ipset", "s:web"), ModelKey("policy", "default/ns/allow-web"),
        ModelKey("profile", "kns.ns"), ModelKey("wep", "ns/web-0/eth0")}


def started() -> NoneDataplane:
    dp = NoneDataplane()
    dp.start()
    return dp


# -- NoneDataplane -----------------------------------------------------------------------------

def test_before_in_sync_tracks_state_but_writes_nothing() -> None:
    dp = started()
    dp.apply(SNAPSHOT)
    st = dp.status()
    assert (st.name, st.connected, st.in_sync, st.ready) == ("none", True, False, True)
    assert st.counts["ipsets"] == 1 and st.counts["policies"] == 1 and st.counts["workload_endpoints"] == 1
    assert st.pending == 4 and st.failed == 0
    assert dp.device.store == {} and dp.reconciler.history == []
    json.dumps(dp.dump())


def test_after_in_sync_everything_is_configured() -> None:
    dp = started()
    dp.apply(SNAPSHOT)
    dp.apply([InSync()])
    st = dp.status()
    assert st.in_sync and st.ready and st.pending == 0 and st.failed == 0
    assert st.counts["keys_configured"] == 4
    assert set(dp.device.store) == KEYS
    dump = dp.dump()
    json.dumps(dump)
    assert dump["name"] == "none" and dump["in_sync"] and len(dump["keys"]) == 4
    assert {k["state"] for k in dump["keys"]} == {"configured"}


def test_in_sync_in_the_same_batch_and_later_changes() -> None:
    dp = started()
    dp.apply([*SNAPSHOT, InSync()])
    assert dp.status().in_sync and set(dp.device.store) == KEYS
    dp.apply([IPSetDeltaUpdate("s:web", added=frozenset({"10.0.0.2/32"}))])
    assert dp.device.store[ModelKey("ipset", "s:web")][1] == frozenset({"10.0.0.1/32", "10.0.0.2/32"})
    dp.apply([WorkloadEndpointRemove("ns/web-0/eth0"), ProfileRemove("kns.ns"),
              PolicyRemove(PID), IPSetRemove("s:web")])
    st = dp.status()
    assert sum(v for k, v in st.counts.items() if not k.startswith("keys_")) == 0
    assert dp.device.store == {} and st.pending == 0


def test_missing_dependency_shows_as_pending() -> None:
    dp = started()
    dp.apply([SNAPSHOT[3], InSync()])          # an endpoint naming a policy that never came
    st = dp.status()
    assert st.pending == 1 and st.ready
    assert dp.reconciler.state(ModelKey("wep", "ns/web-0/eth0")).state is KeyState.PENDING
    dp.apply(SNAPSHOT[:3])
    assert dp.status().pending == 0 and set(dp.device.store) == KEYS


def test_bad_update_is_reported_and_the_stream_continues() -> None:
    dp = started()
    dp.apply([IPSetDeltaUpdate("nope", added=frozenset({"1.2.3.4/32"})), *SNAPSHOT, InSync()])
    st = dp.status()
    assert st.last_error and "nope" in st.last_error
    assert st.in_sync and set(dp.device.store) == KEYS


def test_resync_and_stop() -> None:
    dp = started()
    dp.apply([*SNAPSHOT, InSync()])
    dp.device.store.pop(ModelKey("profile", "kns.ns"))      # "drift"
    report = dp.resync()
    assert report["created"] == 1 and report["adopted"] == 3
    dp.stop()
    assert not dp.status().connected and set(dp.device.store) == KEYS


# -- registry ----------------------------------------------------------------------------------

def test_create_dataplane() -> None:
    assert isinstance(create_dataplane({"type": "none"}), NoneDataplane)
    assert {"none", "vpp", "iptables", "nftables"} <= set(known_dataplanes())
    with pytest.raises(ValueError, match="known types: .*none"):
        create_dataplane({"type": "carrier-pigeon"})
    with pytest.raises(ValueError, match="known types"):
        create_dataplane({})
    with pytest.raises(ValueError, match="unknown options"):
        create_dataplane({"type": "none", "bogus": 1})


def test_register_dataplane() -> None:
    seen: list[dict[str, Any]] = []

    def factory(options: dict[str, Any]) -> Dataplane:
        seen.append(options)
        return NoneDataplane()

    register_dataplane("test-custom", factory)
    assert isinstance(create_dataplane({"type": "test-custom", "x": 1}), NoneDataplane)
    assert seen == [{"x": 1}]
    register_dataplane("test-lazy", "vppagent.dataplane.none:NoneDataplane")
    assert isinstance(create_dataplane({"type": "test-lazy"}), NoneDataplane)
    register_dataplane("test-broken", "vppagent.no_such_module:Thing")
    with pytest.raises(RuntimeError, match="unavailable"):
        create_dataplane({"type": "test-broken"})


def test_registry_import_is_lazy() -> None:
    code = ("import sys, vppagent.dataplane as d; d.create_dataplane({'type': 'none'}); "
            "print([m for m in ('vpp_papi', 'pyroute2', 'vppagent.dataplane.vpp') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- ReconcilingDataplane ----------------------------------------------------------------------

@dataclass(frozen=True)
class SetKey:
    id: str


class FlakyDevice(Descriptor):
    kind = SetKey

    def __init__(self) -> None:
        super().__init__()
        self.sets: dict[SetKey, frozenset[str]] = {}
        self.fail_next = 0
        self.commits = 0

    def create(self, key: Any, value: Any) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("busy")
        self.sets[key] = value

    def update(self, key: Any, old: Any, new: Any, metadata: Any) -> None:
        self.sets[key] = new

    def delete(self, key: Any, value: Any, metadata: Any) -> None:
        del self.sets[key]

    def dump(self) -> Mapping[Hashable, tuple[Any, Any]]:
        return {k: (v, None) for k, v in self.sets.items()}


class SetsDataplane(ReconcilingDataplane):
    """Renders each IP set as one key per member-prefix group, via set_group."""

    name = "sets"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.dev = FlakyDevice()
        self.reconciler.register(self.dev)
        self.seen: list[type] = []

    def on_update(self, update: Update, state: DataplaneState) -> None:
        self.seen.append(type(update))
        match update:
            case IPSetUpdate(id=i) | IPSetDeltaUpdate(id=i):
                members = state.ipsets[i][1]
                self.set_group(i, {SetKey(f"{i}/{m.split('.')[0]}"): frozenset(
                    x for x in members if x.split(".")[0] == m.split(".")[0]) for m in members})
            case IPSetRemove(id=i):
                self.drop_group(i)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_reconciling_dataplane_batches_retries_and_refreshes() -> None:
    clock = Clock()
    dp = SetsDataplane(clock=clock, backoff=Backoff(base=2.0), refresh_interval=30.0)
    dp.start()
    dp.apply([IPSetUpdate("a", IPSetType.NET, frozenset({"10.0.0.1", "11.0.0.1"}))])
    assert dp.dev.sets == {} and not dp.status().in_sync

    dp.dev.fail_next = 1
    dp.apply([InSync()])
    st = dp.status()
    assert st.in_sync and not st.ready and st.failed == 1 and "busy" in (st.last_error or "")
    clock.now = 1.0
    dp.run_periodic()
    assert dp.status().failed == 1
    clock.now = 2.0
    dp.run_periodic()
    assert dp.status().ready and set(dp.dev.sets) == {SetKey("a/10"), SetKey("a/11")}

    dp.apply([IPSetDeltaUpdate("a", removed=frozenset({"11.0.0.1"}))])
    assert set(dp.dev.sets) == {SetKey("a/10")}

    dp.dev.sets[SetKey("a/99")] = frozenset()           # tampering, found by the periodic refresh
    clock.now = 29.0                                     # InSync's resync was at 0
    dp.run_periodic()
    assert SetKey("a/99") in dp.dev.sets
    clock.now = 30.0
    dp.run_periodic()
    assert set(dp.dev.sets) == {SetKey("a/10")}

    dp.apply([IPSetRemove("a")])
    assert dp.dev.sets == {} and dp.status().counts["ipsets"] == 0
    assert dp.last_report is not None and dp.last_report.deleted == 1


def test_group_keys_belong_to_their_last_owner() -> None:
    dp = SetsDataplane()
    dp.set_group("x", {SetKey("shared"): frozenset({"1"}), SetKey("x-only"): frozenset()})
    dp.set_group("y", {SetKey("shared"): frozenset({"2"})})
    dp.drop_group("x")
    assert dp.reconciler.desired() == {SetKey("shared"): frozenset({"2"})}
    dp.drop_group("y")
    assert dp.reconciler.desired() == {}
