"""Every timeout of pizauth, in seconds, named once.

Imported by the lean `pizauth show` path, so it holds numbers only.
"""

# A `pizauth` client waits this long for the server's reply. Longer than
# COMMAND_REPLY, so a client hears the command child's "did not answer in time"
# rather than timing out first.
CLIENT_REPLY = 60.0

# The command child gives a client this long to send its whole request...
COMMAND_READ = 10.0
# ...and the parent this long to answer it (then tells the client so); a client
# then has as long again to read the reply.
COMMAND_REPLY = 30.0
# A client request that needs the provider's metadata first (`show` of an account
# whose endpoints are not yet known) is answered within this, "try again" if need
# be: well within COMMAND_REPLY.
RESOLVE_WAIT = 20.0

# The parent answers a login callback once the code exchange it starts has
# ended, or after this long with a page that says where the result will show...
EXCHANGE_PAGE = 15.0
# ...so the network child waits longer than that for the parent's verdict.
VERDICT = 20.0

# A browser's redirect request: each read, and the whole request.
REDIRECT_READ = 10.0
REDIRECT_REQUEST = 30.0

# A call to a provider (token, device authorization, metadata or revocation endpoint):
# to connect, and then the whole exchange, from the connection to the reply's last byte,
# however slowly the provider sends it (pizauth/net/deadline.py enforces it).
CONNECT = 10.0
TOKEN_REQUEST = 30.0
# A code exchange is sent again when it cannot have reached the provider or the provider
# said it was overloaded: all its attempts, and the pauses between them, end within this.
CODE_EXCHANGE = 90.0
# The device authorization request: a `pizauth show` waits for it, so it ends before the
# command child gives up on the parent (COMMAND_REPLY) and the user hears why it failed.
DEVICE_AUTHORIZATION = 25.0
# A network worker still running this long after its deadline is killed by the launcher.
WORKER_KILL_MARGIN = 5.0
# A request that finds every worker slot taken waits this long for one, then fails as a
# transient failure (tried again later, as an outage would be).
WORKER_SLOT_WAIT = 30.0

# A provider's Retry-After (on HTTP 429 or 503 from a token or revocation endpoint) is
# obeyed, but never trusted to make us retry sooner than we would anyway, nor to put a
# retry off by more than this: a provider's mistake must not silence an account for days.
RETRY_AFTER_MAX = 3600.0

# A network worker reads its request from, and writes its result to, the network
# child within this time.
WORKER_IO = 10.0

# A revocation at the provider that failed for a transient reason is tried again
# after each of these delays in turn, then given up. The first comes soon: most such
# failures (a dropped connection, a restarted network process, a 503 from a busy
# provider) pass within seconds. The later ones are spaced out, not to hammer a
# provider that is down, and the whole schedule ends within six minutes, so the
# token's copy does not linger.
REVOKE_RETRIES = (5.0, 60.0, 300.0)
# A provider's Retry-After may put each of those off, up to this: the token's copy waits
# in the parent meanwhile, so the whole schedule still ends within a quarter of an hour.
REVOKE_RETRY_AFTER_MAX = 300.0

# auth_notify_cmd, error_notify_cmd and token_event_cmd are killed after this...
HOOK = 10.0
# ...and transient_error_if_cmd after this.
TRANSIENT_ERROR_IF = 180.0

# `pizauth server` waits this long for the server to say it serves.
SERVER_READY = 30.0

# At shutdown: queued replies are written within this, and a child that does not
# exit within CHILD_STOP is killed.
SHUTDOWN_FLUSH = 1.0
CHILD_STOP = 2.0

# token_store_key_cmd and client_secret_cmd: long enough for a person to unlock a
# password store. `pizauth server` waits this much longer when a store is configured.
SECRET_COMMAND = 180.0
# At shutdown, a change not yet in the token store is written first; if the key is
# not at hand, its command gets this long.
STORE_LAST_KEY = 10.0
