"""VppConnection against the fake VPP (and, under ``vpp``, a real one):
the connect-time table check, argument checking, typed errors, the owner
thread, pipelining, and surviving a VPP restart."""

from __future__ import annotations

import os
import threading
import time
from typing import Iterator

import pytest

from vpp_env import fake_vpp
from vppagent.reconciler.backoff import Backoff
from vppagent.vpp.connection import VppConnection
from vppagent.vpp.errors import (
    VppApiError, VppApiMismatch, VppArgumentError, VppNotConnected, VppRestarted, VppTimeout,
    VppWrongThread,
)
from vppagent.vpp.fake import FakeVpp
from vppagent.vpp.messages import MESSAGES

ALL = 0xFFFFFFFF


@pytest.fixture
def fake() -> Iterator[FakeVpp]:
    with fake_vpp() as f:
        yield f


@pytest.fixture
def conn(fake: FakeVpp) -> Iterator[VppConnection]:
    c = VppConnection(client_factory=fake.client_factory, timeout=2.0)
    c.connect()
    yield c
    if c._client is not None and c._owner == threading.get_ident():
        c.disconnect()


def loopback(c: VppConnection) -> int:
    return c.call("create_loopback_instance", is_specified=False).sw_if_index


# ------------------------------------------------------ connect-time check

def test_connect_records_version_and_pid(conn: VppConnection, fake: FakeVpp) -> None:
    assert conn.connected
    assert conn.version == "26.10-fake"
    assert conn.vpe_pid == fake.pid
    assert conn.has("npol_rule_create") and conn.has_module("npol")
    assert conn.unavailable == {}


def test_missing_required_messages_are_named_with_the_version() -> None:
    fake = FakeVpp(absent={"cnat", "sw_interface_set_unnumbered"})
    try:
        c = VppConnection(client_factory=fake.client_factory)
        with pytest.raises(VppApiMismatch) as e:
            c.connect()
        err = e.value
        assert "cnat_translation_update" in err.missing and "cnat_translation_update_reply" in err.missing
        assert "sw_interface_set_unnumbered" in err.missing
        assert err.version == "26.10-fake"
        assert "26.10-fake" in str(err) and "sw_interface_set_unnumbered" in str(err)
        assert not c.connected
    finally:
        fake.close()


def test_crc_mismatch_is_named_with_both_crcs() -> None:
    fake = FakeVpp(crc_overrides={"sw_interface_dump": "0xdeadbeef", "sw_interface_details": "0x01234567"})
    try:
        c = VppConnection(client_factory=fake.client_factory)
        with pytest.raises(VppApiMismatch) as e:
            c.connect()
        assert ("sw_interface_dump", MESSAGES["sw_interface_dump"].crc, "0xdeadbeef") in e.value.mismatched
        assert any(m[0] == "sw_interface_details" for m in e.value.mismatched)
        assert not e.value.missing
    finally:
        fake.close()


def test_optional_plugins_may_be_absent_or_differ() -> None:
    fake = FakeVpp(absent={"npol", "memif"}, crc_overrides={"acl_add_replace": "0x00000001"})
    try:
        c = VppConnection(client_factory=fake.client_factory)
        c.connect()
        assert not c.has("npol_rule_create") and not c.has_module("npol")
        assert not c.has("acl_add_replace") and c.has("acl_del")
        assert not c.has_module("acl")
        assert "CRC" in c.unavailable["acl_add_replace"] and "missing" in c.unavailable["memif_dump"]
        with pytest.raises(VppArgumentError, match="not available"):
            c.call("npol_ipset_create", type=0)
        # what is optional is the caller's choice
        c.disconnect()
        strict = VppConnection(client_factory=fake.client_factory, optional=())
        with pytest.raises(VppApiMismatch):
            strict.connect()
    finally:
        fake.close()


def test_unreachable_vpp_is_not_connected() -> None:
    fake = FakeVpp()
    fake.stop()
    try:
        with pytest.raises(VppNotConnected, match="cannot connect"):
            VppConnection(client_factory=fake.client_factory).connect()
    finally:
        fake.close()


# -------------------------------------------------------- argument checks

