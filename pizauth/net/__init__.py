"""The network child (docs/architecture.md "Network child"): never imported by the parent."""
