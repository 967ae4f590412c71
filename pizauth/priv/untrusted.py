"""Every text a child sends, made safe where the parent receives it.

A compromised child chooses every byte of its frames. Whatever it claims to have
cleaned, each text it sends that the parent may show (`status`, `show`), log or
put in a hook's environment -- result messages, provider error codes and
descriptions, a device login's user code, a login callback's error -- is cleaned
here, once, before any handler sees the message: control characters (C0, DEL,
C1, so no escape sequence and no extra line), bidi controls, line separators and
lone surrogates become U+FFFD (pizauth/safetext.py), and the text is cut to its
bound. The HTTPS certificate `info` shows must look like one, or the child is
dropped.

Not cleaned, because no handler shows them as text: tokens and codes (secret,
relayed as they are), a callback's state, host and path (compared exactly), URIs
(checked by pizauth/uri.py where used). An account name from the command child
is a key compared exactly with the configuration's names (which pizauth 1.1
allows to hold any character); one that matches no account is echoed only through
pizauth.text.shown, which writes every such character as an escape.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

from pizauth import ipc, runtime
from pizauth.limits import MAX_ERROR_CODE, MAX_PROVIDER_TEXT, MAX_RESULT_MESSAGE
from pizauth.safetext import safe_text

# The text fields of each message, and the UTF-8 bytes each is cut to.
TEXT_FIELDS: dict[type[ipc.Wire], dict[str, int]] = {
    ipc.NetTokenResult: {"message": MAX_RESULT_MESSAGE, "provider_error": MAX_ERROR_CODE},
    ipc.NetDeviceAuthResult: {
        "message": MAX_RESULT_MESSAGE,
        "provider_error": MAX_ERROR_CODE,
        "user_code": MAX_PROVIDER_TEXT,
    },
    ipc.NetMetadataResult: {"message": MAX_RESULT_MESSAGE},
    ipc.NetRevokeResult: {"message": MAX_RESULT_MESSAGE, "provider_error": MAX_ERROR_CODE},
}
# A login callback's query values that reach the log, a hook and `status`.
CALLBACK_TEXT = {"error": MAX_ERROR_CODE, "error_description": MAX_PROVIDER_TEXT}
# The HTTPS key and certificate digest as `info` shows them: colon-separated hex.
COLON_HEX = re.compile(r"([0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})*)?")


def cleaned(msg: Any) -> Any:
    """`msg` with every text field a child chose made safe (see the module docstring)."""
    fields = TEXT_FIELDS.get(type(msg))
    if fields is not None:
        return dataclasses.replace(
            msg, **{name: safe_text(getattr(msg, name), limit) for name, limit in fields.items()}
        )
    if isinstance(msg, ipc.NetCallback):
        pairs = tuple(
            (key, safe_text(value, CALLBACK_TEXT[key]) if key in CALLBACK_TEXT else value)
            for key, value in msg.pairs
        )
        return dataclasses.replace(msg, pairs=pairs)
    if isinstance(msg, ipc.NetReady):
        if not (COLON_HEX.fullmatch(msg.public_key) and COLON_HEX.fullmatch(msg.fingerprint)):
            raise ipc.ProtocolError("an HTTPS key or fingerprint that is not colon hex")
    return msg


def received(handlers: runtime.Handlers) -> runtime.Handlers:
    """`handlers`, each given the message cleaned: the single entry of a child's messages."""

    def entry(handler: Callable[[int, Any], None]) -> Callable[[int, Any], None]:
        return lambda request_id, msg: handler(request_id, cleaned(msg))

    return {msg_type: entry(handler) for msg_type, handler in handlers.items()}
