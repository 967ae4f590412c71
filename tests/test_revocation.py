"""The parent's revoker (priv/flows/revocation.py) on its own, with a fake clock and a fake
network child: a transient failure is tried again on the REVOKE_RETRIES schedule and
reported only when given up, a permanent one at once; the token's copy is wiped
whenever the revocation ends, and the number waiting is bounded."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from server_harness import ISSUER, resolved_account

from pizauth import ipc, runtime
from pizauth.config import Account
from pizauth.ipc import MsgType, NetMetadataResult, NetRevokeResult, TokenOutcome
from pizauth.limits import MAX_REVOCATIONS_WAITING
from pizauth.priv.flows.provider import Resolver
from pizauth.priv.flows.revocation import ATTEMPTS, Revoker
from pizauth.priv.parent import NET_RESULTS
from pizauth.priv.state.secmem import Secret
from pizauth.timeouts import RETRY_AFTER_MAX, REVOKE_RETRIES, REVOKE_RETRY_AFTER_MAX

TOKEN = b"1//refresh-token-to-revoke"
REVOKE_URI = "https://provider.example/revoke"
BUSY = NetRevokeResult(TokenOutcome.TRANSIENT, "HTTP code 503 (temporarily_unavailable)")
GONE = NetRevokeResult(TokenOutcome.PERMANENT, "HTTP code 404")
OK = NetRevokeResult(TokenOutcome.OK)
LOCAL_ONLY = (
    "The token of acct was forgotten locally but not revoked at the provider: the account has"
    " no revocation endpoint (revoke_uri, or the issuer's metadata)"
)


def account(name: str = "acct", **changes: object) -> Account:
    """An account with its endpoints in the config, revoke_uri included, and no issuer."""
    in_config = {
        "auth_uri": "https://provider.example/auth",
        "token_uri": "https://provider.example/token",
        "revoke_uri": REVOKE_URI,
        "issuer": None,
    }
    return resolved_account(name, **{**in_config, **changes})


class Net:
    """The network child: what the parent sent it, decoded."""

    def __init__(self) -> None:
        self.revokes: list[tuple[int, bytes]] = []  # request id, token
        self.fetches: list[tuple[int, str]] = []  # request id, issuer
        self.calls = runtime.Calls(self.post, NET_RESULTS)  # results are answered here

    def post(self, message: ipc.Wire, request_id: int) -> None:
        msg = ipc.decode(message.encode(request_id))
        if msg.type is MsgType.NET_REVOKE:
            self.revokes.append((msg.request_id, bytes(ipc.NetRevoke.decode(msg).token)))
        else:
            self.fetches.append((msg.request_id, ipc.NetMetadata.decode(msg).issuer))


class Errors:
    """The notifier: every error_notify_cmd report, as (account, message)."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, str]] = []

    def error(self, name: str, message: str) -> None:
        self.reports.append((name, message))


class Harness:
    def __init__(self, accounts: dict[str, Account] | None = None) -> None:
        self.now = 1000.0
        self.net = Net()
        self.errors = Errors()
        self.accounts = {"acct": account()} if accounts is None else accounts
        self.resolver = Resolver(
            self.net.calls.call, lambda name: None, lambda fd, cb: None, lambda fd: None
        )
        self.revoker = Revoker(
            self.resolver,
            self.net.calls.call,
            self.errors,  # type: ignore[arg-type]
            self.accounts.get,
            clock=lambda: self.now,
        )

    def revoke(self, name: str = "acct", token: bytes = TOKEN) -> Secret:
        secret = Secret(token)
        self.revoker.revoke(self.accounts[name], secret, "refresh_token")
        return secret

    def answer(self, result: NetRevokeResult) -> None:
        """Answer the latest revocation sent."""
        request_id, _ = self.net.revokes[-1]
        self.net.calls.result(request_id, result)

    def advance_to(self, at: float) -> None:
        self.now = at
        self.revoker.tick(at)


def wiped(token: Secret) -> bool:
    return len(token) == 0 and token.view().nbytes == 0


def test_a_transient_failure_is_tried_again_on_the_schedule_then_given_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pizauth")
    h = Harness()
    token = h.revoke()
    assert h.net.revokes[-1][1] == TOKEN
    start = h.now
    for attempt, delay in enumerate(REVOKE_RETRIES, start=1):
        h.answer(BUSY)
        assert h.errors.reports == []  # not reported while it will be tried again
        assert not wiped(token) and token.equals(TOKEN)
        due = h.now + delay
        assert h.revoker.next_wakeup() == due
        h.advance_to(due - 0.1)
        assert len(h.net.revokes) == attempt  # not before its time
        h.advance_to(due)
        assert len(h.net.revokes) == attempt + 1
        assert h.net.revokes[-1][1] == TOKEN  # the same token, sent again
    h.answer(BUSY)
    assert len(h.net.revokes) == ATTEMPTS == 1 + len(REVOKE_RETRIES)
    assert h.now - start == sum(REVOKE_RETRIES)
    assert h.errors.reports == [
        (
            "acct",
            f"Revoking the token of acct at the provider failed after {ATTEMPTS} attempts:"
            " HTTP code 503 (temporarily_unavailable)",
        )
    ]
    assert wiped(token)
    assert h.revoker.next_wakeup() is None and not h.revoker.waiting and not h.revoker.sent
    # Each failed attempt was logged, with what failed and no token.
    tried_again = [r for r in caplog.records if "trying again" in r.getMessage()]
    assert [r.levelno for r in tried_again] == [logging.WARNING] * len(REVOKE_RETRIES)
    assert "attempt 1 of 4" in tried_again[0].getMessage()
    assert "503" in tried_again[0].getMessage()
    assert TOKEN.decode() not in caplog.text


