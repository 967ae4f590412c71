"""The authorisation URL, PKCE and redirect-URI rules, with pizauth 1.1's test cases."""

from __future__ import annotations

import base64
import hashlib
import re
import urllib.parse

import pytest

from pizauth import config
from pizauth.ipc import Callback
from pizauth.priv.state.authurl import (
    effective_redirect_uri,
    form_encode,
    new_auth_request,
    parse_url,
    redirect_matches,
)

B64URL = re.compile(r"^[A-Za-z0-9_-]+$")

OWN_KEYS = [
    "access_type",
    "code_challenge",
    "code_challenge_method",
    "client_id",
    "redirect_uri",
    "response_type",
    "state",
]


def account(globals_: str = "", **opts: str) -> config.Account:
    """An account "x" from config text; `opts` are raw option values (already quoted)."""
    values = {
        "auth_uri": '"http://a.com/auth"',
        "client_id": '"test_client_id"',
        "token_uri": '"http://t.com/token"',
        **opts,
    }
    body = "".join(f"  {k} = {v};\n" for k, v in values.items())
    return config.parse(f'{globals_}\naccount "x" {{\n{body}}}\n').accounts[0]


def raw_pairs(url: str) -> list[tuple[str, str]]:
    """The query of `url` as (key, still-encoded value) pairs, in order."""
    query = url.split("?", 1)[1]
    return [tuple(p.split("=", 1)) for p in query.split("&")]  # type: ignore[misc]


def decoded(url: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in raw_pairs(url):
        out.setdefault(urllib.parse.unquote_plus(k), []).append(urllib.parse.unquote_plus(v))
    return out


# -- form encoding ---------------------------------------------------------------------------


def test_form_encode_keeps_only_the_form_safe_set():
    safe = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789*-._"
    assert form_encode(safe) == safe


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        (" ", "+"),
        ("a b", "a+b"),
        ("+", "%2B"),
        ("~", "%7E"),  # urllib's quote_plus would keep '~'; the original does not
        ("/", "%2F"),
        (":", "%3A"),
        ("&=?#%", "%26%3D%3F%23%25"),
        ("é", "%C3%A9"),
        ("\n", "%0A"),
        ("", ""),
    ],
)
def test_form_encode_escapes_everything_else_upper_case(text, encoded):
    assert form_encode(text) == encoded


# -- the authorisation URL -------------------------------------------------------------------


def test_parameters_in_exact_order_with_scopes_fields_and_login_hint_last():
    act = account(
        scopes='["c", "d"]',
        auth_uri_fields='{"l": "m", "n": "o", "l": "p"}',
        client_secret='"h"',
        login_hint='"i@j.com"',
    )
    req = new_auth_request(act, 41321, None)
    pairs = raw_pairs(req.url)
    assert [k for k, _ in pairs] == [*OWN_KEYS, "scope", "l", "n", "l", "login_hint"]
    values = dict(pairs[:7])
    assert values["access_type"] == "offline"
    assert values["code_challenge_method"] == "S256"
    assert values["client_id"] == "test_client_id"
    assert values["redirect_uri"] == "http%3A%2F%2Flocalhost%3A41321%2F"
    assert values["response_type"] == "code"
    assert pairs[7:] == [
        ("scope", "c+d"),
        ("l", "m"),
        ("n", "o"),
        ("l", "p"),
        ("login_hint", "i%40j.com"),
    ]
    # client_secret never goes in the URL.
    assert "client_secret" not in req.url and "=h&" not in req.url + "&"


def test_spec_example_prefix():
    req = new_auth_request(account(), 41321, None)
    assert req.url.startswith("http://a.com/auth?access_type=offline&code_challenge=")
    assert re.fullmatch(
        r"http://a\.com/auth\?access_type=offline&code_challenge=[A-Za-z0-9_-]{43}"
        r"&code_challenge_method=S256&client_id=test_client_id"
        r"&redirect_uri=http%3A%2F%2Flocalhost%3A41321%2F&response_type=code"
        r"&state=[A-Za-z0-9_-]{43}",
        req.url,
    ), req.url


