"""Token table, generations, status text and the refresh/reminder schedules.

Status lines, states and generations, the refresh schedule, reminders and reload, as
pizauth 1.1 has them (with its `test_act_validation`), and docs/compatibility.md
"Reminders keep logins", "Tokens without a refresh token", "Minimum intervals", "Status order".
"""

from __future__ import annotations

import re
import time

import pytest
from token_states import put

from pizauth import config, ipc, runtime
from pizauth.ipc import NetTokenResult, TokenOutcome
from pizauth.priv.flows import refresher
from pizauth.priv.run import notifier
from pizauth.priv.state import clock
from pizauth.priv.state.authurl import AuthRequest
from pizauth.priv.state.secmem import Secret
from pizauth.priv.state.tokens import Active, Empty, Entry, Pending, TokenTable, describe
from pizauth.timeouts import RETRY_AFTER_MAX

ACCOUNT_BODY = """
    auth_uri = "{auth}";
    client_id = "b";
    client_secret = "c";
    scopes = ["d", "e"];
    redirect_uri = "http://f.com";
    token_uri = "http://g.com";
"""

# The three configurations of the original's test_act_validation.
CONF1 = f'account "x" {{{ACCOUNT_BODY.format(auth="http://a.com")}}}'
CONF2 = f'account "x" {{{ACCOUNT_BODY.format(auth="http://h.com")}}}'
CONF3 = CONF1 + f'\naccount "y" {{{ACCOUNT_BODY.format(auth="http://a.com")}}}'


def accounts(text: str) -> tuple[config.Account, ...]:
    return config.parse(text).accounts


def block(name: str, extra: str = "", client_id: str = "b") -> str:
    return (
        f'account "{name}" {{ auth_uri = "http://a.com"; client_id = "{client_id}"; '
        f'token_uri = "http://g.com"; {extra} }}\n'
    )


def pending(state: str = "xyz", verifier: bytes = b"abc") -> Pending:
    return Pending(AuthRequest(state, Secret(verifier), "http://f.com/", "http://a.com/"))


def active(
    access: bytes = b"access-token",
    refresh: bytes | None = b"refresh-token",
    obtained: float = 1000.0,
    expiry: float = 4600.0,
    **kw,
) -> Active:
    refresh_token = None if refresh is None else Secret(refresh)
    return Active(Secret(access), obtained, expiry, refresh_token, **kw)


def is_zeroed(view: memoryview) -> bool:
    return len(view) > 0 and bytes(view) == bytes(len(view))


# -- generations across reloads (pizauth 1.1's test_act_validation) --------------------------


def test_act_validation():
    table = TokenTable(accounts(CONF1))
    x = table.get("x")
    assert x is not None and x.generation == 0 and isinstance(x.state, Empty)
    seen = {x.generation}
    old_x = x.generation

    table.reload(accounts(CONF2))
    x = table.get("x")
    assert x.generation != old_x and isinstance(x.state, Empty)
    assert not table.is_current("x", old_x)
    old_x = x.generation
    seen.add(old_x)

    table.reload(accounts(CONF2))
    assert table.get("x").generation == old_x
    assert table.is_current("x", old_x)
    assert isinstance(table.get("x").state, Empty)

    table.reload(accounts(CONF3))
    x, y = table.get("x"), table.get("y")
    assert x.generation != old_x and isinstance(x.state, Empty)
    assert isinstance(y.state, Empty)
    old_x, old_y = x.generation, y.generation
    assert old_x not in seen and old_y not in seen and old_x != old_y
    seen |= {old_x, old_y}

    table.reload(accounts(CONF2))
    x = table.get("x")
    assert x.generation != old_x and x.generation not in seen
    assert isinstance(x.state, Empty)
    assert table.get("y") is None
    assert not table.is_current("y", old_y)
    old_x = x.generation
    seen.add(old_x)

    state = pending()
    x = put(table, "x", state)
    assert x.generation != old_x and x.generation not in seen
    old_x = x.generation
    seen.add(old_x)
    assert isinstance(table.get("x").state, Pending)

    table.reload(accounts(CONF2))
    x = table.get("x")
    assert x.generation == old_x
    assert x.state is state
    assert bytes(state.request.code_verifier.view()) == b"abc"  # not wiped

    verifier = state.request.code_verifier.view()
    table.reload(accounts(CONF1))
    x = table.get("x")
    assert x.generation != old_x and x.generation not in seen
    assert isinstance(x.state, Empty)
    assert is_zeroed(verifier)


