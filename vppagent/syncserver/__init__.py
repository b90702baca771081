"""The shared sync layer (``vppagent sync``): one calculation, many node agents."""
