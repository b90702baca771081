"""The ``vppagent-cni`` CNI plugin: a thin, fast client of the agent's CNI gRPC API.

Nothing here imports grpc, protobuf or the rest of vppagent: a plugin is
exec'd for every pod ADD/DEL, so start-up time is its latency.
"""
