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

# An OAuth error code (RFC 6749 §5.2: `invalid_client`, `slow_down`...): short ASCII.
MAX_ERROR_CODE = 64

# Seconds; larger expires_in / interval values are clamped to this (ten years)
# rather than trusted, so no arithmetic on them can overflow or wedge a timer.
MAX_SECONDS = 10 * 365 * 24 * 3600

# A provider reply body (token, device, metadata, revocation endpoints).
MAX_REPLY_BODY = 1024 * 1024

# Revocations at the provider waiting to be tried again (each holds a token of up to
# MAX_TOKEN in the parent's locked memory). A user revokes a handful of accounts at
# once; beyond this many, the one asked for first is given up and reported.
MAX_REVOCATIONS_WAITING = 16

# An account name. Names come from the config; a request naming a longer one is
# answered "No account" by the command child without asking the parent.
MAX_ACCOUNT_NAME = 64 * 1024

# A client id, from the config.
MAX_CLIENT_ID = 4 * 1024

# An authorisation code from a redirect (the whole redirect request is smaller).
MAX_AUTH_CODE = 16 * 1024

# A PKCE code verifier: RFC 7636 allows 43 to 128 characters.
MAX_CODE_VERIFIER = 128

# A browser's redirect request is read up to this many bytes, so every part of
# the callback it carries is smaller.
MAX_REDIRECT_REQUEST = 16 * 1024

# The text of a failed token request as the parent shows it: provider text,
# plus a URI when the endpoint could not be reached, plus our own words.
MAX_RESULT_MESSAGE = MAX_URI + MAX_PROVIDER_TEXT + 256

# The page text of a callback verdict: it may quote the callback's error and
# error_description and name the account twice.
MAX_PAGE = 2 * MAX_REDIRECT_REQUEST + 2 * MAX_ACCOUNT_NAME + 256

# The HTTPS certificate's public key (PEM) and its fingerprint, as `info` shows them.
MAX_PUBLIC_KEY = 4 * 1024
MAX_FINGERPRINT = 256

# Network workers (one per call to a provider) running at once. The launcher refuses to
# run more whatever the network child asks, counting each until it has reaped it; the
# network child queues requests beyond this (for at most timeouts.WORKER_SLOT_WAIT).
# A user's accounts make a few calls at a time; 16 leaves room for a burst of logins,
# revocations and metadata fetches while bounding what a subverted network child can
# make the launcher fork.
MAX_WORKERS = 16
