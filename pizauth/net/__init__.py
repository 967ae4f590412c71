"""The network child: redirect listeners and token requests; never imported by the parent."""
