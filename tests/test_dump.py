"""The dump format and the restore merge rule (pizauth 1.1's, and its dump_restore tests;
docs/compatibility.md "Events on restore").

The golden dumps here are assembled by hand, field by field with struct.pack, from the
format description (pizauth 1.1's bincode layout), and encrypted with the published key
typed in again: they do not come from the module's encoder, so they check it rather than echo it.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from _pytest.logging import LogCaptureFixture
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st
from token_states import put

from pizauth import config, ipc
from pizauth.cmd import child as command
from pizauth.ipc import MsgType
from pizauth.priv.parent import Parent, Sockets
from pizauth.priv.state.authurl import AuthRequest
from pizauth.priv.state.secmem import Secret
from pizauth.priv.state.tokens import Active, Empty, Pending, TokenTable
from pizauth.priv.storage import dump
from pizauth.priv.storage.dump import DumpError, Now, Time

# The original's published key, typed in again rather than imported from the module.
SPEC_KEY = bytes.fromhex(
    "66 a2 47 a8 5e 48 cf ec aa ed 9b 36 eb a9 7d 5350 d4 28 63 75 09 7a 44 ee ff b9 c4 54 6b 65 a3"
)
NONCE = bytes(range(100, 112))
NOW = Now(wall=1_700_000_000.0, instant=5000.0)

ACCESS = b"ya29.access-token-\xc3\xa9"  # a token is a Rust String: any UTF-8
REFRESH = b"1//refresh-token"

WORK = """account "w\u00f6rk" {
    auth_uri = "https://auth.example/authorize";
    auth_uri_fields = {"prompt": "consent", "tenant": "x"};
    client_id = "cid";
    client_secret = "s3cret";
    scopes = ["mail", "offline_access"];
    redirect_uri = "http://localhost:8080/cb";
    token_uri = "https://auth.example/token";
}
"""
HOME = """account "home" {
    auth_uri = "https://home.example/a";
    client_id = "h";
    scopes = ["s"];
    token_uri = "https://home.example/t";
}
"""


# -- the format, by hand -------------------------------------------------------------------


def u32(n: int) -> bytes:
    return struct.pack("<I", n)


def u64(n: int) -> bytes:
    return struct.pack("<Q", n)


def string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return u64(len(b)) + b


def some(value: bytes) -> bytes:
    return b"\x01" + value


NONE = b"\x00"


def systime(secs: int, nanos: int) -> bytes:
    return u64(secs) + u32(nanos)


WORK_ACCOUNT = (
    string("https://auth.example/authorize")
    + u64(2)
    + string("prompt")
    + string("consent")
    + string("tenant")
    + string("x")
    + string("cid")
    + some(string("s3cret"))
    + string("http://localhost:8080/cb")
    + u64(2)
    + string("mail")
    + string("offline_access")
    + string("https://auth.example/token")
)
WORK_ACTIVE = (
    u32(1)
    + string(ACCESS)
    + systime(1_699_999_990, 500_000_000)  # obtained: instant 4990.5
    + systime(1_700_003_600, 250_000_000)  # expiry: instant 8600.25
    + some(string(REFRESH))
)


def home_account(secret_tag: bytes = NONE) -> bytes:
    return (
        string("https://home.example/a")
        + u64(0)
        + string("h")
        + secret_tag  # no client_secret
        + string("http://localhost/")  # the default, as the original stores it
        + u64(1)
        + string("s")
        + string("https://home.example/t")
    )


HOME_ACCOUNT = home_account()
EMPTY = u32(0)

# "wörk" Active, "home" Pending (dumped as Empty), in config order.
GOLDEN_PLAINTEXT = (
    u64(1)
    + u64(2)
    + string("w\u00f6rk")
    + WORK_ACCOUNT
    + WORK_ACTIVE
    + string("home")
    + HOME_ACCOUNT
    + EMPTY
)


def seal(plaintext: bytes, nonce: bytes = NONCE) -> bytes:
    return nonce + ChaCha20Poly1305(SPEC_KEY).encrypt(nonce, plaintext, None)


GOLDEN = seal(GOLDEN_PLAINTEXT)


# -- tables --------------------------------------------------------------------------------


def table(text: str = WORK + HOME) -> TokenTable:
    return TokenTable(config.parse(text).accounts)


def pending(verifier: bytes = b"verifier") -> Pending:
    return Pending(AuthRequest("state", Secret(verifier), "http://localhost/", "http://a/"))


def active(
    access: bytes = ACCESS,
    refresh: bytes | None = REFRESH,
    obtained: float = 4990.5,
    expiry: float = 8600.25,
) -> Active:
    return Active(Secret(access), obtained, expiry, None if refresh is None else Secret(refresh))


def golden_table() -> TokenTable:
    t = table()
    put(t, "w\u00f6rk", active())
    put(t, "home", pending())
    return t


def snapshot(t: TokenTable) -> dict[str, tuple]:
    """Everything restore could change, comparable with ==."""
    out: dict[str, tuple] = {}
    for name, entry in t.entries.items():
        state = entry.state
        detail: tuple = (type(state).__name__,)
        if isinstance(state, Active):
            detail += (
                bytes(state.access_token.view()),
                None if state.refresh_token is None else bytes(state.refresh_token.view()),
                state.obtained,
                state.expiry,
            )
        elif isinstance(state, Pending):
            detail += (bytes(state.request.code_verifier.view()),)
        out[name] = (entry.generation, detail)
    return out


# -- golden bytes ----------------------------------------------------------------------------


def test_encoder_produces_the_golden_bytes() -> None:
    assert bytes(dump.encode(golden_table(), NOW)) == GOLDEN_PLAINTEXT
    assert bytes(dump.dump(golden_table(), NOW, NONCE)) == GOLDEN


def test_dump_layout() -> None:
    out = dump.dump(golden_table(), NOW, NONCE)
    assert out[:12] == NONCE  # NONCE || CIPHERTEXT || TAG
    assert len(out) == 12 + len(GOLDEN_PLAINTEXT) + 16
    # Obfuscated: neither tokens nor the client secret can be grepped for.
    for secret in (ACCESS, REFRESH, b"s3cret"):
        assert secret not in out


def test_golden_decodes_to_the_accounts_tokens_and_times() -> None:
    plaintext = dump.open_sealed(GOLDEN)
    assert plaintext == GOLDEN_PLAINTEXT
    d = dump.decode(plaintext)
    assert d.version == 1
    assert list(d.accounts) == ["w\u00f6rk", "home"]
    work_account, work_token = d.accounts["w\u00f6rk"]
    assert work_account == dump.AccountDump(
        auth_uri="https://auth.example/authorize",
        auth_uri_fields=(("prompt", "consent"), ("tenant", "x")),
        client_id="cid",
        client_secret="s3cret",
        redirect_uri="http://localhost:8080/cb",
        scopes=("mail", "offline_access"),
        token_uri="https://auth.example/token",
    )
    assert work_token is not None
    assert bytes(work_token.access_token.view()) == ACCESS
    assert work_token.refresh_token is not None
    assert bytes(work_token.refresh_token.view()) == REFRESH
    assert work_token.obtained == Time(1_699_999_990, 500_000_000)
    assert work_token.expiry == Time(1_700_003_600, 250_000_000)
    home_account, home_token = d.accounts["home"]
    assert home_account.client_secret is None
    assert home_account.auth_uri_fields == ()
    assert home_account.redirect_uri == "http://localhost/"
    assert home_token is None  # Pending was dumped as Empty


def test_golden_restores_into_a_fresh_table() -> None:
    t = table()
    before = {name: e.generation for name, e in t.entries.items()}
    assert dump.restore(t, GOLDEN, NOW) == ["w\u00f6rk"]
    work = t.entries["w\u00f6rk"]
    assert work.generation != before["w\u00f6rk"]
    assert isinstance(work.state, Active)
    assert bytes(work.state.access_token.view()) == ACCESS
    assert work.state.refresh_token is not None
    assert bytes(work.state.refresh_token.view()) == REFRESH
    assert (work.state.obtained, work.state.expiry) == (4990.5, 8600.25)
    # As pizauth 1.1: no failures, no last attempt, not refreshing.
    assert work.state.consecutive_refresh_fails == 0
    assert work.state.last_refresh_attempt is None
    assert work.state.ongoing_refresh is False
    assert t.entries["home"].generation == before["home"]
    assert isinstance(t.entries["home"].state, Empty)


def test_times_are_relative_to_the_clock_of_each_side() -> None:
    # Dumped one hour before expiry; restored 100 s later after a reboot (instants restart).
    t = table()
    assert dump.restore(t, GOLDEN, Now(NOW.wall + 100, 20.0)) == ["w\u00f6rk"]
    state = t.entries["w\u00f6rk"].state
    assert isinstance(state, Active)
    assert state.expiry == pytest.approx(20.0 + 3600.25 - 100)
    assert state.obtained == pytest.approx(20.0 - 9.5 - 100)


def test_options_absent() -> None:
    t = table(HOME)
    put(t, "home", active(access=b"a", refresh=None, obtained=5000.0, expiry=5001.0))
    expected = (
        u64(1)
        + u64(1)
        + string("home")
        + HOME_ACCOUNT
        + u32(1)
        + string(b"a")
        + systime(1_700_000_000, 0)
        + systime(1_700_000_001, 0)
        + NONE
    )
    assert bytes(dump.dump(t, NOW, NONCE)) == seal(expected)
    fresh = table(HOME)
    assert dump.restore(fresh, seal(expected), NOW) == ["home"]
    state = fresh.entries["home"].state
    assert isinstance(state, Active) and state.refresh_token is None


def test_nonce_is_random_by_default() -> None:
    a, b = dump.dump(golden_table(), NOW), dump.dump(golden_table(), NOW)
    assert a[:12] != b[:12]
    assert dump.open_sealed(a) == dump.open_sealed(b) == GOLDEN_PLAINTEXT


@pytest.mark.parametrize(
    "at, clock, expected",
    [
        (5000.0, NOW, Time(1_700_000_000, 0)),
        (5000.000000001, NOW, Time(1_700_000_000, 0)),  # below float resolution here
        (-1e-10, Now(10.0, 0.0), Time(10, 0)),  # 9.9999999999 s rounds into the next second
        (0.25, Now(10.0, 0.0), Time(10, 250_000_000)),
        (float("inf"), NOW, Time(1_700_000_000, 0)),  # unrepresentable: "now", as the original
        (-1e10, NOW, Time(1_700_000_000, 0)),  # before 1970
    ],
)
def test_to_time(at: float, clock: Now, expected: Time) -> None:
    assert dump.to_time(at, clock) == expected


# -- restore errors: each leaves the table untouched ----------------------------


def malformed(plaintext: bytes) -> bytes:
    return seal(plaintext)


FLIPPED = [GOLDEN[:i] + bytes([GOLDEN[i] ^ 0x01]) + GOLDEN[i + 1 :] for i in (0, 11, 12, 40, -1)]

DAMAGED = "Restoring dump failed: not a pizauth dump, or damaged (authentication failed)"

ERRORS = [
    (b"", "Input too short: not a pizauth dump (0 bytes)"),
    (GOLDEN[:11], "Input too short: not a pizauth dump (11 bytes)"),
    (GOLDEN[:12], "Restoring dump failed: not a pizauth dump (12 bytes)"),
    (GOLDEN[:27], "Restoring dump failed: not a pizauth dump (27 bytes)"),  # shorter than a tag
    (GOLDEN[:-1], DAMAGED),
    (GOLDEN + b"\x00", DAMAGED),
    *[(flipped, DAMAGED) for flipped in FLIPPED],
    (
        seal(u64(2) + GOLDEN_PLAINTEXT[8:]),
        "Unknown dump version: made by an incompatible version of pizauth "
        "(dump version 2, this pizauth reads version 1)",
    ),
    (
        seal(u64(0)),
        "Unknown dump version: made by an incompatible version of pizauth "
        "(dump version 0, this pizauth reads version 1)",
    ),
]


@pytest.mark.parametrize("data, message", ERRORS)
def test_restore_errors(data: bytes, message: str) -> None:
    t = golden_table()
    before = snapshot(t)
    with pytest.raises(DumpError) as e:
        dump.restore(t, data, NOW)
    assert str(e.value) == message
    assert snapshot(t) == before


DECODER_ERRORS = [
    b"",
    b"\x01\x00\x00",  # version cut short
    u64(1),  # no map
    GOLDEN_PLAINTEXT[:-1],
    GOLDEN_PLAINTEXT[:-40],
    GOLDEN_PLAINTEXT + b"abc",  # trailing bytes
    u64(1) + u64(0) + b"\x00",
    u64(1) + u64(2**64 - 1),  # absurd account count
    u64(1) + u64(1) + u64(2**63) + b"x",  # absurd string length
    u64(1) + u64(1) + string("home") + HOME_ACCOUNT + u32(2),  # no such token state
    u64(1) + u64(1) + string(b"\xff") + HOME_ACCOUNT + EMPTY,  # name not UTF-8
    # client_secret Option tag 2
    u64(1) + u64(1) + string("home") + home_account(secret_tag=b"\x02") + EMPTY,
    # a token that is not UTF-8 (a Rust String could not hold it)
    u64(1)
    + u64(1)
    + string("home")
    + HOME_ACCOUNT
    + u32(1)
    + string(b"tok\xc0\xaf")
    + systime(1, 0)
    + systime(2, 0)
    + NONE,
    # nanoseconds out of range
    u64(1)
    + u64(1)
    + string("home")
    + HOME_ACCOUNT
    + u32(1)
    + string(b"tok")
    + systime(1, 1_000_000_000)
    + systime(2, 0)
    + NONE,
    # the same account twice
    u64(1) + u64(2) + (string("home") + HOME_ACCOUNT + EMPTY) * 2,
]


@pytest.mark.parametrize("plaintext", DECODER_ERRORS)
def test_restore_malformed_plaintext(plaintext: bytes) -> None:
    t = table()
    put(t, "home", pending())
    before = snapshot(t)
    with pytest.raises(DumpError) as e:
        dump.restore(t, malformed(plaintext), NOW)
    assert str(e.value).startswith("Malformed dump: "), str(e.value)
    assert snapshot(t) == before


def test_malformed_messages_say_what_is_wrong() -> None:
    def message(plaintext: bytes) -> str:
        with pytest.raises(DumpError) as e:
            dump.decode(plaintext)
        return str(e.value)

    assert message(GOLDEN_PLAINTEXT + b"abc") == "Malformed dump: 3 trailing bytes"
    assert message(u64(1) + u64(1) + u64(2**63) + b"x") == (
        f"Malformed dump: length {2**63} at offset 16 is too large"
    )
    assert message(b"\x01\x00\x00") == "Malformed dump: 8 bytes wanted at offset 0, 3 left"


def test_error_late_in_the_dump_changes_nothing() -> None:
    # The first account is good, the second broken: decode everything, then apply.
    t = golden_table()
    put(t, "w\u00f6rk", Empty())
    before = snapshot(t)
    broken = GOLDEN_PLAINTEXT[: -len(EMPTY)] + u32(7)
    with pytest.raises(DumpError):
        dump.restore(t, malformed(broken), NOW)
    assert snapshot(t) == before


# -- merge rule (pizauth 1.1's) -----------------------------------------------------------------

BASE = {
    "auth_uri": '"http://a.com/"',
    "auth_uri_fields": '{"k1": "v1", "k2": "v2"}',
    "client_id": '"b"',
    "client_secret": '"c"',
    "redirect_uri": '"http://localhost/"',
    "scopes": '["d", "e"]',
    "token_uri": '"http://g.com/"',
}


def conf(extra: str = "", **changes: str | None) -> str:
    fields = {**BASE, **changes}
    body = "".join(f"  {k} = {v};\n" for k, v in fields.items() if v is not None)
    return f'account "x" {{\n{body}{extra}}}\n'


def dumped_from(text: str, state: Active | None = None) -> bytearray:
    source = table(text)
    for name in source.entries:
        put(source, name, state or active())
    return dump.dump(source, NOW)


@pytest.mark.parametrize(
    "changes",
    [
        {"auth_uri": '"http://a.com/x"'},
        {"auth_uri_fields": '{"k2": "v2", "k1": "v1"}'},  # order matters
        {"auth_uri_fields": None},
        {"client_id": '"B"'},
        {"client_secret": '"other"'},
        {"client_secret": None},
        {"redirect_uri": '"http://localhost"'},  # the raw string, not the URL it means
        {"scopes": '["e", "d"]'},
        {"token_uri": '"http://g.com"'},
    ],
)
def test_a_different_account_gets_nothing(changes: dict[str, str | None]) -> None:
    t = table(conf())
    before = snapshot(t)
    assert dump.restore(t, dumped_from(conf(**changes)), NOW) == []
    assert snapshot(t) == before


@pytest.mark.parametrize(
    "text",
    [
        conf(),
        conf(redirect_uri=None),  # the default is the same string
        conf('  login_hint = "me@example.com"; refresh_at_least = 1m;\n'),  # not security
    ],
)
def test_the_same_account_gets_the_token(text: str) -> None:
    t = table(conf())
    assert dump.restore(t, dumped_from(text), NOW) == ["x"]
    assert isinstance(t.entries["x"].state, Active)


# Each setting newer than pizauth 1.1 that decides where tokens go (config.NEWER_DESTINATION).
NEWER = {
    "issuer": 'client_secret = "c";\n  issuer = "https://i.example";\n',
    "client_secret_cmd": 'client_secret_cmd = "cat s";\n',
    "token_endpoint_auth_method": (
        'client_secret = "c";\n  token_endpoint_auth_method = "client_secret_basic";\n'
    ),
    "revoke_uri": 'client_secret = "c";\n  revoke_uri = "https://r.example/";\n',
}


def newer(setting: str, value: str | None = None) -> str:
    extra = NEWER[setting]
    if value is not None:
        extra = extra.replace(extra.split('"')[-2], value)
    return conf(extra, client_secret=None)


def test_every_newer_setting_is_covered() -> None:
    assert set(NEWER) | {"auth_flow", "device_auth_uri"} == set(config.NEWER_DESTINATION)


@pytest.mark.parametrize("setting", sorted(NEWER))
def test_a_token_is_bound_to_the_newer_settings(setting: str, caplog: LogCaptureFixture) -> None:
    text = newer(setting)
    # The same settings: restored.
    t = table(text)
    assert dump.restore(t, dumped_from(text), NOW) == ["x"]
    # A 1.1-style account with the same 1.1 fields: nothing, and the log says why.
    t = table(conf())
    assert dump.restore(t, dumped_from(text), NOW) == []
    assert "not restored: its settings changed since (" in caplog.text
    assert "one of auth_flow, device_auth_uri, issuer, client_secret_cmd" in caplog.text
    assert "it needs a login" in caplog.text
    # The other way round too.
    t = table(text)
    assert dump.restore(t, dumped_from(conf()), NOW) == []


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("issuer", "https://other.example"),
        ("client_secret_cmd", "cat t"),
        ("revoke_uri", "https://r.example/other"),
    ],
)
def test_a_changed_newer_setting_gets_nothing(setting: str, value: str) -> None:
    t = table(newer(setting, value))
    before = snapshot(t)
    assert dump.restore(t, dumped_from(newer(setting)), NOW) == []
    assert snapshot(t) == before


def test_a_device_account_is_bound_to_its_endpoint() -> None:
    device = (
        'account "x" { auth_flow = "device"; device_auth_uri = "http://a.com/d";'
        ' token_uri = "http://g.com/"; client_id = "b"; }\n'
    )
    assert dump.restore(table(device), dumped_from(device), NOW) == ["x"]
    moved = device.replace("http://a.com/d", "http://a.com/d2")
    assert dump.restore(table(moved), dumped_from(device), NOW) == []


def test_a_1_1_account_dumps_without_the_binding_and_one_with_newer_settings_with_it() -> None:
    """The binding rides in auth_uri_fields, where a 1.1 reader's layout has room for it:
    every dump stays decodable by pizauth 1.1, and a 1.1-style account's is unchanged."""
    plain = dump.AccountDump.of(table(conf()).entries["x"].account)
    assert plain.auth_uri_fields == (("k1", "v1"), ("k2", "v2"))
    bound = dump.AccountDump.of(table(newer("issuer")).entries["x"].account)
    assert bound.auth_uri_fields[:2] == plain.auth_uri_fields
    [(name, value)] = bound.auth_uri_fields[2:]
    assert name == dump.BINDING_FIELD and value.startswith("sha256:") and len(value) == 71
    # What a 1.1 reader would do with it: decode it like any dump (same bincode), and
    # give the token to no account of its own, since auth_uri_fields differ.
    decoded = dump.decode(dump.encode(table(newer("issuer")), NOW))
    assert decoded.accounts["x"][0] == bound
    decoded.wipe()