@pytest.mark.parametrize("name,args,field", [
    ("sw_interface_set_flags", {"sw_if_index": 1, "flags": 1, "up": True}, "up"),
    ("sw_interface_set_flags", {"sw_if_index": "1", "flags": 1}, "sw_if_index"),
    ("sw_interface_set_flags", {"sw_if_index": -1, "flags": 1}, "sw_if_index"),
    ("sw_interface_set_flags", {"sw_if_index": 1, "flags": 8}, "flags"),
    ("sw_interface_set_flags", {"sw_if_index": 1}, "flags"),
    ("sw_interface_set_mtu", {"sw_if_index": 1, "mtu": [1500, 0]}, "mtu"),
    ("sw_interface_tag_add_del", {"sw_if_index": 1, "is_add": True, "tag": "x" * 64}, "tag"),
    ("sw_interface_add_del_address", {"sw_if_index": 1, "is_add": True, "prefix": "10.0.0.1/33"}, "prefix"),
    ("sw_interface_add_del_address", {"sw_if_index": 1, "is_add": True, "prefix": "10.0.0.300/24"}, "prefix"),
    ("ip_route_add_del", {"is_add": True, "is_multipath": False,
                          "route": {"prefix": "10.0.0.0/8", "n_paths": 2, "paths": [{"sw_if_index": 1}]}},
     "route.n_paths"),
    ("ip_route_add_del", {"is_add": True, "is_multipath": False,
                          "route": {"prefix": "10.0.0.0/8", "paths": [{"sw_if_indx": 1}]}},
     "route.paths[0].sw_if_indx"),
    ("ip_route_add_del", {"is_add": True, "is_multipath": False,
                          "route": {"prefix": {"address": {"af": 1, "un": {"ip4": b"\x0a\0\0\0"}}, "len": 8}}},
     "route.prefix.address.un.ip4"),
    ("acl_add_replace", {"acl_index": ALL, "r": [{"is_permit": 7}]}, "r[0].is_permit"),
    ("tap_create_v3", {"host_mac_addr": "02:00:00:00:00", "host_mac_addr_set": True}, "host_mac_addr"),
    ("npol_ipset_add_del_members", {"set_id": 0, "is_add": True,
                                    "members": [{"val": {"adress": "10.0.0.1"}}]}, "members[0].val.adress"),
])
def test_bad_arguments_name_message_and_field(conn: VppConnection, fake: FakeVpp, name: str,
                                              args: dict, field: str) -> None:
    before = sum(fake.calls.values())
    with pytest.raises(VppArgumentError) as e:
        conn.call(name, **args)
    assert e.value.message == name and e.value.field == field, str(e.value)
    assert str(e.value).startswith(f"{name}: {field}: ")
    assert sum(fake.calls.values()) == before          # nothing reached VPP


def test_unknown_message_and_dump_misuse(conn: VppConnection) -> None:
    with pytest.raises(VppArgumentError, match="not a request"):
        conn.call("sw_interface_frobnicate")
    with pytest.raises(VppArgumentError, match="use dump"):
        conn.call("sw_interface_dump")
    with pytest.raises(VppArgumentError, match="use call"):
        conn.dump("control_ping")


# ----------------------------------------------------------- typed errors

def test_nonzero_retval_is_a_typed_error(conn: VppConnection) -> None:
    with pytest.raises(VppApiError) as e:
        conn.call("sw_interface_set_flags", sw_if_index=77, flags=1)
    err = e.value
    assert (err.message, err.retval, err.name, err.text) == (
        "sw_interface_set_flags", -2, "INVALID_SW_IF_INDEX", "Invalid sw_if_index")
    assert err.arguments == {"sw_if_index": 77, "flags": 1}
    assert "sw_interface_set_flags: INVALID_SW_IF_INDEX (-2: Invalid sw_if_index)" in str(err)
    with pytest.raises(VppApiError, match="NO_SUCH_ENTRY"):
        conn.call("acl_del", acl_index=3)


def test_injected_failure_hits_the_nth_call(conn: VppConnection, fake: FakeVpp) -> None:
    fake.fail("create_loopback_instance", "UNSPECIFIED", nth=2)
    loopback(conn)
    with pytest.raises(VppApiError) as e:
        loopback(conn)
    assert e.value.retval == -1 and e.value.name == "UNSPECIFIED"
    loopback(conn)                                     # only once


# ----------------------------------------------------------- owner thread

def test_only_the_owner_thread_may_call(conn: VppConnection) -> None:
    caught: list[BaseException] = []

    def other() -> None:
        try:
            conn.call("control_ping")
        except BaseException as e:
            caught.append(e)

    t = threading.Thread(target=other, name="intruder")
    t.start()
    t.join()
    assert isinstance(caught[0], VppWrongThread)
    assert "intruder" in str(caught[0])
    conn.call("control_ping")                          # the owner still can


