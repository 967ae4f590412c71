"""Property tests: whatever the input, parse() returns a Config or raises ConfigError with a
well-formed message -- never any other exception."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from pizauth.config import Config, ConfigError, parse

VALID = """// A config using every option.
auth_notify_cmd = "notify-send 'pizauth' \\"$PIZAUTH_ACCOUNT\\"";
auth_notify_interval = 15m;
error_notify_cmd = "logger";
http_listen = "127.0.0.1:0";
https_listen = none;
refresh_at_least = 90m;
refresh_before_expiry = 90s;
refresh_retry = 40s;
startup_cmd = "true";
token_event_cmd = "true";
transient_error_if_cmd = "true";
account "office365" {
    auth_uri = "https://login.microsoftonline.com/common/oauth2/v2.0/authorize";
    auth_uri_fields = { "login_hint": "a@b.com", "prompt": "consent" };
    client_id = "abc";
    client_secret = "def";
    redirect_uri = "http://localhost/cb";
    scopes = [ "https://outlook.office365.com/IMAP.AccessAsUser.All", "offline_access" ];
    token_uri = "https://login.microsoftonline.com/common/oauth2/v2.0/token";
    refresh_at_least = 1h;
    refresh_before_expiry = 2m;
    refresh_retry = 1d;
}
account "gmail" {
    auth_uri = "https://accounts.google.com/o/oauth2/auth";
    client_id = "";
    login_hint = "x";
    token_uri = "https://oauth2.googleapis.com/token";
}
"""

UNPOSITIONED = re.compile(
    r"Cannot set both http_listen and https_listen to 'none'"
    r"|Must specify at least one account"
    r"|Account .* has an 'https?' redirect but the HTTPS? server is set to 'none'",
    re.S,
)
POSITIONED = re.compile(r"Line (\d+), column (\d+):\n  [^\n]*\n[^\n]+")
SYNTAX = re.compile(r"Parsing error at line (\d+) column (\d+)\. ")

# Tokens of the config grammar plus things that must be rejected, for insertions.
VOCABULARY = [
    *"={}[];:,",
    '"',
    "\\",
    "#",
    "/",
    "\n",
    " ",
    "\t",
    "// c\n",
    '""',
    '"a"',
    '"\\""',
    '"\\n"',
    '"http://a.com"',
    '"https://b.com/#f"',
    '"state"',
    '"login_hint"',
    "0s",
    "5m",
    "99999999999999999999d",
    "5",
    "none",
    "account",
    "auth_error_cmd",
    "auth_notify_cmd",
    "auth_notify_interval",
    "auth_uri",
    "auth_uri_fields",
    "client_id",
    "client_secret",
    "error_notify_cmd",
    "http_listen",
    "https_listen",
    "login_hint",
    "refresh_retry",
    "redirect_uri",
    "refresh_before_expiry",
    "refresh_at_least",
    "scopes",
    "startup_cmd",
    "token_event_cmd",
    "token_uri",
    "transient_error_if_cmd",
]
TOKEN_RE = re.compile(r'"(?:[^"\\]|\\["\\])*"|//[^\n]*|[0-9]+[dhms]|[a-z_]+|\s+|.', re.S)
VALID_TOKENS = TOKEN_RE.findall(VALID)


def check(text: str) -> None:
    try:
        conf = parse(text)
    except ConfigError as e:
        msg = str(e)
        lines = text.split("\n")
        if m := SYNTAX.match(msg):
            line, col = int(m[1]), int(m[2])
            assert 1 <= line <= len(lines) and 1 <= col <= len(lines[line - 1]) + 1, msg
        elif m := POSITIONED.fullmatch(msg):
            line, col = int(m[1]), int(m[2])
            assert 1 <= line <= len(lines) and 1 <= col <= len(lines[line - 1]), msg
        else:
            assert msg.startswith("Invalid time") or UNPOSITIONED.fullmatch(msg), msg
    else:
        assert isinstance(conf, Config) and conf.accounts


def test_valid_config_parses() -> None:
    conf = parse(VALID)
    assert [a.name for a in conf.accounts] == ["office365", "gmail"]
    assert "".join(VALID_TOKENS) == VALID


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_arbitrary_text(text: str) -> None:
    check(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(VOCABULARY), max_size=40).map(" ".join))
def test_token_soup(text: str) -> None:
    check(text)


# A mutation: (kind, position as a fraction of the length, inserted item).
MUTATION = st.tuples(
    st.sampled_from(["delete", "duplicate", "insert"]),
    st.floats(min_value=0, max_value=1, exclude_max=True),
    st.one_of(st.sampled_from(VOCABULARY), st.characters()),
)


def mutate(items: list[str], mutations: list[tuple[str, float, str]]) -> str:
    items = list(items)
    for kind, where, new in mutations:
        i = int(where * len(items)) if items else 0
        if kind == "delete" and items:
            del items[i]
        elif kind == "duplicate" and items:
            items.insert(i, items[i])
        else:
            items.insert(i, new)
    return "".join(items)


@settings(max_examples=300, deadline=None)
@given(st.lists(MUTATION, min_size=1, max_size=4))
def test_character_mutations_of_valid_config(mutations: list[tuple[str, float, str]]) -> None:
    check(mutate(list(VALID), mutations))


@settings(max_examples=300, deadline=None)
@given(st.lists(MUTATION, min_size=1, max_size=4))
def test_token_mutations_of_valid_config(mutations: list[tuple[str, float, str]]) -> None:
    check(mutate(VALID_TOKENS, mutations))
