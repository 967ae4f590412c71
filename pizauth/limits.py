"""Bounds on everything a provider, a peer process or a client can send us.

One place for the numbers, so that the network child refuses what the parent
would refuse, and no frame the parent builds from accepted values can exceed
ipc.MAX_MESSAGE. docs/protocol.md explains each choice.
"""

# An access or refresh token. Real ones are JWTs of up to ~5 KiB (Azure) or
# opaque strings of a few hundred bytes (Google); 16 KiB leaves room for growth
# while keeping a refresh frame (token URI, client id and secret, refresh
# token) and a dump of many accounts far below MAX_MESSAGE.
MAX_TOKEN = 16 * 1024

# A device code (RFC 8628) is a credential of the same kind as a refresh token.
MAX_DEVICE_CODE = MAX_TOKEN

# A client secret, from the config or from client_secret_cmd.
MAX_CLIENT_SECRET = 4 * 1024

# A URI from the config or from provider metadata.
MAX_URI = 8 * 1024

# Text a provider chooses (error, error_description, user codes...): longer text
# is cut, never refused, so the user still learns what went wrong.
MAX_PROVIDER_TEXT = 1024

# Seconds; larger expires_in / interval values are clamped to this (ten years)
# rather than trusted, so no arithmetic on them can overflow or wedge a timer.
MAX_SECONDS = 10 * 365 * 24 * 3600

# A provider reply body (token, device, metadata, revocation endpoints).
MAX_REPLY_BODY = 1024 * 1024