def test_ownership_can_be_handed_over(fake: FakeVpp) -> None:
    c = VppConnection(client_factory=fake.client_factory)
    c.connect()
    results: list[object] = []

    def worker() -> None:
        c.bind_owner()
        results.append(c.call("control_ping").vpe_pid)
        c.disconnect()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert results == [fake.pid]
    with pytest.raises(VppWrongThread):
        c.call("control_ping")


# -------------------------------------------------------------- pipelining

def test_pipeline_returns_replies_in_order(conn: VppConnection, fake: FakeVpp) -> None:
    conn.window = 16                                  # force several windows
    replies = conn.pipeline([("create_loopback_instance", {"is_specified": False})] * 40)
    ids = [r.sw_if_index for r in replies]
    assert ids == list(range(1, 41))
    mixed = conn.pipeline([
        ("sw_interface_set_flags", {"sw_if_index": 5, "flags": 1}),
        ("sw_interface_dump", {"sw_if_index": 5}),
        ("sw_interface_tag_add_del", {"sw_if_index": 5, "is_add": True, "tag": "pod-a"}),
        ("sw_interface_dump", {"name_filter_valid": True, "name_filter": "loop3"}),
        ("control_ping", {}),
    ])
    assert mixed[0].retval == 0
    assert [d.interface_name for d in mixed[1]] == ["loop4"] and mixed[1][0].flags == 3
    assert sorted(d.interface_name for d in mixed[3]) == ["loop3", "loop30", "loop31", "loop32", "loop33",
                                                          "loop34", "loop35", "loop36", "loop37", "loop38",
                                                          "loop39"]
    assert mixed[4].vpe_pid == fake.pid


def test_pipeline_raises_the_first_failure_with_its_index(conn: VppConnection, fake: FakeVpp) -> None:
    idx = loopback(conn)
    calls = [("sw_interface_tag_add_del", {"sw_if_index": idx, "is_add": True, "tag": "a"}),
             ("sw_interface_set_flags", {"sw_if_index": 99, "flags": 1}),
             ("sw_interface_set_flags", {"sw_if_index": 98, "flags": 1}),
             ("sw_interface_set_flags", {"sw_if_index": idx, "flags": 1})]
    with pytest.raises(VppApiError) as e:
        conn.pipeline(calls)
    assert e.value.index == 1 and e.value.arguments["sw_if_index"] == 99
    assert "pipeline item 1" in str(e.value)
    # VPP executed every request, the failing ones included
    assert fake.state.interfaces[idx].admin_up and fake.state.interfaces[idx].tag == "a"
    assert conn.connected


def _rates(c: VppConnection, n: int) -> tuple[float, float]:
    t = time.perf_counter()
    for _ in range(n):
        c.call("control_ping")
    sync = n / (time.perf_counter() - t)
    t = time.perf_counter()
    c.pipeline([("control_ping", {})] * n)
    piped = n / (time.perf_counter() - t)
    return sync, piped


def test_pipelining_rate_is_measured(conn: VppConnection, fake: FakeVpp, capsys: pytest.CaptureFixture) -> None:
    sync, piped = _rates(conn, 2000)
    fake.latency = 0.0001                              # a socket-like round trip
    sync_rt, piped_rt = _rates(conn, 1000)
    with capsys.disabled():
        print(f"\n[fake VPP] control_ping: synchronous {sync:.0f}/s, pipelined {piped:.0f}/s; "
              f"with 100us round trip: {sync_rt:.0f}/s vs {piped_rt:.0f}/s")
    assert sync > 0 and piped > 0


# --------------------------------------------------- restarts and failures

def test_restart_is_detected_and_reconnect_resyncs(conn: VppConnection, fake: FakeVpp) -> None:
    idx = loopback(conn)
    old_pid = conn.vpe_pid
    fake.restart()
    with pytest.raises(VppRestarted):
        conn.call("sw_interface_set_flags", sw_if_index=idx, flags=1)
    assert not conn.connected
    with pytest.raises(VppRestarted, match="reconnect first"):
        conn.call("control_ping")
    assert conn.reconnect() is True                   # a new VPP: program everything again
    assert conn.vpe_pid == fake.pid != old_pid
    assert [d.interface_name for d in conn.dump("sw_interface_dump")] == ["local0"]


def test_pid_change_without_socket_loss_is_a_restart(conn: VppConnection, fake: FakeVpp) -> None:
    old = conn.vpe_pid
    fake.pid += 1                                      # e.g. a socket proxied to a new VPP
    with pytest.raises(VppRestarted) as e:
        conn.check_alive()
    assert (e.value.old_pid, e.value.new_pid) == (old, old + 1)
    with pytest.raises(VppRestarted):                  # dumps end with a ping: checked there too
        conn.dump("sw_interface_dump")


