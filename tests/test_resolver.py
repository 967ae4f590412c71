"""The parent's resolver (priv/flows/provider.py) on its own: one fetch per issuer, the
configuration wins, results after a reload are dropped, bad results refused."""

from __future__ import annotations

import pytest
from server_harness import ISSUER
from server_harness import resolved_account as account

from pizauth import ipc, runtime
from pizauth.ipc import NetMetadataResult, TokenOutcome
from pizauth.priv.flows.provider import Ready, Resolver, Unready
from pizauth.priv.parent import NET_RESULTS

OK = NetMetadataResult(
    TokenOutcome.OK, "", ISSUER + "/auth", ISSUER + "/token", "", ISSUER + "/revoke"
)


class Net:
    """The network child: what the parent asked it, decoded, and the parent's calls to it
    (results are answered through `calls`, as the parent's dispatch table does)."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, str]] = []
        self.calls = runtime.Calls(self.post, NET_RESULTS)

    def post(self, message: ipc.Wire, request_id: int) -> None:
        msg = ipc.decode(message.encode(request_id))
        self.sent.append((msg.request_id, ipc.NetMetadata.decode(msg).issuer))


def resolver(net: Net) -> Resolver:
    return Resolver(net.calls.call, lambda name: None, lambda fd, cb: None, lambda fd: None)


def test_one_fetch_per_issuer_and_the_config_wins() -> None:
    net = Net()
    r = resolver(net)
    got: list[object] = []
    r.resolve(account("a"), "auth_uri", False, got.append)
    r.resolve(account("b", token_uri="https://mine/token"), "token_uri", False, got.append)
    r.resolve(account("b"), "revoke_uri", False, got.append)
    assert [issuer for _, issuer in net.sent] == [ISSUER]
    assert len(got) == 1  # the configured token_uri needed no fetch
    assert got[0].account.token_uri == "https://mine/token"  # type: ignore[union-attr]
    net.calls.result(net.sent[0][0], OK)
    assert [type(o) for o in got] == [Ready, Ready, Ready]
    assert got[1].account.auth_uri == ISSUER + "/auth"  # type: ignore[union-attr]
    assert got[2].account.revoke_uri == ISSUER + "/revoke"  # type: ignore[union-attr]
    assert r.known(account("c", auth_uri="https://mine/auth")).auth_uri == "https://mine/auth"


def test_transient_failures_are_not_kept() -> None:
    net = Net()
    r = resolver(net)
    got: list[object] = []
    r.resolve(account(), "auth_uri", False, got.append)
    net.calls.result(net.sent[0][0], NetMetadataResult(TokenOutcome.TRANSIENT, "HTTP code 503"))
    assert got == [Unready("HTTP code 503", True, False)]
    r.resolve(account(), "auth_uri", False, got.append)
    assert len(net.sent) == 2


def test_missing_endpoint_is_told_once() -> None:
    net = Net()
    r = resolver(net)
    got: list[object] = []
    r.resolve(account(), "device_auth_uri", False, got.append)
    net.calls.result(net.sent[0][0], OK)
    r.resolve(account(), "device_auth_uri", False, got.append)
    assert [(o.transient, o.notify) for o in got] == [(False, True), (False, False)]  # type: ignore[union-attr]
    # Optional: no error, no endpoint.
    r.resolve(account(), "device_auth_uri", True, got.append, optional=True)
    assert isinstance(got[-1], Ready) and got[-1].account.device_auth_uri is None


def test_result_after_reload_is_dropped_and_unknown_ids_refused() -> None:
    net = Net()
    r = resolver(net)
    got: list[object] = []
    r.resolve(account(), "auth_uri", False, got.append)
    r.reload()
    assert isinstance(got[0], Unready) and got[0].transient
    net.calls.result(net.sent[0][0], OK)  # late: dropped, not cached
    assert r.metadata == {}
    with pytest.raises(ipc.ProtocolError):
        net.calls.result(net.sent[0][0], OK)


def test_malformed_endpoint_from_the_network_child_is_refused() -> None:
    net = Net()
    r = resolver(net)
    r.resolve(account(), "auth_uri", False, lambda o: None)
    bad = NetMetadataResult(TokenOutcome.OK, "", "javascript:alert(1)")
    with pytest.raises(ipc.ProtocolError):
        net.calls.result(net.sent[0][0], bad)


def test_bounded_answers_once() -> None:
    r = resolver(Net())
    got: list[object] = []
    done = r.bounded(got.append, 0.0, "try again")
    r.tick(float("inf"))
    done(Ready(account(), None))
    assert got == [Unready("try again", True, False)]


def test_metadata_is_forgotten_when_the_network_child_is_lost() -> None:
    # Nothing a child said outlives it: a document it gave (perhaps a lie) goes with it.
    net = Net()
    r = resolver(net)
    r.resolve(account(), "token_uri", False, lambda o: None)
    net.calls.result(net.sent[0][0], OK)
    assert r.known(account("other")).token_uri == ISSUER + "/token"
    assert r.endpoints(account())["resolved"] == "yes"
    r.network_lost()
    assert r.known(account("other")).token_uri is None
    assert r.endpoints(account()) == {"issuer": ISSUER, "resolved": "no"}
    got: list[object] = []
    r.resolve(account("other"), "token_uri", False, got.append)
    assert len(net.sent) == 2 and got == []  # asked again, of the new child


REMOTE = "https://idp.example"


@pytest.mark.parametrize(
    "endpoint",
    ["http://idp.example/token", "http://127.0.0.1:8080/token", "http://[::1]/token"],
)
def test_remote_issuer_naming_an_http_endpoint_is_that_accounts_error(endpoint: str) -> None:
    net = Net()
    r = resolver(net)
    got: list[object] = []
    r.resolve(account(issuer=REMOTE), "auth_uri", False, got.append)
    r.resolve(account("b", issuer=REMOTE), "token_uri", False, got.append)
    plain = NetMetadataResult(TokenOutcome.OK, "", REMOTE + "/auth", endpoint)
    net.calls.result(net.sent[0][0], plain)  # not a protocol error: the child only relays it
    assert [type(o) for o in got] == [Unready, Unready]
    for outcome in got:
        assert isinstance(outcome, Unready) and not outcome.transient and outcome.notify
        assert f"names a plain http token_endpoint ({endpoint})" in outcome.message
    # Not even the https endpoint of that document is used.
    assert r.known(account(issuer=REMOTE)).auth_uri is None
    info = r.endpoints(account(issuer=REMOTE))
    assert info["resolved"] == "failed" and "plain http" in info["error"]


@pytest.mark.parametrize("issuer", ["http://127.0.0.1:9", "http://localhost:9", "http://[::1]:9"])
def test_loopback_issuer_may_name_loopback_http_endpoints(issuer: str) -> None:
    net = Net()
    r = resolver(net)
    got: list[object] = []
    r.resolve(account(issuer=issuer), "token_uri", False, got.append)
    token = "http://127.0.0.2:9/token"
    net.calls.result(net.sent[0][0], NetMetadataResult(TokenOutcome.OK, "", "", token))
    assert isinstance(got[0], Ready) and got[0].account.token_uri == token


def test_endpoint_allowed() -> None:
    from pizauth.uri import endpoint_allowed, loopback_host

    assert endpoint_allowed(REMOTE, "https://other.example/t")
    assert not endpoint_allowed(REMOTE, "http://idp.example/t")
    assert not endpoint_allowed(REMOTE, "http://localhost/t")
    assert not endpoint_allowed("http://127.0.0.1:9", "http://idp.example/t")
    assert endpoint_allowed("http://127.0.0.1:9", "http://localhost:8/t")
    assert not endpoint_allowed("http://127.0.0.1:9", "ftp://127.0.0.1/t")
    assert [loopback_host(h) for h in ("127.9.8.7", "::1", "LOCALHOST", "128.0.0.1", None)] == [
        True,
        True,
        True,
        False,
        False,
    ]
