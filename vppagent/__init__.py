"""vppagent: a Calico-model node networking agent."""

__version__ = "0.1.0"