def test_unknown_accounts_are_ignored() -> None:
    data = dumped_from(conf().replace('"x"', '"y"'))
    t = table(conf())
    before = snapshot(t)
    assert dump.restore(t, data, NOW) == []
    assert snapshot(t) == before


def test_pending_is_replaced_and_its_verifier_wiped() -> None:
    t = table(conf())
    login = pending(b"verifier-bytes")
    put(t, "x", login)
    generation = t.entries["x"].generation
    assert dump.restore(t, dumped_from(conf()), NOW) == ["x"]
    assert isinstance(t.entries["x"].state, Active)
    assert t.entries["x"].generation != generation
    assert len(login.request.code_verifier) == 0


def test_active_is_never_overwritten() -> None:
    t = table(conf())
    put(t, "x", active(access=b"current", expiry=100.0))  # even an expired one
    before = snapshot(t)
    assert dump.restore(t, dumped_from(conf(), active(access=b"newer")), NOW) == []
    assert snapshot(t) == before


@pytest.mark.parametrize("current", [None, "pending", "active"])
def test_a_dumped_empty_clears_nothing(current: str | None) -> None:
    t = table(conf())
    if current == "pending":
        put(t, "x", pending())
    elif current == "active":
        put(t, "x", active())
    before = snapshot(t)
    assert dump.restore(t, dump.dump(table(conf()), NOW), NOW) == []
    assert snapshot(t) == before


