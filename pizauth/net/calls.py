"""The provider calls the network side makes for the parent, in one table.

For each request message: the result message that answers it, the wall-clock time its
worker may take (timeouts.py), the handler that makes the call and turns what the client
module found into that result, and what a call that never answered (its worker crashed
or overran, net/worker.py) is reported as. The launcher, the worker and the network
child (net/child.py) all read the calls from CALLS; nothing else lists them.

Each handler runs in a worker process, whose memory dies with it: the str copies of
secrets the clients make go with it. Nothing a handler returns is over its limit: the
parent would refuse it as a protocol error and restart the network child.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from pizauth import ipc, limits
from pizauth.ipc import MsgType, NetTokenResult, TokenOutcome
from pizauth.net import device, metadata, revoke, tokenclient
from pizauth.timeouts import CODE_EXCHANGE, DEVICE_AUTHORIZATION, TOKEN_REQUEST

TOKEN_REQUEST_FAILED = "token request failed"


@dataclass(frozen=True)
class Call:
    request: type[ipc.Wire]
    result: type[ipc.Wire]  # its constructor takes (outcome, message) for a failure
    deadline: float  # seconds from the worker's first connection to its answer
    handler: Callable[[requests.Session, Any], ipc.Wire]
    # A call that never answered: an exchange may have used its code, so it fails for
    # good; anything else may be tried again.
    lost: TokenOutcome = TokenOutcome.TRANSIENT
    lost_message: str = "request failed"

    def failure(self, outcome: TokenOutcome, message: str) -> ipc.Wire:
        """The result of this call when it could not be made."""
        return self.result(outcome, message)

    def lost_result(self) -> ipc.Wire:
        """The result of this call when its worker never answered."""
        return self.failure(self.lost, self.lost_message)


def to_wire(result: tokenclient.TokenResult) -> NetTokenResult:
    """The NET_TOKEN_RESULT for what the token client made of a reply."""
    message = ipc.cut(result.message, limits.MAX_RESULT_MESSAGE)
    if result.outcome is not TokenOutcome.OK:
        code = ipc.cut(result.provider_error, limits.MAX_ERROR_CODE)
        wait = result.retry_after if result.outcome is TokenOutcome.TRANSIENT else None
        return NetTokenResult(result.outcome, message, provider_error=code, retry_after=wait)
    access, refresh = result.access_token.encode(), result.refresh_token.encode()
    if len(access) > limits.MAX_TOKEN or len(refresh) > limits.MAX_TOKEN:
        return NetTokenResult(TokenOutcome.PERMANENT, "token from token endpoint too large")
    expires_in = None if result.expires_in is None else min(result.expires_in, limits.MAX_SECONDS)
    return NetTokenResult(result.outcome, "", access, expires_in, result.refresh_kind, refresh)


def device_auth_to_wire(got: device.DeviceAuthorization) -> ipc.NetDeviceAuthResult:
    """The NET_DEVICE_AUTH_RESULT for what the device endpoint said."""
    message = ipc.cut(got.message, limits.MAX_RESULT_MESSAGE)
    code = ipc.cut(got.provider_error, limits.MAX_ERROR_CODE)
    if got.outcome is not TokenOutcome.OK:
        return ipc.NetDeviceAuthResult(got.outcome, message, code)
    if len(got.user_code.encode()) > limits.MAX_PROVIDER_TEXT:
        return ipc.NetDeviceAuthResult(TokenOutcome.PERMANENT, "user_code too long")
    return ipc.NetDeviceAuthResult(
        got.outcome,
        device_code=got.device_code,
        user_code=got.user_code,
        verification_uri=got.verification_uri,
        verification_uri_complete=got.verification_uri_complete,
        expires_in=min(got.expires_in, limits.MAX_SECONDS),
        interval=min(got.interval, limits.MAX_SECONDS),
    )


def poll_to_wire(got: device.DevicePoll, device_code: str) -> NetTokenResult:
    """The NET_TOKEN_RESULT of one device poll. A provider that quotes the device code
    in its error text must not get it into the parent's log or a hook's environment."""
    if got.outcome is TokenOutcome.OK:
        assert got.token is not None
        return to_wire(got.token)
    message = got.message.replace(device_code, "[device code]") if device_code else got.message
    return NetTokenResult(
        got.outcome,
        ipc.cut(message, limits.MAX_RESULT_MESSAGE),
        provider_error=ipc.cut(got.provider_error, limits.MAX_ERROR_CODE),
    )


def metadata_to_wire(found: metadata.Metadata) -> ipc.NetMetadataResult:
    """The NET_METADATA_RESULT for a metadata fetch."""
    message = ipc.cut(found.message, limits.MAX_RESULT_MESSAGE)
    if found.outcome is not TokenOutcome.OK:
        return ipc.NetMetadataResult(found.outcome, message)
    return ipc.NetMetadataResult(
        found.outcome,
        message,
        found.authorization_endpoint,
        found.token_endpoint,
        found.device_authorization_endpoint,
        found.revocation_endpoint,
    )


def revoke_to_wire(done: revoke.Revocation) -> ipc.NetRevokeResult:
    """The NET_REVOKE_RESULT for a revocation."""
    return ipc.NetRevokeResult(
        done.outcome,
        ipc.cut(done.message, limits.MAX_RESULT_MESSAGE),
        ipc.cut(done.provider_error, limits.MAX_ERROR_CODE),
        done.retry_after if done.outcome is TokenOutcome.TRANSIENT else None,
    )


def _exchange(session: requests.Session, request: ipc.NetExchange) -> NetTokenResult:
    return to_wire(tokenclient.exchange_code(session, request))


def _refresh(session: requests.Session, request: ipc.NetRefresh) -> NetTokenResult:
    return to_wire(tokenclient.refresh(session, request))


def _device_auth(session: requests.Session, request: ipc.NetDeviceAuth) -> ipc.Wire:
    return device_auth_to_wire(device.request_device_authorization(session, request))


def _device_poll(session: requests.Session, request: ipc.NetDevicePoll) -> NetTokenResult:
    code = ipc.text(memoryview(request.device_code))
    return poll_to_wire(device.poll_device_token(session, request), code)


def _metadata(session: requests.Session, request: ipc.NetMetadata) -> ipc.NetMetadataResult:
    return metadata_to_wire(metadata.fetch_metadata(session, request))


def _revoke(session: requests.Session, request: ipc.NetRevoke) -> ipc.NetRevokeResult:
    return revoke_to_wire(revoke.revoke_token(session, request))


CALLS: dict[MsgType, Call] = {
    call.request.TYPE: call
    for call in (
        Call(
            ipc.NetExchange,
            NetTokenResult,
            CODE_EXCHANGE,
            _exchange,
            lost=TokenOutcome.PERMANENT,
            lost_message=TOKEN_REQUEST_FAILED,
        ),
        Call(
            ipc.NetRefresh,
            NetTokenResult,
            TOKEN_REQUEST,
            _refresh,
            lost_message=TOKEN_REQUEST_FAILED,
        ),
        Call(
            ipc.NetDeviceAuth,
            ipc.NetDeviceAuthResult,
            DEVICE_AUTHORIZATION,
            _device_auth,
            lost_message=TOKEN_REQUEST_FAILED,
        ),
        Call(
            ipc.NetDevicePoll,
            NetTokenResult,
            TOKEN_REQUEST,
            _device_poll,
            lost_message=TOKEN_REQUEST_FAILED,
        ),
        # TOKEN_REQUEST bounds every document tried, together.
        Call(ipc.NetMetadata, ipc.NetMetadataResult, TOKEN_REQUEST, _metadata),
        Call(ipc.NetRevoke, ipc.NetRevokeResult, TOKEN_REQUEST, _revoke),
    )
}
