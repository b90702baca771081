"""The reference evaluator (and `vppagent eval`) answers every conformance case."""

from __future__ import annotations

import contextlib
import io
import json
from functools import lru_cache

import pytest
import yaml

from conformance_suite import Case, load_cases
from vppagent.cli import main
from vppagent.evaluator import build_evaluator, make_packet
from vppagent.manifests.loader import load_objects

CASES = load_cases()


@lru_cache(maxsize=None)
def evaluator_for(file: str):
    case = next(c for c in CASES if c.file == file)
    return build_evaluator(load_objects(case.manifests, file))


def test_enough_cases():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case(case: Case):
    ev = evaluator_for(case.file)
    verdict = ev.evaluate(make_packet(ev, case.src, case.dst, case.icmp))
    explanation = verdict.explain()
    assert verdict.verdict == case.expect, explanation
    if case.egress:
        assert verdict.egress.verdict == case.egress, explanation
    if case.ingress:
        assert verdict.ingress.verdict == case.ingress, explanation
    if case.decided_by:
        assert verdict.deciding.decided_by == case.decided_by, explanation


@pytest.mark.parametrize("file", sorted({c.file for c in CASES}))
def test_cli_answers_every_case(file, tmp_path):
    cases = [c for c in CASES if c.file == file]
    (tmp_path / "m.yaml").write_text(yaml.safe_dump_all(cases[0].manifests))
    for case in cases:
        argv = ["eval", "--manifests", str(tmp_path), "--from", case.src, "--to", case.dst, "--json"]
        if case.icmp:
            argv += ["--icmp", case.icmp]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = main(argv)
        result = json.loads(out.getvalue())
        assert result["verdict"] == case.expect, case.id
        assert rc == (0 if case.expect == "allow" else 1)