class TrackedSecret(Secret):
    made: list[Secret] = []

    def __init__(self, data: ipc.Buffer) -> None:
        super().__init__(data)
        TrackedSecret.made.append(self)


def test_tokens_not_restored_are_wiped(monkeypatch: pytest.MonkeyPatch) -> None:
    TrackedSecret.made = []
    monkeypatch.setattr(dump, "Secret", TrackedSecret)
    t = golden_table()  # "wörk" is Active: the dumped token is not taken
    dump.restore(t, dump.dump(golden_table(), NOW), NOW)
    assert len(TrackedSecret.made) == 2
    assert all(len(s) == 0 for s in TrackedSecret.made)

    TrackedSecret.made = []
    t = table()
    dump.restore(t, GOLDEN, NOW)
    state = t.entries["w\u00f6rk"].state
    assert isinstance(state, Active)
    assert {id(s) for s in TrackedSecret.made} == {id(state.access_token), id(state.refresh_token)}
    assert len(state.access_token) == len(ACCESS)


class SpyCipher:
    """ChaCha20Poly1305 that remembers the plaintext buffers it was given or filled."""

    buffers: list[bytearray] = []

    def __init__(self, key: bytes) -> None:
        self.inner = ChaCha20Poly1305(key)

    def encrypt_into(self, nonce: bytes, data: memoryview, aad: None, buf: memoryview) -> int:
        SpyCipher.buffers.append(data.obj if isinstance(data, memoryview) else data)
        return self.inner.encrypt_into(nonce, data, aad, buf)

    def decrypt_into(self, nonce: bytes, data: memoryview, aad: None, buf: bytearray) -> int:
        SpyCipher.buffers.append(buf)
        return self.inner.decrypt_into(nonce, data, aad, buf)


