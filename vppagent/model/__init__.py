"""The canonical model: resources in, dataplane-neutral updates out."""