BASE = (
    'auth_uri = "http://a.com"; auth_uri_fields = {"k": "v"}; client_id = "b"; '
    'client_secret = "c"; redirect_uri = "http://f.com"; scopes = ["d"]; '
    'token_uri = "http://g.com"; refresh_at_least = 10m; refresh_before_expiry = 20s; '
    "refresh_retry = 30s;"
)


def with_option(option: str, value: str | None) -> str:
    """BASE with `option` replaced by `value` (None: removed)."""
    parts = [p.strip() for p in BASE.split(";") if p.strip()]
    kept = [p for p in parts if not p.startswith(option + " ")]
    assert len(kept) == len(parts) - 1
    if value is not None:
        kept.append(f"{option} = {value}")
    return f'account "x" {{ {"; ".join(kept)}; }}'


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("auth_uri", '"http://h.com"'),
        ("auth_uri_fields", '{"k": "w"}'),
        ("auth_uri_fields", '{"k": "v", "k2": "v2"}'),
        ("client_id", '"b2"'),
        ("client_secret", '"c2"'),
        ("client_secret", None),
        ("redirect_uri", '"http://f.com/"'),  # same URL, different string
        ("scopes", '["d", "e"]'),
        ("scopes", "[]"),
        ("token_uri", '"http://g2.com"'),
    ],
)
def test_security_change_empties_token_with_new_generation(option, value):
    table = TokenTable(accounts(f'account "x" {{ {BASE} }}'))
    token = active()
    access, refresh = token.access_token.view(), token.refresh_token.view()
    old = put(table, "x", token).generation
    dropped = table.reload(accounts(with_option(option, value)))
    x = table.get("x")
    assert isinstance(x.state, Empty)
    assert x.generation != old
    assert dropped == ["x"]
    assert is_zeroed(access) and is_zeroed(refresh)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("refresh_at_least", "11m"),
        ("refresh_before_expiry", "21s"),
        ("refresh_retry", "31s"),
        ("refresh_retry", None),
    ],
)
def test_refresh_timing_change_keeps_token_and_generation(option, value):
    table = TokenTable(accounts(f'account "x" {{ {BASE} }}'))
    token = active()
    old = put(table, "x", token).generation
    new_accounts = accounts(with_option(option, value))
    dropped = table.reload(new_accounts)
    x = table.get("x")
    assert dropped == []
    assert x.state is token and x.generation == old
    assert bytes(token.access_token.view()) == b"access-token"
    # The entry now carries the new timings.
    assert x.account is new_accounts[0]


def test_global_option_change_keeps_token():
    table = TokenTable(accounts(f'account "x" {{ {BASE} }}'))
    token = active()
    old = put(table, "x", token).generation
    assert (
        table.reload(
            accounts(f'auth_notify_interval = 1m; refresh_retry = 5s;\naccount "x" {{ {BASE} }}')
        )
        == []
    )
    assert table.get("x").state is token and table.get("x").generation == old