@pytest.mark.skipif(
    not hasattr(ChaCha20Poly1305, "decrypt_into"), reason="cryptography < 44: bytes only"
)
def test_plaintexts_are_wiped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dump, "ChaCha20Poly1305", SpyCipher)
    SpyCipher.buffers = []
    data = dump.dump(golden_table(), NOW)
    dump.restore(table(), data, NOW)
    bad = bytearray(data)
    bad[-1] ^= 1
    with pytest.raises(DumpError):
        dump.restore(table(), bad, NOW)
    # encrypt's plaintext, decrypt's plaintext, and the unauthenticated one.
    assert len(SpyCipher.buffers) == 3
    for buf in SpyCipher.buffers:
        assert len(buf) == len(GOLDEN_PLAINTEXT)
        assert not any(buf)


# -- pizauth 1.1's dump_restore and dump_restore_error tests ----------------------------------

ORIGINAL = """
account "x" { auth_uri = "http://a.com"; client_id = "b"; client_secret = "c";
              scopes = ["d", "e"]; redirect_uri = "http://f.com"; token_uri = "http://g.com"; }
account "y" { auth_uri = "http://a.com"; client_id = "b"; client_secret = "c";
              scopes = ["d", "e"]; redirect_uri = "http://f.com"; token_uri = "http://g.com"; }
"""


