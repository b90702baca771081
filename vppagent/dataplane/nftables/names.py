"""Names of everything in the table, derived deterministically from the model.

Names must be nft identifiers and must never be keywords; every name here
contains a hyphen, which no nft keyword does. Anything not already a safe
short token is hashed, so two model objects never share a name.
"""

from __future__ import annotations

import hashlib
import re

from vppagent.model.updates import PolicyID

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]{0,31}$")
_SET_ID = re.compile(r"^([a-z]):([0-9a-f]{8,40})$")


def digest(text: str, length: int = 16) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def _token(text: str) -> str:
    return text if _SAFE.match(text) else "h" + digest(text)


# -- static objects ----------------------------------------------------------------------

WL_FROM = "wl-from"            # ifname : verdict, workload egress
WL_TO = "wl-to"                # ifname : verdict, workload ingress
HEP_IN = "hep-in"              # host endpoint ingress (filter input)
HEP_OUT = "hep-out"            # host endpoint egress (filter output)
HEP_PRE = "hep-pre"            # preDNAT ingress (mangle prerouting)
HEP_RAW_IN = "hep-raw-in"      # untracked ingress (raw prerouting)
HEP_RAW_OUT = "hep-raw-out"    # untracked egress (raw output)
HEP_FWD_IN = "hep-fwd-in"      # applyOnForward, arriving on the host endpoint
HEP_FWD_OUT = "hep-fwd-out"    # applyOnForward, leaving through the host endpoint
ENDPOINT_MAPS = (WL_FROM, WL_TO, HEP_IN, HEP_OUT, HEP_PRE, HEP_RAW_IN, HEP_RAW_OUT, HEP_FWD_IN, HEP_FWD_OUT)

SVC_DISPATCH = "svc-dispatch"  # nat: frontends → service chains
SVC_CHECK = "svc-check"        # filter: frontends without endpoints → reject
SVC_REJECT = "svc-reject"
MARK_MASQ = "mark-masq"


def svc_ips(family: int) -> str:
    return f"svc-ips-{family}"


def svc_nodeports(family: int) -> str:
    return f"svc-nodeports-{family}"


def svc_noep(family: int) -> str:
    return f"svc-noep-{family}"


def svc_noep_nodeports(family: int) -> str:
    return f"svc-noep-np-{family}"


def pools_all(family: int) -> str:
    return f"pools-all-{family}"


def pools_masq(family: int) -> str:
    return f"pools-masq-{family}"


# -- per-object names --------------------------------------------------------------------

def ipset(set_id: str, family: int) -> str:
    """``s:abc…`` → ``s-abc…-4``; anything else is hashed."""
    m = _SET_ID.match(set_id)
    core = f"{m.group(1)}-{m.group(2)}" if m else "x-" + digest(set_id, 20)
    return f"{core}-{family}"


def policy_chain(pid: PolicyID, inbound: bool) -> str:
    return ("pi-" if inbound else "po-") + digest(str(pid))


def profile_chain(profile_id: str, inbound: bool) -> str:
    return ("pri-" if inbound else "pro-") + digest(profile_id)


def workload_chain(iface: str, to_workload: bool) -> str:
    """Felix's tw-/fw-: to the workload is its ingress, from it its egress."""
    return ("tw-" if to_workload else "fw-") + _token(iface)


def host_chain(kind: str, iface: str) -> str:
    """kind: hi/ho (filter), hp (preDNAT), hui/huo (untracked), hfi/hfo (forward)."""
    return f"{kind}-{_token(iface)}"


def service_chain(frontend_id: str) -> str:
    return "svc-" + digest(frontend_id)


def backend_chain(frontend_id: str, backend: str) -> str:
    return "sep-" + digest(f"{frontend_id}|{backend}")


def affinity_set(frontend_id: str, backend: str, timeout: int) -> str:
    """The timeout is part of the name: a new timeout is a new set, never a redeclaration."""
    return "aff-" + digest(f"{frontend_id}|{backend}|{timeout}")
