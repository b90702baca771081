"""The RFC 2544 NDR/PDR search against a simulated device (knee, noise,
non-monotonic blips), the TRex trial sequence against a fake client, the
profiles without TRex, and the runner's report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from perf.trex.runner import TrexTrial, load_profile, main as runner_main
from perf.trex.search import SearchConfig, SearchError, TrialResult, find_ndr_pdr, format_table
from perf.trex.simulate import SimulatedDut

CFG = SearchConfig(min_rate=1.0, max_rate=100.0, resolution=0.5, loss_threshold=0.005, trial_duration=1.0)


def pdr_rate(capacity: float, threshold: float) -> float:
    """Where the simulated loss (rate - cap) / rate reaches the threshold."""
    return capacity / (1 - threshold)


@pytest.mark.parametrize("capacity", [5.3, 37.0, 63.4, 99.2])
def test_clean_device_converges_within_resolution(capacity: float) -> None:
    dut = SimulatedDut(capacity=capacity)
    r = find_ndr_pdr(dut, CFG)
    assert r.ndr.converged and r.pdr.converged
    assert capacity - CFG.resolution <= r.ndr.rate <= capacity
    assert r.ndr.width is not None and r.ndr.width <= CFG.resolution
    expected_pdr = min(pdr_rate(capacity, CFG.loss_threshold), CFG.max_rate)
    assert expected_pdr - CFG.resolution <= r.pdr.rate <= expected_pdr
    assert r.ndr.rate <= r.pdr.rate
    # every reported rate was actually measured passing
    assert any(m.rate == r.ndr.rate and m.loss_ratio == 0 for m in r.measurements)
    assert any(m.rate == r.pdr.rate and m.loss_ratio <= CFG.loss_threshold for m in r.measurements)


def test_trial_count_is_logarithmic() -> None:
    dut = SimulatedDut(capacity=41.7)
    r = find_ndr_pdr(dut, CFG)
    ndr_trials = [m for m in r.measurements if m.purpose.startswith("ndr")]
    assert len(ndr_trials) <= CFG.bisections_needed + 3          # max, min, bisection, confirmation
    assert r.ndr.trials == len(ndr_trials)
    assert len(r.measurements) == len(dut.trials)
    assert all(d == CFG.trial_duration for _, d in dut.trials)


@pytest.mark.parametrize("resolution", [4.0, 1.0, 0.25, 0.05])
def test_resolution_is_honoured(resolution: float) -> None:
    cfg = SearchConfig(min_rate=1, max_rate=100, resolution=resolution, trial_duration=1)
    r = find_ndr_pdr(SimulatedDut(capacity=58.123), cfg)
    assert r.ndr.width is not None and r.ndr.width <= resolution
    assert 58.123 - resolution <= r.ndr.rate <= 58.123
    finer = find_ndr_pdr(SimulatedDut(capacity=58.123), SearchConfig(1, 100, resolution / 4, trial_duration=1))
    assert finer.ndr.rate >= r.ndr.rate - 1e-9                  # finer never worse


def test_line_rate_device_needs_one_trial_per_result() -> None:
    r = find_ndr_pdr(SimulatedDut(capacity=150), CFG)
    assert r.ndr.rate == r.pdr.rate == 100 and r.ndr.converged
    assert [m.purpose for m in r.measurements] == ["ndr", "ndr-confirm"]


def test_device_dropping_at_minimum_has_no_ndr() -> None:
    r = find_ndr_pdr(SimulatedDut(capacity=0.5), CFG)
    assert r.ndr.rate is None and r.ndr.upper == CFG.min_rate
    assert r.pdr.rate is None
    assert "NDR" in format_table(r) and " - " in format_table(r)


def test_pdr_search_reuses_ndr_trials() -> None:
    r = find_ndr_pdr(SimulatedDut(capacity=63.4), CFG)
    pdr_trials = [m for m in r.measurements if m.purpose.startswith("pdr")]
    assert len(pdr_trials) <= 4                                  # starts from [NDR, lowest PDR failure]


def test_soft_knee_makes_pdr_above_ndr() -> None:
    dut = SimulatedDut(capacity=70.0, knee=10.0)                 # tiny losses from 60 up
    r = find_ndr_pdr(dut, CFG)
    assert 60 - CFG.resolution <= r.ndr.rate <= 60.0
    assert r.pdr.rate > 69.0 and r.ndr.rate < r.pdr.rate


def test_blip_below_the_knee_is_not_reported_as_ndr() -> None:
    """Loss in a narrow band (non-monotonic): the reported NDR is confirmed
    loss-free, sits below the knee, and is not inside the blip."""
    dut = SimulatedDut(capacity=80.0, blips=((49.0, 52.0, 0.0002),))
    r = find_ndr_pdr(dut, CFG)
    assert r.ndr.rate is not None and r.ndr.rate <= 80.0
    assert not 49.0 <= r.ndr.rate <= 52.0
    assert dut.loss_at(r.ndr.rate) == 0
    assert r.ndr.rate <= r.pdr.rate


def test_noisy_devices_keep_ndr_below_pdr_and_close_to_the_knee() -> None:
    for seed in range(60):
        capacity = 10 + (seed * 7.3) % 85
        dut = SimulatedDut(capacity=capacity, noise=0.01, seed=seed,
                           blips=((capacity * 0.5, capacity * 0.52, 0.001),) if seed % 3 == 0 else ())
        cfg = SearchConfig(1, 100, 0.5, loss_threshold=0.005, trial_duration=1, max_iterations=20)
        r = find_ndr_pdr(dut, cfg)
        assert r.ndr.rate is not None and r.pdr.rate is not None, (seed, r)
        assert r.ndr.rate <= r.pdr.rate, (seed, r.ndr, r.pdr)
        # within the noise band of the knee (3 sigma + resolution), or below a blip
        assert r.ndr.rate <= capacity * 1.03 + cfg.resolution, (seed, capacity, r.ndr)
        assert r.pdr.rate <= pdr_rate(capacity * 1.03, 0.005) + cfg.resolution, (seed, capacity, r.pdr)
        confirmed = [m for m in r.measurements if m.purpose == "ndr-confirm" and m.rate == r.ndr.rate]
        assert confirmed and confirmed[-1].loss_ratio == 0


def test_max_iterations_bounds_the_search() -> None:
    cfg = SearchConfig(1, 100, 0.01, trial_duration=1, max_iterations=3)
    r = find_ndr_pdr(SimulatedDut(capacity=33.3), cfg)
    assert not r.ndr.converged and r.ndr.width is not None and r.ndr.width > 0.01
    assert r.ndr.rate is not None and r.ndr.rate <= 33.3
    assert r.ndr.trials <= 2 + 3 + 1


def test_confirm_duration_is_used() -> None:
    dut = SimulatedDut(capacity=40)
    cfg = SearchConfig(1, 100, 1, trial_duration=2, confirm_duration=30)
    r = find_ndr_pdr(dut, cfg)
    assert {d for _, d in dut.trials} == {2, 30}
    assert all(m.duration == 30 for m in r.measurements if m.purpose.endswith("confirm"))


@pytest.mark.parametrize("kwargs, field", [
    ({"min_rate": 0}, "min_rate"),
    ({"min_rate": -1}, "min_rate"),
    ({"max_rate": 1.0}, "max_rate"),
    ({"resolution": 0}, "resolution"),
    ({"resolution": 200}, "resolution"),
    ({"loss_threshold": 1.0}, "loss_threshold"),
    ({"loss_threshold": -0.1}, "loss_threshold"),
    ({"trial_duration": 0}, "trial_duration"),
    ({"confirm_duration": -1}, "confirm_duration"),
    ({"max_iterations": 0}, "max_iterations"),
    ({"confirm_retries": -1}, "confirm_retries"),
    ({"max_rate": math.nan}, "max_rate"),
    ({"resolution": math.inf}, "resolution"),
])
def test_bad_parameters_are_rejected(kwargs: dict, field: str) -> None:
    base = dict(min_rate=1.0, max_rate=100.0, resolution=0.5, trial_duration=1.0)
    with pytest.raises(SearchError, match=f"^{field}:"):
        find_ndr_pdr(SimulatedDut(capacity=50), SearchConfig(**{**base, **kwargs}))


@pytest.mark.parametrize("result, text", [
    (TrialResult(offered=0, received=0), "impossible counts"),
    (TrialResult(offered=10, received=11), "received 11 > offered 10"),
    ((10, 10), "not a TrialResult"),
])
def test_impossible_trial_results_are_rejected(result: Any, text: str) -> None:
    with pytest.raises(SearchError, match=text):
        find_ndr_pdr(lambda rate, d: result, CFG)


# ----------------------------------------------------------------- TRex side

class FakeStlClient:
    """Records the calls TrexTrial makes; the DUT decides what comes back."""

    def __init__(self, dut: SimulatedDut) -> None:
        self.dut = dut
        self.calls: list[tuple[str, Any]] = []
        self.counts: dict[int, dict[str, int]] = {}

    def reset(self, ports: list[int]) -> None:
        self.calls.append(("reset", tuple(ports)))

    def add_streams(self, streams: list, ports: list[int]) -> None:
        self.calls.append(("add_streams", (tuple(streams), tuple(ports))))

    def clear_stats(self) -> None:
        self.calls.append(("clear_stats", None))
        self.counts = {}

    def start(self, ports: list[int], mult: str, duration: float, force: bool) -> None:
        self.calls.append(("start", (tuple(ports), mult, duration)))
        rate = float(mult.rstrip("%"))
        for p in ports:
            r = self.dut(rate, duration)
            self.counts.setdefault(p, {"opackets": 0, "ipackets": 0})["opackets"] += r.offered
            rx = 1 - p
            self.counts.setdefault(rx, {"opackets": 0, "ipackets": 0})["ipackets"] += r.received

    def wait_on_traffic(self, ports: list[int], timeout: float) -> None:
        self.calls.append(("wait_on_traffic", (tuple(ports), timeout)))

    def get_stats(self) -> dict:
        return {p: dict(c) for p, c in self.counts.items()}


def test_trex_trial_sequence_and_counting() -> None:
    client = FakeStlClient(SimulatedDut(capacity=50))
    trial = TrexTrial(client, {0: ["s0"], 1: ["s1"]}, {0: 1, 1: 0}, settle=0)
    ok = trial(40.0, 2.0)
    assert ok.offered == 2 * int(40 * 148_810 * 2) and ok.loss_ratio == 0
    assert [name for name, _ in client.calls] == ["reset", "add_streams", "add_streams", "clear_stats", "start",
                                                  "wait_on_traffic"]
    assert client.calls[0] == ("reset", (0, 1))
    assert client.calls[4] == ("start", ((0, 1), "40.0%", 2.0))
    lossy = trial(60.0, 1.0)
    assert lossy.loss_ratio == pytest.approx((60 - 50) / 60, rel=1e-3)
    r = find_ndr_pdr(TrexTrial(FakeStlClient(SimulatedDut(capacity=33)), {0: ["s"]}, {0: 1}, settle=0), CFG)
    assert 32.5 <= r.ndr.rate <= 33


@pytest.mark.parametrize("name", ["udp_64b_flows", "imix", "pod_to_service"])
def test_profiles_load_without_trex(name: str) -> None:
    module = load_profile(name)
    assert hasattr(module, "register") and hasattr(module.register(), "get_streams")
    plan = module.describe()
    assert plan["streams"] and all(s["flows"] >= 1 for s in plan["streams"])
    back = module.describe(direction=1)
    assert back["streams"][0]["dst"] != plan["streams"][0]["dst"]
    if not module.HAVE_TREX:
        with pytest.raises(RuntimeError, match="TRex"):
            module.register().get_streams()


def test_profile_plans() -> None:
    udp = load_profile("udp_64b_flows").describe(flows=100_000)
    assert udp["avg_frame_size"] == 64 and udp["streams"][0]["flows"] == 100_000
    with pytest.raises(ValueError):
        load_profile("udp_64b_flows").describe(frame_size=60)
    imix = load_profile("imix").describe()
    assert [(s["frame_size"], s["pps_weight"]) for s in imix["streams"]] == [(64, 7), (570, 4), (1518, 1)]
    assert imix["avg_frame_size"] == pytest.approx(353.83, abs=0.01)
    svc = load_profile("pod_to_service").describe(vip="10.96.0.10", port=53, proto="udp")
    (s,) = svc["streams"]
    assert (s["dst"], s["dport"], s["src_range"]) == ("10.96.0.10", 53, ("10.65.0.2", "10.65.3.254"))
    with pytest.raises(ValueError):
        load_profile("pod_to_service").describe(proto="sctp")


def test_runner_writes_a_report_with_the_simulator(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r" / "report.json"
    rc = runner_main(["--simulate", "capacity=63.4,noise=0.002,seed=3", "--duration", "1", "--profile", "imix",
                      "--link-gbps", "10", "--output", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["meta"]["profile"] == "imix" and report["meta"]["simulated"]["capacity"] == 63.4
    assert 62 <= report["ndr"]["rate"] <= report["pdr"]["rate"] <= 64.5
    assert report["ppsAtMaxRate"] == pytest.approx(10e9 / ((353.83 + 20) * 8), rel=1e-3)
    assert len(report["measurements"]) >= 5
    table = (tmp_path / "r" / "report.json.txt").read_text()
    assert "NDR" in table and "Mpps" in table and table in capsys.readouterr().out


def test_runner_rejects_bad_parameters_and_missing_trex(capsys: pytest.CaptureFixture) -> None:
    assert runner_main(["--simulate", "capacity=50", "--resolution", "0", "--output", "/dev/null"]) == 2
    assert "resolution" in capsys.readouterr().err
    rc = runner_main(["--server", "127.0.0.1", "--output", "/dev/null"])
    err = capsys.readouterr().err
    assert rc == 3 and ("TREX_CLIENT_PATH" in err or "cannot reach the TRex server" in err)