def test_dump_restore_scenario() -> None:
    t = table(ORIGINAL)
    original = t.entries["x"].generation
    empty_dump = dump.dump(t)
    # All Empty, restored: nothing changes.
    assert dump.restore(t, empty_dump) == []
    assert t.entries["x"].generation == original
    assert isinstance(t.entries["x"].state, Empty)
    # Pending, restoring the Empty dump: stays Pending.
    put(t, "x", pending())
    pending_generation = t.entries["x"].generation
    dump.restore(t, empty_dump)
    assert isinstance(t.entries["x"].state, Pending)
    assert t.entries["x"].generation == pending_generation
    # Active, dumped and restored onto itself: still Active, and untouched.
    put(t, "x", active(refresh=None, obtained=0.0, expiry=60.0))
    active_generation = t.entries["x"].generation
    active_dump = dump.dump(t)
    assert dump.restore(t, active_dump) == []
    assert isinstance(t.entries["x"].state, Active)
    assert t.entries["x"].generation == active_generation != original
    # A fresh server with the same configuration takes the token.
    fresh = table(ORIGINAL)
    fresh_generation = fresh.entries["x"].generation
    assert dump.restore(fresh, active_dump) == ["x"]
    assert isinstance(fresh.entries["x"].state, Active)
    assert fresh.entries["x"].generation != fresh_generation
    assert isinstance(fresh.entries["y"].state, Empty)