@pytest.mark.parametrize("scopes", [None, "[]"])
def test_no_scope_parameter_without_scopes(scopes):
    act = account() if scopes is None else account(scopes=scopes)
    req = new_auth_request(act, 1234, None)
    assert [k for k, _ in raw_pairs(req.url)] == OWN_KEYS


def test_single_scope_and_scope_with_special_characters():
    act = account(scopes='["https://mail.example.com/", "offline_access"]')
    req = new_auth_request(act, 1234, None)
    assert dict(raw_pairs(req.url))["scope"] == "https%3A%2F%2Fmail.example.com%2F+offline_access"
    assert decoded(req.url)["scope"] == ["https://mail.example.com/ offline_access"]


def test_values_are_form_encoded():
    act = account(client_id='"id with space/+&"', auth_uri_fields='{"k y": "v&w=x~"}')
    req = new_auth_request(act, 1234, None)
    pairs = dict(raw_pairs(req.url))
    assert pairs["client_id"] == "id+with+space%2F%2B%26"
    assert pairs["k+y"] == "v%26w%3Dx%7E"


def test_state_verifier_and_pkce_challenge():
    req = new_auth_request(account(), 1234, None)
    verifier = bytes(req.code_verifier.view())
    assert len(req.state) == 43 and B64URL.match(req.state)
    assert len(verifier) == 86 and B64URL.match(verifier.decode("ascii"))
    values = dict(raw_pairs(req.url))
    assert values["state"] == req.state
    expected = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=").decode()
    assert len(expected) == 43
    assert values["code_challenge"] == expected
    # The verifier itself must never appear in the URL.
    assert verifier.decode() not in req.url


def test_each_request_is_fresh():
    act = account()
    a, b = new_auth_request(act, 1234, None), new_auth_request(act, 1234, None)
    assert a.state != b.state
    assert bytes(a.code_verifier.view()) != bytes(b.code_verifier.view())
    assert a.url != b.url


def test_request_remembers_the_redirect_uri_it_put_in_the_url():
    req = new_auth_request(account(redirect_uri='"http://localhost/cb"'), 5555, 6666)
    assert req.redirect_uri == "http://localhost:5555/cb"
    assert decoded(req.url)["redirect_uri"] == [req.redirect_uri]


@pytest.mark.parametrize(
    ("auth_uri", "prefix"),
    [
        ("http://a.com", "http://a.com/?access_type=offline&"),
        ("https://a.com", "https://a.com/?access_type=offline&"),
        ("http://a.com/auth?x=1&y=2", "http://a.com/auth?x=1&y=2&access_type=offline&"),
        ("http://a.com:8080/p", "http://a.com:8080/p?access_type=offline&"),
        ("http://a.com:80/p", "http://a.com/p?access_type=offline&"),
        ("https://a.com:443/p", "https://a.com/p?access_type=offline&"),
        ("http://[::1]:9/p", "http://[::1]:9/p?access_type=offline&"),
    ],
)
def test_base_url_normalisation(auth_uri, prefix):
    req = new_auth_request(account(auth_uri=f'"{auth_uri}"'), 1234, None)
    assert req.url.startswith(prefix), req.url


def test_empty_existing_query_gets_no_leading_ampersand():
    req = new_auth_request(account(auth_uri='"http://a.com/auth?"'), 1234, None)
    assert req.url.startswith("http://a.com/auth?access_type=offline&"), req.url


def test_userinfo_in_auth_uri_is_kept():
    req = new_auth_request(account(auth_uri='"http://user:pw@a.com/auth"'), 1234, None)
    assert req.url.startswith("http://user:pw@a.com/auth?access_type=offline&"), req.url


# -- effective redirect URI -----------------------------------------------------------


def test_default_redirect_gets_http_port():
    assert effective_redirect_uri(account(), 1234, 5678).serialise() == "http://localhost:1234/"


def test_config_case_12_https_redirect_uses_https_port():
    act = account(globals_='https_listen = "127.0.0.1:56789";', redirect_uri='"https://e.com"')
    assert effective_redirect_uri(act, 0, 56789).serialise() == "https://e.com:56789/"


