"""Policy and profile chains: ``cali-pi-``/``cali-po-`` and ``cali-pri-``/``cali-pro-``.

A policy chain holds its rules in order. Allow sets the accept mark and
returns; Pass sets the pass mark and returns; Deny drops; Log logs and
carries on. The endpoint chain (``endpoints.py``) decides what the marks mean.
Untracked policies live in the raw table and preDNAT ones in mangle, with
the same rule language.
"""

from __future__ import annotations

from typing import Iterable

from vppagent.dataplane.iptables.marks import hexmark
from vppagent.dataplane.iptables.match import MatchContext, compile_rule
from vppagent.dataplane.iptables.model import ChainKey, Rules
from vppagent.dataplane.iptables.names import chain_name
from vppagent.model.resources import Action
from vppagent.model.updates import PolicyID, ProfileUpdate, RenderedPolicy, RenderedRule


def policy_table(policy: RenderedPolicy) -> str:
    if policy.untracked:
        return "raw"
    if policy.pre_dnat:
        return "mangle"
    return "filter"


def policy_chain(inbound: bool, pid: PolicyID) -> str:
    return chain_name("cali-pi-" if inbound else "cali-po-", f"{pid.tier}/{pid.name}")


def profile_chain(inbound: bool, profile_id: str) -> str:
    return chain_name("cali-pri-" if inbound else "cali-pro-", profile_id)


def rule_bodies(rule: RenderedRule, ctx: MatchContext, log_prefix: str) -> list[str]:
    """The iptables rules for one Calico rule (none if it cannot match here)."""
    m = compile_rule(rule, ctx)
    if m is None:
        return []
    out = list(m.setup)
    head = f"{m.final} " if m.final else ""
    accept, pass_ = ctx.marks.accept, ctx.marks.pass_
    if rule.action is Action.ALLOW:
        out += [f"{head}-j MARK --set-xmark {hexmark(accept, accept)}",
                f"-m mark --mark {hexmark(accept, accept)} -j RETURN"]
    elif rule.action is Action.PASS:
        out += [f"{head}-j MARK --set-xmark {hexmark(pass_, pass_)}",
                f"-m mark --mark {hexmark(pass_, pass_)} -j RETURN"]
    elif rule.action is Action.DENY:
        out.append(f"{head}-j DROP")
    else:   # Log: record and continue with the next rule
        out.append(f'{head}-j LOG --log-prefix "{log_prefix}"')
    return out


def rules_chain(chain: str, rules: Iterable[RenderedRule], ctx: MatchContext, log_prefix: str) -> Rules:
    bodies: list[str] = []
    for rule in rules:
        bodies += rule_bodies(rule, ctx, log_prefix)
    return Rules.render(chain, bodies)


def policy_chains(pid: PolicyID, policy: RenderedPolicy, ctx: MatchContext,
                  log_prefix: str) -> dict[ChainKey, Rules]:
    table = policy_table(policy)
    out: dict[ChainKey, Rules] = {}
    for inbound, rules in ((True, policy.inbound_rules), (False, policy.outbound_rules)):
        name = policy_chain(inbound, pid)
        out[ChainKey(ctx.family, table, name)] = rules_chain(name, rules, ctx, log_prefix)
    return out


def profile_chains(profile: ProfileUpdate, ctx: MatchContext, log_prefix: str) -> dict[ChainKey, Rules]:
    out: dict[ChainKey, Rules] = {}
    for inbound, rules in ((True, profile.inbound_rules), (False, profile.outbound_rules)):
        name = profile_chain(inbound, profile.id)
        out[ChainKey(ctx.family, "filter", name)] = rules_chain(name, rules, ctx, log_prefix)
    return out