def test_reconnect_backs_off_exponentially(conn: VppConnection, fake: FakeVpp) -> None:
    fake.stop()
    delays: list[float] = []

    def sleep(d: float) -> None:
        delays.append(d)
        if len(delays) == 4:
            fake.start()

    assert conn.reconnect(Backoff(base=0.1, factor=2.0, max=0.5), sleep=sleep) is True
    assert delays == [0.1, 0.2, 0.4, 0.5]
    assert conn.connected and conn.call("control_ping").vpe_pid == fake.pid


def test_reconnect_gives_up_after_max_attempts(conn: VppConnection, fake: FakeVpp) -> None:
    fake.stop()
    with pytest.raises(VppNotConnected):
        conn.reconnect(Backoff(base=0.0), max_attempts=3, sleep=lambda d: None)


def test_reconnect_to_the_same_vpp_is_not_a_restart(conn: VppConnection) -> None:
    assert conn.reconnect() is False


def test_a_hung_vpp_times_out(fake: FakeVpp) -> None:
    c = VppConnection(client_factory=fake.client_factory, timeout=0.2)
    c.connect()
    with fake._lock:                                   # VPP's main thread is stuck
        with pytest.raises(VppTimeout):
            c.call("control_ping")
    assert not c.connected
    assert c.reconnect() is False


def test_a_request_that_kills_vpp_surfaces_as_restart(conn: VppConnection, fake: FakeVpp) -> None:
    with pytest.raises(VppRestarted):
        conn.call("cnat_translation_update", translation={
            "vip": {"addr": "10.96.0.1", "port": 80, "sw_if_index": ALL}, "ip_proto": 6, "paths": []})
    assert fake.crashes == 1
    assert conn.reconnect() is True


def test_interface_events_are_polled(conn: VppConnection) -> None:
    conn.call("want_interface_events", enable_disable=1, pid=os.getpid())
    idx = loopback(conn)
    conn.call("sw_interface_set_flags", sw_if_index=idx, flags=1)
    conn.call("delete_loopback", sw_if_index=idx)
    events = [(e.sw_if_index, int(e.flags), bool(e.deleted)) for e in conn.poll_events()]
    assert events == [(idx, 0, False), (idx, 3, False), (idx, 0, True)]


# ------------------------------------------------------------ real VPP

@pytest.mark.vpp
@pytest.mark.skipif(not os.environ.get("VPP_BIN"), reason="VPP_BIN not set")
def test_against_a_real_vpp(capsys: pytest.CaptureFixture) -> None:
    from test_vpp_messages import running_vpp

    with running_vpp() as vpp:
        c = VppConnection(vpp.socket)
        c.connect()
        try:
            idx = loopback(c)
            c.pipeline([("sw_interface_set_flags", {"sw_if_index": idx, "flags": 1}),
                        ("sw_interface_add_del_address", {"sw_if_index": idx, "is_add": True,
                                                          "prefix": "10.250.0.1/24"})])
            assert [str(d.prefix) for d in c.dump("ip_address_dump", sw_if_index=idx, is_ipv6=False)] == \
                ["10.250.0.1/24"]
            with pytest.raises(VppApiError) as e:
                c.call("sw_interface_add_del_address", sw_if_index=idx, is_add=False, prefix="10.9.9.9/24")
            assert e.value.name == "ADDRESS_NOT_FOUND_FOR_INTERFACE"
            with pytest.raises(VppApiError) as e:
                c.call("sw_interface_set_table", sw_if_index=idx, is_ipv6=False, vrf_id=42)
            assert e.value.name == "NO_SUCH_FIB"
            sync, piped = _rates(c, 2000)
            with capsys.disabled():
                print(f"\n[real VPP {c.version}] control_ping: synchronous {sync:.0f}/s, pipelined {piped:.0f}/s")
            # VPP restarts underneath: detected, reconnected with backoff, state gone
            old_pid = c.vpe_pid
            vpp.stop()
            with pytest.raises(VppRestarted):
                c.call("control_ping")
            assert not c.connected
            vpp.start()
            assert c.reconnect(Backoff(base=0.05, max=0.5)) is True
            assert c.vpe_pid != old_pid
            assert [d.interface_name for d in c.dump("sw_interface_dump")] == ["local0"]
        finally:
            c.disconnect()