def test_configured_port_is_overridden():
    act = account(redirect_uri='"http://e.com:9999/cb"')
    assert effective_redirect_uri(act, 1234, 5678).serialise() == "http://e.com:1234/cb"


def test_https_scheme_is_case_insensitive():
    act = account(redirect_uri='"HTTPS://E.com/x"')
    assert effective_redirect_uri(act, 1234, 5678).serialise() == "https://e.com:5678/x"


def test_https_redirect_without_https_listener_falls_back_to_http_port():
    act = account(redirect_uri='"https://e.com/"')
    assert effective_redirect_uri(act, 1234, None).serialise() == "https://e.com:1234/"


@pytest.mark.parametrize(
    ("redirect", "http_port", "https_port", "expected"),
    [
        ("http://localhost/", 80, 5678, "http://localhost/"),
        ("https://e.com/", 1234, 443, "https://e.com/"),
        ("http://e.com:9/", 80, None, "http://e.com/"),
    ],
)
def test_default_ports_vanish(redirect, http_port, https_port, expected):
    act = account(redirect_uri=f'"{redirect}"')
    assert effective_redirect_uri(act, http_port, https_port).serialise() == expected


def test_query_and_ipv6_host_survive():
    act = account(redirect_uri='"http://localhost/cb?a=b&c=d+e"')
    assert (
        effective_redirect_uri(act, 1234, None).serialise() == "http://localhost:1234/cb?a=b&c=d+e"
    )
    act = account(redirect_uri='"http://[::1]/"')
    assert effective_redirect_uri(act, 1234, None).serialise() == "http://[::1]:1234/"


# -- redirect matching (pizauth 1.1's test cases) ---------------------------------------------


def callback(url: str) -> Callback:
    """What the network child would report for a browser request to `url`."""
    parts = urllib.parse.urlsplit(url)
    default = 443 if parts.scheme == "https" else 80
    return Callback(
        scheme=parts.scheme,
        host=parts.hostname or "",
        port=parts.port or default,
        path=parts.path or "/",
        has_fragment="#" in url,
        pairs=tuple(urllib.parse.parse_qsl(parts.query, keep_blank_values=True)),
    )


@pytest.mark.parametrize(
    ("expected", "got", "matches"),
    [
        ("http://a.com/b", "http://a.com/b", True),
        ("http://a.com/b", "http://b.com/b", False),
        ("http://a.com/b", "http://a.com/c", False),
        ("http://a.com:1234/b", "http://a.com:1234/b", True),
        ("http://a.com:1234/b", "http://a.com:123/b", False),
        ("http://a.com/b?c=d", "http://a.com/b?c=d", True),
        ("http://a.com:1234/b?c=d", "http://a.com:1234/b", False),
        ("http://a.com/b", "http://a.com/b?c=d", True),
        ("http://a.com/b", "http://a.com/b#c", False),
        # beyond the original's list
        ("http://a.com/b", "https://a.com:80/b", False),
        ("http://a.com/b?c=d", "http://a.com/b?c=e", False),
        ("http://a.com/b?c=d", "http://a.com/b?x=y&c=d&state=s", True),
        ("http://a.com/b", "http://a.com:80/b", True),
        ("https://a.com/b", "https://a.com:443/b", True),
        ("http://A.com/b", "http://a.com/b", True),
        ("http://a.com/b", "http://a.com/B", False),
    ],
)
def test_redirect_matches(expected, got, matches):
    assert redirect_matches(parse_url(expected), callback(got)) is matches


def test_browser_on_127_0_0_1_does_not_match_localhost_redirect():
    expected = effective_redirect_uri(account(), 41321, None)
    assert redirect_matches(expected, callback("http://localhost:41321/?state=s&code=c"))
    assert not redirect_matches(expected, callback("http://127.0.0.1:41321/?state=s&code=c"))
    assert not redirect_matches(expected, callback("http://localhost:41322/?state=s&code=c"))


def test_callback_get_returns_first_occurrence():
    cb = callback("http://a.com/?state=1&state=2&code=")
    assert cb.get("state") == "1"
    assert cb.get("code") == ""
    assert cb.get("error") is None