def test_dump_restore_error_scenario() -> None:
    t = table(ORIGINAL)
    put(t, "x", pending())
    before = snapshot(t)
    version_2 = bytearray(dump.encode(table(ORIGINAL), NOW))
    version_2[:8] = u64(2)
    with pytest.raises(DumpError, match="^Unknown dump version: "):
        dump.restore(t, seal(bytes(version_2)))
    assert snapshot(t) == before


# -- size -------------------------------------------------------------------------------------


def test_fifty_accounts_with_4k_tokens_fit_in_one_frame() -> None:
    text = "".join(
        f'account "account-{i:02}@example.com" {{ '
        f'auth_uri = "https://login.microsoftonline.com/common/oauth2/v2.0/authorize"; '
        f'client_id = "{i:08x}-0000-4000-8000-000000000000"; client_secret = "{"s" * 40}"; '
        f'scopes = ["https://outlook.office.com/IMAP.AccessAsUser.All", '
        f'"https://outlook.office.com/SMTP.Send", "offline_access"]; '
        f'token_uri = "https://login.microsoftonline.com/common/oauth2/v2.0/token"; }}\n'
        for i in range(50)
    )
    source = table(text)
    tokens = {}
    for i, name in enumerate(source.entries):
        access, refresh = bytes([65 + i % 26]) * 4096, bytes([97 + i % 26]) * 4096
        tokens[name] = (access, refresh)
        put(source, name, active(access, refresh))
    data = dump.dump(source, NOW)
    assert len(data) > 50 * 2 * 4096
    assert len(data) <= dump.MAX_DUMP < ipc.MAX_MESSAGE
    ipc.encode(MsgType.CMD_REPLY, 1, [data])  # the reply frame
    request = b"restore:" + bytes(data)
    assert len(request) <= command.MAX_REQUEST
    command.parse_request(request).encode(1)  # the request frame

    target = table(text)
    assert dump.restore(target, data, NOW) == list(target.entries)
    for name, entry in target.entries.items():
        assert isinstance(entry.state, Active)
        assert entry.state.refresh_token is not None
        got = (bytes(entry.state.access_token.view()), bytes(entry.state.refresh_token.view()))
        assert got == tokens[name]


