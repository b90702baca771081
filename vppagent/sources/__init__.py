"""Sources: where resources come from (file manifests, Kubernetes, etcd).

A source only produces resource events; it never touches a dataplane.
"""
