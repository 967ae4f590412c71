"""The device authorization grant (RFC 8628): the installed `pizauth` against the local
provider's device endpoint, with no redirect listener at all, and the schedule's rules."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLIENT_ID, CLIENT_SECRET, Client, Pizauth, Provider, cmdline, wait_for
from server_harness import resolved_account

from pizauth import ipc, limits
from pizauth.ipc import NetTokenResult, TokenOutcome
from pizauth.net import device as netdevice
from pizauth.net.calls import poll_to_wire
from pizauth.priv.flows import device
from pizauth.priv.state.secmem import Secret
from pizauth.priv.state.tokens import DevicePending, describe
from pizauth.priv.storage.dump import AccountDump

PREFIX = "ERROR - Access token unavailable until authorised with "
HOOKS = (
    'auth_notify_cmd = "env > auth_env.$$; echo $PIZAUTH_URL $PIZAUTH_USER_CODE >> notified";\n'
    'error_notify_cmd = "env > error_env.$$; echo \\"$PIZAUTH_MSG\\" >> errors";\n'
    'token_event_cmd = "env > event_env.$$; echo $PIZAUTH_EVENT >> events";\n'
)


@pytest.fixture
def provider() -> Iterator[Provider]:
    # A 1 s interval keeps the tests fast; the rules are the same at any interval.
    with Provider([Client(CLIENT_ID, CLIENT_SECRET)], device_interval=1) as p:
        yield p


def device_config(pizauth: Pizauth, extra: str = "", globals_: str = HOOKS) -> None:
    p = pizauth.provider
    pizauth.conf.write_text(
        "http_listen = none;\nhttps_listen = none;\n"
        'startup_cmd = "touch ready";\n'
        f"{globals_}"
        'account "dev" {\n'
        '  auth_flow = "device";\n'
        f'  device_auth_uri = "{p.device_auth_uri}";\n'
        f'  token_uri = "{p.token_uri}";\n'
        f'  client_id = "{CLIENT_ID}";\n'
        f'  client_secret = "{CLIENT_SECRET}";\n'
        '  scopes = ["mail", "offline_access"];\n'
        f"  {extra}\n"
        "}\n"
    )


def lines(pizauth: Pizauth, name: str) -> list[str]:
    path = pizauth.tmp / name
    return path.read_text().splitlines() if path.exists() else []


def user_code(pizauth: Pizauth) -> str:
    """`pizauth show -u dev`'s user code (asserting the message's form)."""
    shown = pizauth.show("dev", "-u")
    stderr = shown.stderr.decode()
    assert shown.returncode == 1 and stderr.startswith(PREFIX + "code "), shown
    return stderr[len(PREFIX + "code ") :].strip()


def device_codes(p: Provider) -> set[str]:
    return {r["device_code"] for r in p.token_requests if "device_code" in r}


def status(pizauth: Pizauth) -> str:
    return pizauth.run("status").stdout.decode()


# -- show -------------------------------------------------------------------------------------


def test_show_gives_url_and_code_and_repeats_them(pizauth: Pizauth) -> None:
    device_config(pizauth)
    pizauth.start()
    first = pizauth.show("dev")
    p = pizauth.provider
    [code] = p.user_codes
    uri = f"{p.verification_uri}?user_code={code}"
    assert first.returncode == 1 and first.stdout == b""
    assert first.stderr.decode() == f"{PREFIX}URL {uri} and code {code}\n"
    # Scripts that read the URL up to the first space still get the URL.
    assert first.stderr.decode().split("with URL ")[1].split(" ")[0] == uri
    assert user_code(pizauth) == code
    again = pizauth.show("dev")
    assert again.stderr == first.stderr and again.returncode == 1
    assert len(p.device_requests) == 1
    form = p.device_requests[0]
    assert form["scope"] == "mail offline_access" and form["client_id"] == CLIENT_ID
    assert status(pizauth).startswith("dev: Access token pending authentication")
    info = pizauth.run("info", "-j").stdout.decode()
    assert '"http_port":"none"' in info and '"https_port":"none"' in info


def test_login_prints_the_url_alone_and_the_code_on_stderr(pizauth: Pizauth) -> None:
    device_config(pizauth)
    pizauth.start()
    result = pizauth.run("login", "dev")
    p = pizauth.provider
    [code] = p.user_codes
    assert result.returncode == 0
    assert result.stdout.decode() == f"{p.verification_uri}?user_code={code}\n"
    assert result.stderr.decode() == f"Enter the code {code} at this URL\n"
    # The same login as `show`'s: asking again starts no other.
    assert pizauth.run("login", "dev").stdout == result.stdout
    assert len(p.device_requests) == 1


def test_without_complete_uri_the_verification_uri_is_shown(tmp_path: Path) -> None:
    with Provider(
        [Client(CLIENT_ID, CLIENT_SECRET)], device_interval=1, verification_uri_complete=False
    ) as p:
        pizauth = Pizauth(tmp_path, p)
        try:
            device_config(pizauth)
            pizauth.start()
            shown = pizauth.show("dev").stderr.decode()
            assert shown == f"{PREFIX}URL {p.verification_uri} and code {p.user_codes[0]}\n"
        finally:
            pizauth.stop()
        assert not pizauth.log_problems()


def test_approve_gives_a_token_and_token_new(pizauth: Pizauth) -> None:
    device_config(pizauth)
    pizauth.start()
    code = user_code(pizauth)
    p = pizauth.provider
    notified = wait_for(lambda: lines(pizauth, "notified"), 5, "auth_notify_cmd")
    assert notified[0] == f"{p.verification_uri}?user_code={code} {code}"
    p.approve_device(code)
    token = wait_for(lambda: pizauth._token("dev"), 10, "device token", pizauth.log)
    assert p.is_valid_access_token(token)
    assert wait_for(lambda: lines(pizauth, "events"), 5, "token event") == ["token_new"]
    assert status(pizauth).startswith("dev: Active access token (obtained ")
    grants = {r.get("grant_type") for r in p.token_requests}
    assert grants == {netdevice.DEVICE_GRANT}
    assert all(r.get("client_secret") == CLIENT_SECRET for r in p.token_requests)
    assert not [e for e in p.errors if "slow_down" in e]


def test_basic_login_with_a_provider_that_wants_client_id_in_the_body(tmp_path: Path) -> None:
    """An oauthlib-based provider (django-oauth-toolkit) refuses a device authorization
    request whose body does not name client_id, even with HTTP Basic: pizauth sends it,
    and keeps the secret out of the body."""
    client = Client(CLIENT_ID, CLIENT_SECRET, token_endpoint_auth_method="client_secret_basic")
    with Provider([client], device_interval=1) as p:
        p.device_requires_client_id = True
        pizauth = Pizauth(tmp_path, p)
        try:
            device_config(pizauth, 'token_endpoint_auth_method = "client_secret_basic";')
            pizauth.start()
            code = user_code(pizauth)
            assert p.device_requests == [{"client_id": CLIENT_ID, "scope": "mail offline_access"}]
            p.approve_device(code)
            assert wait_for(lambda: pizauth._token("dev"), 10, "device token", pizauth.log)
            assert all(r["client_id"] == CLIENT_ID for r in p.token_requests)
            assert not any("client_secret" in r for r in p.token_requests)
            assert p.errors == []
        finally:
            pizauth.stop()
        assert not pizauth.log_problems()


def test_polls_keep_the_interval_and_slow_down_adds_five_seconds(pizauth: Pizauth) -> None:
    device_config(pizauth)
    pizauth.start()
    code = user_code(pizauth)
    p = pizauth.provider
    wait_for(lambda: len(p.device_polls(code)) >= 3, 10, "three polls")
    polls = p.device_polls(code)
    assert all(b - a >= 1.0 for a, b in zip(polls, polls[1:], strict=False)), polls
    # The next request is told to slow down: the one after comes 1 + 5 s later at least.
    p.script_token_responses((400, b'{"error": "slow_down"}'))
    before = len(p.token_requests)
    wait_for(lambda: len(p.token_requests) > before, 5, "the slowed poll")
    last = p.device_polls(code)[-1]
    wait_for(lambda: p.device_polls(code)[-1] > last, 10, "a poll after slow_down")
    after = p.device_polls(code)
    gap = after[-1] - last
    assert gap >= 1.0 + 6.0 - 0.1, after
    # ...and the interval stays at 6 s from then on.
    wait_for(lambda: len(p.device_polls(code)) > len(after), 10, "a second poll at 6 s")
    later = p.device_polls(code)
    assert later[-1] - later[-2] >= 6.0, later
    assert not [e for e in p.errors if "slow_down" in e], p.errors


def test_deny_ends_the_attempt_and_show_starts_again(pizauth: Pizauth) -> None:
    device_config(pizauth)
    pizauth.start()
    first = user_code(pizauth)
    pizauth.provider.deny_device(first)
    errors = wait_for(lambda: lines(pizauth, "errors"), 10, "error_notify_cmd", pizauth.log)
    assert errors == [
        "Authentication for dev failed: the authorisation request was denied. "
        "Run 'pizauth show dev' for a new code."
    ]
    now = status(pizauth)
    assert now.startswith("dev: No access token; last error ") and "was denied" in now, now
    second = user_code(pizauth)
    assert second != first and len(pizauth.provider.device_requests) == 2
    assert lines(pizauth, "events") == []


def test_expired_code_ends_the_attempt(pizauth: Pizauth) -> None:
    device_config(pizauth)
    pizauth.start()
    code = user_code(pizauth)
    pizauth.provider.expire_device(code)
    errors = wait_for(lambda: lines(pizauth, "errors"), 10, "error_notify_cmd", pizauth.log)
    assert errors == [
        "Authentication for dev failed: the device code expired. "
        "Run 'pizauth show dev' for a new code."
    ]
    assert status(pizauth).startswith("dev: No access token")
    assert user_code(pizauth) != code


def test_expires_in_ends_the_attempt_without_the_provider(pizauth: Pizauth) -> None:
    p = pizauth.provider
    p.device_code_lifetime = 2
    p.device_interval = 5  # the code expires before the first poll is due
    device_config(pizauth)
    pizauth.start()
    code = user_code(pizauth)
    errors = wait_for(lambda: lines(pizauth, "errors"), 10, "error_notify_cmd", pizauth.log)
    assert "the device code expired" in errors[0]
    assert p.device_polls(code) == []
    assert status(pizauth).startswith("dev: No access token")


def test_revoke_stops_polling_at_once(pizauth: Pizauth) -> None:
    device_config(pizauth)
    pizauth.start()
    code = user_code(pizauth)
    p = pizauth.provider
    wait_for(lambda: p.device_polls(code), 5, "a first poll")
    assert pizauth.run("revoke", "dev").returncode == 0
    assert status(pizauth).startswith("dev: No access token")
    settled = len(p.device_polls(code))
    time.sleep(3)  # three intervals: no poll may come (nothing to wait for but silence)
    assert len(p.device_polls(code)) <= settled + 1  # at most one already in flight
    polls = p.device_polls(code)
    assert not polls or polls[-1] < time.monotonic() - 2
    assert lines(pizauth, "errors") == [] and lines(pizauth, "events") == []


def test_transient_failures_keep_polling(pizauth: Pizauth) -> None:
    device_config(pizauth)
    pizauth.start()
    code = user_code(pizauth)
    p = pizauth.provider
    wait_for(lambda: p.device_polls(code), 5, "a first poll")
    p.script_token_responses((503, b'{"error": "temporarily_unavailable"}'), (503, b"busy"))
    before = len(p.token_requests)
    wait_for(lambda: len(p.token_requests) >= before + 2, 10, "two failed polls")
    p.approve_device(code)
    token = wait_for(lambda: pizauth._token("dev"), 10, "device token", pizauth.log)
    assert p.is_valid_access_token(token)
    assert lines(pizauth, "errors") == []


def test_token_is_refreshed_like_the_code_flow(pizauth: Pizauth) -> None:
    p = pizauth.provider
    p.expires_in = 1
    device_config(pizauth, extra="refresh_before_expiry = 0s;")
    pizauth.start()
    p.approve_device(user_code(pizauth))
    first = wait_for(lambda: pizauth._token("dev"), 10, "device token")
    wait_for(
        lambda: any(r.get("grant_type") == "refresh_token" for r in p.token_requests),
        10,
        "a refresh",
    )
    renewed = wait_for(lambda: (t := pizauth._token("dev")) != first and t, 10, "renewed token")
    assert p.is_valid_access_token(renewed)
    wait_for(lambda: "token_refreshed" in lines(pizauth, "events"), 5, "token_refreshed")


def test_device_code_never_leaves_the_parent(pizauth: Pizauth) -> None:
    device_config(pizauth, globals_=HOOKS + "auth_notify_interval = 1s;\n")
    pizauth.start()
    first = user_code(pizauth)
    p = pizauth.provider
    wait_for(lambda: len(p.device_polls(first)) >= 2, 10, "polls")
    titles = [cmdline(pid) for pid in pizauth.pids()]
    wait_for(lambda: len(lines(pizauth, "notified")) >= 2, 5, "a reminder")
    p.deny_device(first)
    wait_for(lambda: lines(pizauth, "errors"), 10, "error_notify_cmd")
    second = user_code(pizauth)
    p.approve_device(second)
    wait_for(lambda: pizauth._token("dev"), 10, "device token")
    wait_for(lambda: lines(pizauth, "events"), 5, "token event")
    codes = device_codes(p)
    assert len(codes) == 2
    envs = [f for f in os.listdir(pizauth.tmp) if "_env." in f]
    assert {f.split(".")[0] for f in envs} == {"auth_env", "error_env", "event_env"}
    auth_envs = [(pizauth.tmp / f).read_text() for f in envs if f.startswith("auth_env")]
    assert any(f"PIZAUTH_USER_CODE={first}" in e for e in auth_envs)
    for code in codes:
        for f in envs:
            assert code not in (pizauth.tmp / f).read_text(), f
        assert code not in pizauth.log()
        assert not [t for t in titles if code.encode() in t]


def test_dump_and_restore_round_trip(pizauth: Pizauth) -> None:
    device_config(pizauth)
    pizauth.start()
    pending = pizauth.run("dump").stdout  # a login in progress is not dumped
    code = user_code(pizauth)
    pizauth.provider.approve_device(code)
    token = wait_for(lambda: pizauth._token("dev"), 10, "device token")
    data = pizauth.run("dump").stdout
    pizauth.stop()
    pizauth.start()
    assert status(pizauth).startswith("dev: No access token")
    assert pizauth.run("restore", input=pending).returncode == 0
    assert status(pizauth).startswith("dev: No access token")
    restored = pizauth.run("restore", input=data)
    assert (restored.returncode, restored.stderr) == (0, b"")
    shown = pizauth.show("dev")
    assert (shown.returncode, shown.stdout.decode()) == (0, token + "\n")
    assert len(pizauth.provider.device_requests) == 1
    # Another device endpoint is another account: its token is not restored.
    pizauth.stop()
    device_config(pizauth, extra="")
    text = pizauth.conf.read_text().replace("/device_authorization", "/device_authorization2")
    pizauth.conf.write_text(text)
    pizauth.start()
    assert pizauth.run("restore", input=data).returncode == 0
    assert status(pizauth).startswith("dev: No access token")


def test_failed_device_request_is_an_error_the_user_can_act_on(pizauth: Pizauth) -> None:
    device_config(pizauth)
    pizauth.conf.write_text(pizauth.conf.read_text().replace(CLIENT_ID, "unknown-client"))
    pizauth.start()
    shown = pizauth.show("dev")
    stderr = shown.stderr.decode()
    assert shown.returncode == 1
    assert stderr.startswith("ERROR - Device authorization request for dev failed: HTTP code 401")
    assert "invalid_client" in stderr
    assert status(pizauth).startswith("dev: No access token")


# -- units: the schedule and the wire ---------------------------------------------------------


def pending(interval: float = 5.0) -> DevicePending:
    return DevicePending(Secret(b"dc"), "ABCD", "https://x/d", 1000.0, interval, 10.0)


def test_first_interval() -> None:
    assert device.first_interval(None) == device.first_interval(0) == 5.0
    assert device.first_interval(1) == 1.0 and device.first_interval(7) == 7.0
    assert device.first_interval(10**12) == limits.MAX_SECONDS


def test_after_poll_schedule() -> None:
    state = pending()
    state.polling = True
    device.after_poll(state, "authorization_pending", 100.0)
    assert (state.interval, state.next_poll, state.polling) == (5.0, 105.0, False)
    device.after_poll(state, "slow_down", 110.0)
    assert (state.interval, state.next_poll) == (10.0, 120.0)
    device.after_poll(state, "slow_down", 120.0)
    assert (state.interval, state.next_poll) == (15.0, 135.0)
    device.after_poll(state, "", 140.0)  # a transient failure: the interval stays
    assert (state.interval, state.next_poll) == (15.0, 155.0)
    huge = pending(float(limits.MAX_SECONDS))
    device.after_poll(huge, "slow_down", 0.0)
    assert huge.interval == limits.MAX_SECONDS


def test_poll_and_expiry_times() -> None:
    state = pending()
    assert device.poll_time(state) == 10.0 and device.expiry_time(state) == 1000.0
    state.polling = True
    assert device.poll_time(state) is None  # never two polls at once
    waiting = DevicePending()  # no user code yet
    assert device.poll_time(waiting) is None and device.expiry_time(waiting) is None
    assert describe(state, 0.0) == "Access token pending authentication"


def test_wipe_clears_the_device_code() -> None:
    state = pending()
    assert state.device_code is not None
    secret = state.device_code
    arena_view = secret.view()  # the arena's bytes themselves
    state.wipe()
    assert len(secret) == 0 and bytes(secret.view()) == b""
    assert bytes(arena_view) == b"\0\0"


def test_show_replies() -> None:
    state = pending()
    assert device.shown(state, True) == "pending:https://x/d and code ABCD"
    assert device.shown(state, False) == (
        "error:Access token unavailable until authorised with code ABCD"
    )


def test_failure_messages() -> None:
    assert "denied" in device.failure_message("a", "access_denied", "x")
    assert "device code expired" in device.failure_message("a", "expired_token", "x")
    assert "HTTP code 400 (invalid_grant)" in device.failure_message(
        "a", "invalid_grant", "HTTP code 400 (invalid_grant)"
    )


def test_poll_result_never_quotes_the_device_code() -> None:
    got = netdevice.DevicePoll(
        TokenOutcome.PERMANENT, "HTTP code 400 (bad code dc-SECRET)", "invalid_grant"
    )
    wire = poll_to_wire(got, "dc-SECRET")
    assert "dc-SECRET" not in wire.message and wire.provider_error == "invalid_grant"
    assert wire.outcome is TokenOutcome.PERMANENT


def test_device_messages_round_trip() -> None:
    result = ipc.NetDeviceAuthResult(
        TokenOutcome.OK,
        device_code=b"dc",
        user_code="AB CD",
        verification_uri="https://x/d",
        verification_uri_complete="https://x/d?c=1",
        expires_in=600,
        interval=5,
    )
    back = ipc.decode_as(ipc.decode(result.encode(7)))
    assert isinstance(back, ipc.NetDeviceAuthResult)
    assert bytes(back.device_code) == b"dc" and back.user_code == "AB CD"
    poll = ipc.NetDevicePoll("https://x/t", "id", None, b"dc", "client_secret_basic")
    again = ipc.decode_as(ipc.decode(poll.encode(8)))
    assert isinstance(again, ipc.NetDevicePoll) and again.client_secret is None


@pytest.mark.parametrize(
    "change",
    [
        {"user_code": "AB\nCD"},
        {"user_code": ""},
        {"verification_uri": "https://x/d e"},
        {"device_code": b""},
        {"interval": 0},
        {"expires_in": 0},
    ],
)
def test_device_results_the_parent_refuses(change: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "device_code": b"dc",
        "user_code": "ABCD",
        "verification_uri": "https://x/d",
        "expires_in": 600,
        "interval": 5,
        **change,
    }
    frame = ipc.NetDeviceAuthResult(TokenOutcome.OK, **fields).encode(1)  # type: ignore[arg-type]
    with pytest.raises(ipc.ProtocolError):
        ipc.decode_as(ipc.decode(frame))


def test_device_account_dump_names_its_device_endpoint() -> None:
    account = resolved_account(
        "dev",
        client_id="id",
        client_secret=None,
        refresh_at_least=90,
        token_uri="https://x/t",
        issuer=None,
        auth_flow="device",
        device_auth_uri="https://x/device",
    )
    assert AccountDump.of(account).auth_uri == "https://x/device"


def test_poll_results_are_token_results() -> None:
    # A device poll is answered by the very message refreshes are answered by.
    ok = NetTokenResult(TokenOutcome.TRANSIENT, "pending", provider_error="slow_down")
    back = ipc.decode_as(ipc.decode(ok.encode(3)))
    assert isinstance(back, NetTokenResult) and back.provider_error == "slow_down"