def test_reload_returns_dropped_active_tokens_and_wipes_them():
    table = TokenTable(accounts(block("x") + block("y") + block("z") + block("w")))
    tx, ty, tz = active(b"tx", b"rx"), active(b"ty", None), pending(verifier=b"vz")
    views = [
        tx.access_token.view(),
        tx.refresh_token.view(),
        ty.access_token.view(),
        tz.request.code_verifier.view(),
    ]
    put(table, "x", tx)
    put(table, "y", ty)
    put(table, "z", tz)
    tw = active(b"tw", b"rw")
    put(table, "w", tw)
    # x changed, y removed, z (Pending) changed, w identical.
    dropped = table.reload(
        accounts(block("x", client_id="other") + block("z", 'scopes = ["s"];') + block("w"))
    )
    assert sorted(dropped) == ["x", "y"]
    assert set(table.entries) == {"x", "z", "w"}
    assert isinstance(table.get("x").state, Empty) and isinstance(table.get("z").state, Empty)
    assert all(is_zeroed(v) for v in views)
    assert table.get("w").state is tw and bytes(tw.access_token.view()) == b"tw"


# -- replace ---------------------------------------------------------------------------------


def test_replace_wipes_old_secrets_and_bumps_generation():
    table = TokenTable(accounts(block("x")))
    first = active(b"secret-access", b"secret-refresh")
    g0 = table.get("x").generation
    g1 = put(table, "x", first).generation
    access, refresh = first.access_token.view(), first.refresh_token.view()
    g2 = put(table, "x", Empty()).generation
    assert len({g0, g1, g2}) == 3
    assert is_zeroed(access) and is_zeroed(refresh)
    assert len(first.access_token) == 0  # nothing left to read through the Secret either


def test_replace_pending_wipes_verifier():
    table = TokenTable(accounts(block("x")))
    old = pending(verifier=b"verifier-bytes")
    view = old.request.code_verifier.view()
    put(table, "x", old)
    put(table, "x", pending("new"))
    assert is_zeroed(view)
    assert table.pending_with_state("xyz") is None
    assert table.pending_with_state("new") is table.get("x")


def test_replace_with_same_state_keeps_secrets_but_changes_generation():
    table = TokenTable(accounts(block("x")))
    token = active()
    g1 = put(table, "x", token).generation
    g2 = put(table, "x", token).generation
    assert g1 != g2
    assert bytes(token.access_token.view()) == b"access-token"


def test_wipe_all():
    table = TokenTable(accounts(block("x") + block("y")))
    token = active()
    view = token.refresh_token.view()
    put(table, "x", token)
    put(table, "y", pending())
    table.wipe_all()
    assert all(isinstance(e.state, Empty) for e in table.entries.values())
    assert is_zeroed(view)


def test_generations_are_never_reused():
    table = TokenTable(accounts(block("x") + block("y")))
    seen = [e.generation for e in table.entries.values()]
    for i in range(5):
        seen.append(put(table, "x", Empty()).generation)
        table.reload(accounts(block("x", f'client_secret = "{i}";') + block("y")))
        seen.append(table.get("x").generation)
    assert len(seen) == len(set(seen))


# -- pending_with_state ----------------------------------------------------------------------


def test_pending_with_state():
    table = TokenTable(accounts(block("x") + block("y") + block("z")))
    put(table, "x", pending("s1"))
    put(table, "y", pending("s2"))
    put(table, "z", active())
    assert table.pending_with_state("s2") is table.get("y")
    assert table.pending_with_state("s1") is table.get("x")
    assert table.pending_with_state("nope") is None
    assert table.pending_with_state("") is None
    put(table, "y", Empty())
    assert table.pending_with_state("s2") is None


# -- status ----------------------------------------------------------------------------------

T = 1699134731.0  # Sat, 4 Nov 2023 21:52:11 +0000 (the original's example)


