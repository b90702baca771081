"""Dataplanes and the registry the daemon picks one from.

Backends are registered by import path ("module:attribute") and imported only
when chosen, so that selecting ``none`` or ``iptables`` never imports
vpp_papi, and importing this package never imports pyroute2.

A factory is called with the ``dataplane:`` config section minus ``type``;
if the target has a ``from_config`` classmethod that is called instead.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, Union

from vppagent.dataplane.base import Dataplane, DataplaneStatus, ReconcilingDataplane

Factory = Callable[[dict[str, Any]], Dataplane]

_REGISTRY: dict[str, Union[Factory, str]] = {
    "none": "vppagent.dataplane.none:NoneDataplane",
    "vpp": "vppagent.dataplane.vpp:VppDataplane",
    "iptables": "vppagent.dataplane.iptables:IptablesDataplane",
    "nftables": "vppagent.dataplane.nftables:NftablesDataplane",
}


def register_dataplane(type_name: str, factory: Union[Factory, str]) -> None:
    """Register (or replace) a backend: a callable, or a lazy "module:attribute" path."""
    if isinstance(factory, str) and ":" not in factory:
        raise ValueError(f"dataplane factory path must be 'module:attribute', got {factory!r}")
    _REGISTRY[type_name] = factory


def known_dataplanes() -> list[str]:
    return sorted(_REGISTRY)


def _resolve(type_name: str) -> Any:
    target = _REGISTRY[type_name]
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise RuntimeError(f"dataplane {type_name!r} is unavailable ({target}): {exc}") from exc


def create_dataplane(config: Mapping[str, Any], node_name: str | None = None) -> Dataplane:
    """Build the dataplane named by ``config["type"]`` with the rest as options.

    ``node_name`` (the agent's) becomes the ``nodeName`` option unless the
    config sets one: every backend accepts it.
    """
    type_name = config.get("type")
    if type_name not in _REGISTRY:
        raise ValueError(
            f"unknown dataplane type {type_name!r}; known types: {', '.join(known_dataplanes())}"
        )
    options = {k: v for k, v in config.items() if k != "type"}
    if node_name is not None:
        options.setdefault("nodeName", node_name)
    target = _resolve(str(type_name))
    factory = getattr(target, "from_config", target)
    dataplane = factory(options)
    if not isinstance(dataplane, Dataplane):
        raise TypeError(f"dataplane factory for {type_name!r} returned {type(dataplane).__name__}")
    return dataplane


__all__ = [
    "Dataplane", "DataplaneStatus", "ReconcilingDataplane", "create_dataplane",
    "known_dataplanes", "register_dataplane",
]