def test_a_retry_that_succeeds_reports_nothing() -> None:
    h = Harness()
    token = h.revoke()
    h.answer(BUSY)
    h.advance_to(h.now + REVOKE_RETRIES[0])
    h.answer(OK)
    assert len(h.net.revokes) == 2
    assert h.errors.reports == []
    assert wiped(token)
    assert h.revoker.next_wakeup() is None and not h.revoker.sent


def test_a_permanent_failure_is_reported_at_once() -> None:
    h = Harness()
    token = h.revoke()
    h.answer(GONE)
    assert h.errors.reports == [
        ("acct", "Revoking the token of acct at the provider failed: HTTP code 404")
    ]
    assert wiped(token)
    assert h.revoker.next_wakeup() is None


def test_a_permanent_failure_on_a_retry_says_how_many_attempts() -> None:
    h = Harness()
    token = h.revoke()
    h.answer(BUSY)
    h.advance_to(h.now + REVOKE_RETRIES[0])
    h.answer(GONE)
    [(_, message)] = h.errors.reports
    assert message == "Revoking the token of acct at the provider failed after 2 attempts: " + (
        "HTTP code 404"
    )
    assert wiped(token)


def test_the_network_child_lost_is_a_transient_failure() -> None:
    h = Harness()
    token = h.revoke()
    h.net.calls.lost()
    assert h.errors.reports == [] and not h.revoker.sent
    assert not wiped(token)
    h.advance_to(h.now + REVOKE_RETRIES[0])
    assert len(h.net.revokes) == 2
    h.answer(OK)
    assert h.errors.reports == [] and wiped(token)


def test_a_transient_failure_to_find_the_endpoint_is_tried_again() -> None:
    h = Harness({"acct": account(revoke_uri=None, issuer=ISSUER)})
    token = h.revoke()
    [(fetch_id, issuer)] = h.net.fetches
    assert issuer == ISSUER and h.net.revokes == []
    h.net.calls.result(fetch_id, NetMetadataResult(TokenOutcome.TRANSIENT, "connection refused"))
    assert h.errors.reports == [] and not wiped(token)
    h.advance_to(h.now + REVOKE_RETRIES[0])
    fetch_id, _ = h.net.fetches[-1]
    assert len(h.net.fetches) == 2  # the metadata is fetched again
    h.net.calls.result(
        fetch_id, NetMetadataResult(TokenOutcome.OK, "", revocation_endpoint=ISSUER + "/revoke")
    )
    assert [t for _, t in h.net.revokes] == [TOKEN]
    h.answer(OK)
    assert h.errors.reports == [] and wiped(token)


def test_a_permanent_failure_to_find_the_endpoint_is_reported_at_once() -> None:
    h = Harness({"acct": account(revoke_uri=None, issuer=ISSUER)})
    token = h.revoke()
    [(fetch_id, _)] = h.net.fetches
    h.net.calls.result(fetch_id, NetMetadataResult(TokenOutcome.PERMANENT, "not an issuer"))
    assert h.errors.reports == [
        ("acct", "Revoking the token of acct at the provider failed: not an issuer")
    ]
    assert wiped(token) and h.revoker.next_wakeup() is None


def test_without_an_endpoint_nothing_is_sent_and_the_copy_is_wiped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="pizauth")
    h = Harness({"acct": account(revoke_uri=None)})
    token = h.revoke()
    # A pizauth 1.1 account: no notification, as in 1.1; the log says what happened.
    assert h.net.revokes == [] and h.errors.reports == [] and wiped(token)
    assert LOCAL_ONLY in caplog.text


def test_an_issuer_without_a_revocation_endpoint_is_told() -> None:
    h = Harness({"acct": account(revoke_uri=None, issuer=ISSUER)})
    token = h.revoke()
    [(fetch_id, _)] = h.net.fetches
    h.net.calls.result(fetch_id, NetMetadataResult(TokenOutcome.OK, ""))  # no revocation_endpoint
    assert h.net.revokes == [] and wiped(token)
    assert h.errors.reports == [("acct", LOCAL_ONLY)]