@pytest.fixture
def utc(monkeypatch):
    """Local time is UTC and instants are wall-clock seconds, so texts are exact."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.setattr(clock, "wall_time", lambda at: at)
    yield
    monkeypatch.undo()
    time.tzset()


def test_status_all_six_states(utc):
    table = TokenTable(accounts("".join(block(n) for n in "fedcba")))
    put(table, "b", pending())
    p = pending("s2")
    p.last_notification = T
    put(table, "c", p)
    put(table, "d", active(obtained=T, expiry=T + 3600))
    put(table, "e", active(obtained=T - 3600, expiry=T + 60, last_refresh_attempt=T + 7))
    put(table, "f", active(obtained=T - 3600, expiry=T + 60))
    assert table.status(T + 1800) == "\n".join(
        [
            "a: No access token",
            "b: Access token pending authentication",
            "c: Access token pending authentication (last notification "
            "Sat, 4 Nov 2023 21:52:11 +0000)",
            "d: Active access token (obtained Sat, 4 Nov 2023 21:52:11 +0000; "
            "expires Sat, 4 Nov 2023 22:52:11 +0000)",
            "e: Access token expired (last refresh attempt Sat, 4 Nov 2023 21:52:18 +0000)",
            "f: Access token expired (refresh not yet attempted)",
        ]
    )


def test_status_two_digit_day(utc):
    assert describe(Pending(pending().request, T + 10 * 86400), 0) == (
        "Access token pending authentication (last notification Tue, 14 Nov 2023 21:52:11 +0000)"
    )


def test_expiry_equal_to_now_counts_as_expired(utc):
    assert describe(active(expiry=T), T) == "Access token expired (refresh not yet attempted)"
    assert describe(active(expiry=T), T - 0.5).startswith("Active access token")


def test_unrepresentable_time(utc):
    assert describe(Pending(pending().request, 1e300), 0) == (
        "Access token pending authentication (last notification <unknown time>)"
    )


def test_status_sorts_whole_lines_as_bytes():
    table = TokenTable(accounts(block("a") + block("a b") + block("B") + block("é") + block("z")))
    lines = table.status(0).split("\n")
    # 'a b: …' sorts before 'a: …' because ' ' < ':' (sorting names would put 'a' first).
    assert lines == [
        "B: No access token",
        "a b: No access token",
        "a: No access token",
        "z: No access token",
        "é: No access token",
    ]


def test_real_clock_format():
    text = clock.format_instant(clock.instant())
    assert re.fullmatch(
        r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [1-9]\d? [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d [+-]\d{4}",
        text,
    ), text


# -- refresh schedule ------------------------------------------------------------------------


def entry(state, at_least: str = "1h", before: str = "90s", retry: str = "40s") -> Entry:
    act = accounts(
        block(
            "x",
            f"refresh_at_least = {at_least}; refresh_before_expiry = {before}; "
            f"refresh_retry = {retry};",
        )
    )[0]
    return Entry(act, 0, state)


def test_refresh_time_before_expiry_wins():
    # expiry - 90 s = 1910 < obtained + 1 h = 4600
    assert refresher.refresh_time(entry(active(obtained=1000, expiry=2000))) == 1910


def test_refresh_time_at_least_wins():
    # obtained + 1 h = 4600 < expiry - 90 s = 99910
    assert refresher.refresh_time(entry(active(obtained=1000, expiry=100000))) == 4600


def test_refresh_time_after_a_failed_attempt():
    e = entry(active(obtained=1000, expiry=2000, last_refresh_attempt=1950.0))
    assert refresher.refresh_time(e) == 1990


@pytest.mark.parametrize(
    ("retry_after", "due"),
    [
        (None, 1990.0),  # refresh_retry (40 s)
        (5, 1990.0),  # a provider cannot make us retry sooner
        (600, 2550.0),  # nor later than it asked
        (10**9, 1950.0 + RETRY_AFTER_MAX),  # up to the bound, whatever it asked
    ],
)
def test_refresh_time_honours_retry_after_within_bounds(retry_after, due):
    e = entry(active(last_refresh_attempt=1950.0, retry_after=retry_after))
    assert refresher.refresh_time(e) == due


def test_a_transient_refresh_result_carries_its_retry_after():
    conf = config.parse(block("x", "refresh_retry = 40s;"))
    table = TokenTable(conf.accounts)
    e = table.entries["x"]
    e.state = active(obtained=1000, expiry=2000)
    from pizauth.priv.parent import NET_RESULTS

    sent: list[bytearray] = []
    calls = runtime.Calls(lambda msg, request_id: sent.append(msg.encode(request_id)), NET_RESULTS)
    r = refresher.Refresher(
        table, lambda: conf, lambda: (None, None), None, None, calls.call, clock=lambda: 1950.0
    )
    r.start_refresh(e, 1950.0)
    (request_id,) = calls.pending
    busy = NetTokenResult(TokenOutcome.TRANSIENT, "HTTP code 503", retry_after=600)
    calls.result(request_id, NetTokenResult.decode(ipc.decode(busy.encode(request_id))))
    assert refresher.refresh_time(e) == 1950.0 + 600
    assert not refresher.due(table, 1950.0 + 599) and refresher.due(table, 1950.0 + 600)
    assert e.last_error is not None and e.last_error.message == "HTTP code 503"


def test_zero_refresh_retry_is_clamped():
    e = entry(active(obtained=1000, expiry=2000, last_refresh_attempt=1950.0), retry="0s")
    assert refresher.refresh_time(e) == 1950 + refresher.MIN_RETRY
    assert refresher.MIN_RETRY >= 1


def test_no_refresh_token_is_due_only_at_expiry():
    e = entry(active(refresh=None, obtained=1000, expiry=2000))
    assert refresher.refresh_time(e) == 2000


def test_ongoing_refresh_and_non_active_are_not_scheduled():
    assert refresher.refresh_time(entry(active(ongoing_refresh=True))) is None
    assert refresher.refresh_time(entry(Empty())) is None
    assert refresher.refresh_time(entry(pending())) is None


def test_refresher_due_and_next_wakeup():
    table = TokenTable(accounts(block("a") + block("b") + block("c") + block("d")))
    # default timings: at least 90 min, 90 s before expiry, retry 40 s
    put(table, "a", active(obtained=0, expiry=1000))  # due at 910
    put(table, "b", active(obtained=0, expiry=100000))  # due at 5400
    put(table, "c", active(obtained=0, expiry=1000, ongoing_refresh=True))
    put(table, "d", pending())
    assert refresher.next_wakeup(table) == 910
    assert refresher.due(table, 909.9) == []
    assert [e.account.name for e in refresher.due(table, 910)] == ["a"]
    assert {e.account.name for e in refresher.due(table, 6000)} == {"a", "b"}
    put(table, "a", Empty())
    put(table, "b", Empty())
    put(table, "c", Empty())
    assert refresher.next_wakeup(table) is None


# -- reminders -------------------------------------------------------------------------------


def test_reminder_without_last_notification_is_due_immediately():
    table = TokenTable(accounts(block("x")))
    put(table, "x", pending())
    assert [e.account.name for e in notifier.due(table, 900, -1e9)] == ["x"]
    assert notifier.next_wakeup(table, 900) == float("-inf")


def test_reminder_after_interval():
    e = entry(Pending(pending().request, last_notification=100.0))
    assert notifier.reminder_time(e, 900) == 1000
    table = TokenTable(accounts(block("x")))
    put(table, "x", Pending(pending().request, last_notification=100.0))
    assert notifier.due(table, 900, 999.9) == []
    assert len(notifier.due(table, 900, 1000)) == 1


def test_zero_interval_is_clamped():
    e = entry(Pending(pending().request, last_notification=100.0))
    assert notifier.reminder_time(e, 0) == 100 + notifier.MIN_INTERVAL
    assert notifier.MIN_INTERVAL >= 1


def test_exchanging_and_non_pending_not_reminded():
    p = pending()
    p.exchanging = True
    assert notifier.reminder_time(entry(p), 900) is None
    assert notifier.reminder_time(entry(Empty()), 900) is None
    assert notifier.reminder_time(entry(active()), 900) is None
    table = TokenTable(accounts(block("x") + block("y")))
    put(table, "x", p)
    put(table, "y", active())
    assert notifier.due(table, 900, 1e12) == []
    assert notifier.next_wakeup(table, 900) is None