def test_max_dump_fits_the_command_child_limit() -> None:
    assert dump.MAX_DUMP + len(b"restore:") <= command.MAX_REQUEST


# -- UTF-8 check without str -------------------------------------------------------------------


def decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@given(st.binary(max_size=40))
def test_is_utf8_on_bytes(data: bytes) -> None:
    assert dump.is_utf8(memoryview(data)) == decodes(data)


@given(st.text(max_size=20), st.binary(max_size=3))
def test_is_utf8_on_text(text: str, tail: bytes) -> None:
    data = text.encode("utf-8", "surrogatepass") + tail
    assert dump.is_utf8(memoryview(data)) == decodes(data)


@pytest.mark.parametrize(
    "data",
    [b"\xc0\x80", b"\xe0\x80\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf0\x9f\x98", b"\x80"],
)
def test_is_utf8_rejects(data: bytes) -> None:
    assert not dump.is_utf8(memoryview(data))


# -- the parent's handlers ------------------------------------------------------------------


class Harness(NamedTuple):
    parent: Parent
    sent: list[tuple[bytes, bool]]  # (reply, sent as secret)
    events: list[tuple[str, str]]


@pytest.fixture
def harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    control = socket.socket(socket.AF_UNIX)
    control.bind(str(tmp_path / "s"))
    parent = Parent(
        config.parse(WORK + HOME),
        "unused",
        Sockets(control, None, None),
        [],
        lambda _startup_done: None,
    )
    h = Harness(parent, [], [])

    def send(frame: bytearray, secret: bool = False) -> None:
        h.sent.append((bytes(ipc.decode(frame).fields[0]), secret))

    monkeypatch.setattr(parent.cmd, "send", send)
    monkeypatch.setattr(
        parent.notifier, "event", lambda name, event: h.events.append((name, event))
    )
    yield h
    control.close()


