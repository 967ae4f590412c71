"""The network child (DESIGN.md): never imported by the parent."""
