"""Tags and names that mark VPP objects as ours.

VPP keeps a free-form tag (at most 63 characters plus the NUL) on
interfaces and ACLs and a name on IP tables; everything the agent creates
carries ``vppagent:`` first, so a dump tells ours from anyone else's and a
restarted agent can adopt what it made.  Objects without tags (npol, cnat
features) are tracked in the state file instead (``store.py``).
"""

from __future__ import annotations

import hashlib
import re

PREFIX = "vppagent:"
TAG_LIMIT = 63
_IFNAME = re.compile(r"^[A-Za-z0-9_.\-@]{1,15}$")


class TagError(ValueError):
    """A name that cannot be carried in a VPP tag."""


def _tag(text: str) -> str:
    tag = PREFIX + text
    if len(tag) > TAG_LIMIT or not tag.isascii():
        raise TagError(f"VPP tag {tag!r} is longer than {TAG_LIMIT} characters or not ASCII")
    return tag


def check_ifname(name: str) -> str:
    """A Linux interface name (the pod's host-side name): ≤ 15 safe characters."""
    if not _IFNAME.match(name):
        raise TagError(f"invalid interface name {name!r} (1-15 of A-Z a-z 0-9 _ . - @)")
    return name


def is_ours(tag: str) -> bool:
    return tag.startswith(PREFIX)


def pod_interface_tag(ifname: str) -> str:
    return _tag("pod:" + check_ifname(ifname))


def loopback_tag(owner: str) -> str:
    """The pod's loopback (``owner`` = its interface name) or the shared one (``""``)."""
    return _tag("lo:" + (check_ifname(owner) if owner else "*"))


def vrf_name(ifname: str, af: int) -> str:
    return _tag(f"vrf:{check_ifname(ifname)}:{af}")


def epoch_name(epoch: str) -> str:
    return _tag("epoch:" + epoch)


def acl_tag(digest: str) -> str:
    return _tag("acl:" + digest)


def parse(tag: str) -> tuple[str, str] | None:
    """``vppagent:pod:cali1`` → ``("pod", "cali1")``; None when not ours."""
    if not is_ours(tag):
        return None
    kind, _, rest = tag[len(PREFIX):].partition(":")
    return (kind, rest) if kind else None


def parse_loopback_owner(rest: str) -> str:
    return "" if rest == "*" else rest


def parse_vrf(rest: str) -> tuple[str, int] | None:
    name, _, af = rest.rpartition(":")
    return (name, int(af)) if name and af in ("4", "6") else None


def digest(text: str, size: int = 16) -> str:
    """A short stable digest for content-addressed objects."""
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def memif_socket_path(ifname: str, netns: str) -> str:
    """An abstract socket inside the pod's netns (nothing on any filesystem)."""
    ns = netns if "/" in netns else f"/var/run/netns/{netns}"
    return f"abstract:vppagent-memif-{check_ifname(ifname)},netns_name={ns}"


def memif_socket_owner(filename: str) -> str | None:
    m = re.match(r"^abstract:vppagent-memif-([^,]+),", filename)
    return m.group(1) if m else None