def request(message: ipc.Wire) -> ipc.Wire:
    """`message` as the parent's dispatcher hands it over: decoded from its frame."""
    return ipc.decode_as(ipc.decode(message.encode(7)))


def test_parent_dump_reply_is_raw_and_secret(harness: Harness) -> None:
    put(harness.parent.table, "w\u00f6rk", active(expiry=1e12))
    harness.parent.commands.dump(7, request(ipc.CmdDump()))
    [(reply, secret)] = harness.sent
    assert secret
    token = dump.decode(dump.open_sealed(reply)).accounts["w\u00f6rk"][1]
    assert token is not None and bytes(token.access_token.view()) == ACCESS


def test_parent_refuses_a_dump_restore_could_not_take(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dump, "MAX_DUMP", 100)
    harness.parent.commands.dump(7, request(ipc.CmdDump()))
    assert harness.sent == [(b"error:Dump too large to be restored", False)]


def test_parent_restore_raises_token_new(harness: Harness) -> None:
    harness.parent.commands.restore(7, request(ipc.CmdRestore(GOLDEN)))
    assert harness.sent == [(b"ok:", False)]
    # docs/compatibility.md "Events on restore": the original emits no event, so token_event_cmd
    # never saw restored tokens.
    assert harness.events == [("w\u00f6rk", "token_new")]
    assert isinstance(harness.parent.table.entries["w\u00f6rk"].state, Active)


def test_parent_restore_error_reply(harness: Harness) -> None:
    harness.parent.commands.restore(7, request(ipc.CmdRestore(GOLDEN[:-1])))
    assert harness.sent == [(b"error:" + DAMAGED.encode(), False)]
    assert harness.events == []
    assert isinstance(harness.parent.table.entries["w\u00f6rk"].state, Empty)
