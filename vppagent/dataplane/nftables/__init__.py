"""nftables dataplane: Calico policy, host endpoints and services in one private inet table."""

from vppagent.dataplane.nftables.config import ConfigError, NftablesConfig
from vppagent.dataplane.nftables.dataplane import NftablesDataplane
from vppagent.dataplane.nftables.runner import CommandRunner, NftError

__all__ = ["CommandRunner", "ConfigError", "NftError", "NftablesConfig", "NftablesDataplane"]
