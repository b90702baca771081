"""The fixed skeleton: top-level ``cali-`` chains and the jumps into them.

Filter: ``cali-FORWARD`` polices pod traffic (egress of the source pod, then
ingress of the destination pod), ``cali-INPUT``/``cali-OUTPUT`` police
traffic to and from the host (pods to the host get their egress policy;
host endpoints; failsafe ports). Nat: ``cali-PREROUTING``/``cali-OUTPUT``
lead to the services, ``cali-POSTROUTING`` masquerades. Each built-in chain
gets exactly one rule of ours, at the top.
"""

from __future__ import annotations

from vppagent.dataplane.iptables.endpoints import (
    HEP_FROM_DISPATCH, HEP_TO_DISPATCH, WL_FROM_DISPATCH, WL_TO_DISPATCH, EndpointSettings, failsafe_chains,
)
from vppagent.dataplane.iptables.marks import Marks, hexmark
from vppagent.dataplane.iptables.model import ChainKey, HookKey, Rules

SVC_REJECT = "cali-svc-reject"
SERVICES = "cali-SERVICES"
NODEPORTS = "cali-NODEPORTS"
SVC_MASQ = "cali-svc-masq"
NAT_OUTGOING = "cali-nat-outgoing"
WL_TO_HOST = "cali-wl-to-host"
# ICMPv6 a pod must be able to send to its host whatever its egress policy
# (router/neighbour solicitation and advertisement, MLD): without them IPv6 breaks.
NDP_TYPES = (130, 131, 132, 133, 135, 136, 143)


def hook(family: int, table: str, builtin: str, target: str) -> tuple[HookKey, Rules]:
    return HookKey(family, table, builtin), Rules.render(builtin, [f"-j {target}"])


def filter_chains(family: int, settings: EndpointSettings, to_host_action: str) -> dict:
    m: Marks = settings.marks
    prefixes = settings.interface_prefixes
    clear = f"-j MARK --set-xmark {hexmark(0, m.policy_bits)}"
    accepted = f"-m mark --mark {hexmark(m.accept, m.accept)}"
    untracked = f"{accepted} -m conntrack --ctstate UNTRACKED -j ACCEPT"
    reject = f"-m conntrack --ctstate NEW -j {SVC_REJECT}"
    chains = {
        "cali-FORWARD": [
            clear, reject,
            *[f"-i {p}+ -j {WL_FROM_DISPATCH}" for p in prefixes],
            *[f"-o {p}+ -j {WL_TO_DISPATCH}" for p in prefixes],
            f"{accepted} -j ACCEPT",
        ],
        "cali-INPUT": [
            untracked, reject,
            *[f"-i {p}+ -g {WL_TO_HOST}" for p in prefixes],
            clear, f"-j {HEP_FROM_DISPATCH}", f"{accepted} -j ACCEPT",
        ],
        "cali-OUTPUT": [
            untracked, reject,
            *[f"-o {p}+ -j RETURN" for p in prefixes],     # host to its pods: not policed (as Felix)
            clear, f"-j {HEP_TO_DISPATCH}", f"{accepted} -j ACCEPT",
        ],
        WL_TO_HOST: (
            [f"-p ipv6-icmp -m icmp6 --icmpv6-type {t} -j ACCEPT" for t in NDP_TYPES] if family == 6 else []
        ) + [f"-j {WL_FROM_DISPATCH}", f"-j {to_host_action}"],
    }
    out: dict = {ChainKey(family, "filter", n): Rules.render(n, b) for n, b in chains.items()}
    out.update(failsafe_chains(family, settings))
    for builtin in ("INPUT", "FORWARD", "OUTPUT"):
        k, v = hook(family, "filter", builtin, f"cali-{builtin}")
        out[k] = v
    return out


def nat_chains(family: int, marks: Marks) -> dict:
    q = marks.masq
    chains = {
        "cali-PREROUTING": [f"-j {SERVICES}"],
        "cali-OUTPUT": [f"-j {SERVICES}"],
        "cali-POSTROUTING": [f"-j {SVC_MASQ}", f"-j {NAT_OUTGOING}"],
        SVC_MASQ: [f"-m mark ! --mark {hexmark(q, q)} -j RETURN",
                   f"-j MARK --set-xmark {hexmark(0, q)}",
                   "-j MASQUERADE --random-fully"],
    }
    out: dict = {ChainKey(family, "nat", n): Rules.render(n, b) for n, b in chains.items()}
    for builtin in ("PREROUTING", "OUTPUT", "POSTROUTING"):
        k, v = hook(family, "nat", builtin, f"cali-{builtin}")
        out[k] = v
    return out


def static_chains(family: int, settings: EndpointSettings, to_host_action: str) -> dict:
    out = filter_chains(family, settings, to_host_action)
    out.update(nat_chains(family, settings.marks))
    return out


def raw_chains(family: int, marks: Marks) -> dict:
    """Untracked policy: raw PREROUTING/OUTPUT dispatch to host endpoints."""
    clear = f"-j MARK --set-xmark {hexmark(0, marks.policy_bits)}"
    out: dict = {
        ChainKey(family, "raw", "cali-PREROUTING"): Rules.render("cali-PREROUTING", [clear, f"-j {HEP_FROM_DISPATCH}"]),
        ChainKey(family, "raw", "cali-OUTPUT"): Rules.render("cali-OUTPUT", [clear, f"-j {HEP_TO_DISPATCH}"]),
    }
    for builtin in ("PREROUTING", "OUTPUT"):
        k, v = hook(family, "raw", builtin, f"cali-{builtin}")
        out[k] = v
    return out


def mangle_chains(family: int, marks: Marks) -> dict:
    """PreDNAT policy: mangle PREROUTING dispatch to host endpoints."""
    clear = f"-j MARK --set-xmark {hexmark(0, marks.policy_bits)}"
    # Untracked packets the raw table already allowed skip preDNAT policy (and keep their mark).
    untracked = f"-m mark --mark {hexmark(marks.accept, marks.accept)} -m conntrack --ctstate UNTRACKED -j RETURN"
    out: dict = {
        ChainKey(family, "mangle", "cali-PREROUTING"): Rules.render(
            "cali-PREROUTING", [untracked, clear, f"-j {HEP_FROM_DISPATCH}"]),
    }
    k, v = hook(family, "mangle", "PREROUTING", "cali-PREROUTING")
    out[k] = v
    return out