def test_a_retry_survives_a_reload_that_leaves_the_account_as_it_was() -> None:
    h = Harness()
    token = h.revoke()
    h.answer(BUSY)
    # A reload: an equal account, a new object; a login since does not matter.
    h.accounts["acct"] = dataclasses.replace(account(), refresh_retry=99)
    h.advance_to(h.now + REVOKE_RETRIES[0])
    assert len(h.net.revokes) == 2
    h.answer(OK)
    assert h.errors.reports == [] and wiped(token)


@pytest.mark.parametrize("changed", [account(revoke_uri="https://elsewhere.example/r"), None])
def test_a_retry_is_given_up_if_a_reload_changed_or_removed_the_account(
    changed: Account | None,
) -> None:
    h = Harness()
    token = h.revoke()
    h.answer(BUSY)
    if changed is None:
        del h.accounts["acct"]
    else:
        h.accounts["acct"] = changed
    h.advance_to(h.now + REVOKE_RETRIES[0])
    assert len(h.net.revokes) == 1  # nothing sent to the new endpoint
    [(name, message)] = h.errors.reports
    assert name == "acct"
    assert message.startswith("Revoking the token of acct at the provider failed: HTTP code 503")
    assert message.endswith("not tried again: a reload changed or removed the account")
    assert wiped(token)


def test_at_most_so_many_wait_and_the_first_asked_for_is_given_up() -> None:
    accounts = {f"a{i}": account(f"a{i}") for i in range(MAX_REVOCATIONS_WAITING + 1)}
    h = Harness(accounts)
    tokens = []
    for i in range(MAX_REVOCATIONS_WAITING + 1):
        tokens.append(h.revoke(f"a{i}", b"token-%d" % i))
        h.now += 1
    # The first asked for fails neither first nor last: it goes all the same.
    order = [*range(1, 9), 0, *range(9, MAX_REVOCATIONS_WAITING + 1)]
    for i in order:
        request_id, _ = h.net.revokes[i]
        h.net.calls.result(request_id, BUSY)
    assert len(h.revoker.waiting) == MAX_REVOCATIONS_WAITING
    [(name, message)] = h.errors.reports
    assert name == "a0"
    assert message.endswith(f"more than {MAX_REVOCATIONS_WAITING} revocations were waiting")
    assert wiped(tokens[0])
    assert not any(wiped(t) for t in tokens[1:])


def test_shutdown_wipes_every_copy_wherever_it_is() -> None:
    h = Harness({"acct": account(), "iss": account("iss", revoke_uri=None, issuer=ISSUER)})
    waiting = h.revoke()
    h.answer(BUSY)
    sent = h.revoke(token=b"another")
    resolving = h.revoke("iss", b"third")
    assert h.revoker.waiting and h.revoker.sent and h.revoker.resolving
    h.revoker.wipe_all()
    assert wiped(waiting) and wiped(sent) and wiped(resolving)
    assert h.revoker.next_wakeup() is None
    assert h.errors.reports == []  # nobody is told: all is ending


def test_a_result_for_no_revocation_is_a_protocol_error() -> None:
    h = Harness()
    h.revoke()
    h.answer(OK)
    with pytest.raises(ipc.ProtocolError):
        h.answer(OK)  # the same request id again


@pytest.mark.parametrize(
    ("retry_after", "delay"),
    [
        (None, REVOKE_RETRIES[0]),  # none given: the usual schedule
        (1, REVOKE_RETRIES[0]),  # sooner than we would anyway: not obeyed
        (120, 120.0),  # later: obeyed
        (3600, REVOKE_RETRY_AFTER_MAX),  # within the network's bound, beyond the revoker's
        (10**9, REVOKE_RETRY_AFTER_MAX),  # beyond every bound (a child that lies)
    ],
)
def test_retry_after_puts_the_next_attempt_off_within_bounds(
    retry_after: int | None, delay: float
) -> None:
    h = Harness()
    token = h.revoke()
    h.answer(dataclasses.replace(BUSY, retry_after=retry_after))
    assert h.revoker.next_wakeup() == h.now + delay
    h.advance_to(h.now + delay - 0.1)
    assert len(h.net.revokes) == 1  # not before the provider's time
    h.advance_to(h.now + 0.1)
    assert len(h.net.revokes) == 2
    h.answer(OK)
    assert wiped(token) and h.errors.reports == []


def test_retry_after_travels_from_the_network_child() -> None:
    """The field survives the frame, and a value past its bound is a protocol error."""
    frame = dataclasses.replace(BUSY, retry_after=120).encode(7)
    assert ipc.NetRevokeResult.decode(ipc.decode(frame)).retry_after == 120
    too_long = ipc.encode(
        MsgType.NET_REVOKE_RESULT, 7, [b"transient", b"", b"", str(RETRY_AFTER_MAX + 1).encode()]
    )
    with pytest.raises(ipc.ProtocolError):
        ipc.NetRevokeResult.decode(ipc.decode(too_long))
