"""Token-endpoint calls and triage of replies (pizauth 1.1's rules, and docs/compatibility.md
"Optional expires_in", "Token type case", "Provider error messages", "Code exchange retries").

The token endpoint is a scripted http.server on 127.0.0.1 in a thread.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.parse
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pizauth import ipc, limits
from pizauth.net import reply, tokenclient
from pizauth.net.calls import to_wire
from pizauth.net.tokenclient import TokenResult, exchange_code, refresh

RETRY_AFTER_MAX = reply.RETRY_AFTER_MAX

UNEXPECTED_EXCHANGE = "invalid response received"
UNEXPECTED_REFRESH = "Received JSON in unexpected format"

GOOD = {"access_token": "at-1", "token_type": "Bearer", "expires_in": 3600, "refresh_token": "rt"}

STALL = "stall"  # send nothing until the test ends
STALL_BODY = "stall-body"  # send the headers and part of the body, then nothing


def body(doc: object) -> bytes:
    return json.dumps(doc).encode()


class Endpoint:
    """A token endpoint that answers each POST with the next scripted action."""

    def __init__(self) -> None:
        self.script: deque[tuple[int, bytes] | str] = deque()
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.release = threading.Event()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                data = self.rfile.read(length)
                endpoint.requests.append((self.path, dict(self.headers), data))
                action = endpoint.script.popleft() if endpoint.script else (500, b"")
                if action == STALL:
                    endpoint.release.wait(10)
                    return
                if action == STALL_BODY:
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b'{"access_token": ')
                    self.wfile.flush()
                    endpoint.release.wait(10)
                    return
                status, payload = action
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        # A short poll interval keeps shutdown() (and so each test's teardown) quick.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def answer(self, *actions: tuple[int, bytes] | str) -> Endpoint:
        self.script.extend(actions)
        return self


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    ep = Endpoint()
    ep.thread.start()
    yield ep
    ep.release.set()
    ep.server.shutdown()
    ep.server.server_close()


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False  # no proxy from the environment for 127.0.0.1
        yield s


@pytest.fixture
def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


EXCHANGE_FORM = [
    ("code", "the-code"),
    ("client_id", "cid"),
    ("code_verifier", "ver"),
    ("redirect_uri", "http://localhost:1/"),
    ("grant_type", "authorization_code"),
]


def exchange_request(uri: str) -> ipc.NetExchange:
    """The NET_EXCHANGE whose form is EXCHANGE_FORM."""
    return ipc.NetExchange(uri, "cid", None, "the-code", b"ver", "http://localhost:1/")


def refresh_request(uri: str) -> ipc.NetRefresh:
    """A NET_REFRESH of refresh token "rt" for public client "cid"."""
    return ipc.NetRefresh(uri, "cid", None, b"rt")


def judge(status: int, payload: bytes, unexpected: str = UNEXPECTED_EXCHANGE) -> TokenResult:
    return tokenclient._judge(status, payload, unexpected)


def judge_error(status: int, payload: bytes, unexpected: str = UNEXPECTED_EXCHANGE):
    """(kind, message) of a reply _judge refuses."""
    try:
        result = judge(status, payload, unexpected)
    except tokenclient._Transient as e:
        return "transient", str(e)
    except tokenclient._Permanent as e:
        return "permanent", str(e)
    pytest.fail(f"accepted: {result}")


# -- _judge: what counts as a token ----------------------------------------------------------


def test_valid_reply():
    assert judge(200, body(GOOD)) == TokenResult("ok", "", "at-1", 3600, "string", "rt")


def test_lower_case_bearer_accepted():
    result = judge(200, body({**GOOD, "token_type": "bearer"}))
    assert (result.outcome, result.access_token) == ("ok", "at-1")


def test_missing_expires_in_accepted_as_none():
    doc = {k: v for k, v in GOOD.items() if k != "expires_in"}
    result = judge(200, body(doc))
    assert result.outcome == "ok" and result.expires_in is None
    assert result.fields()[3] == b""


def test_zero_expires_in_accepted():
    assert judge(200, body({**GOOD, "expires_in": 0})).expires_in == 0


@pytest.mark.parametrize("unexpected", [UNEXPECTED_EXCHANGE, UNEXPECTED_REFRESH])
@pytest.mark.parametrize(
    "doc",
    [
        {**GOOD, "expires_in": -1},
        {**GOOD, "expires_in": True},
        {**GOOD, "expires_in": "3600"},
        {**GOOD, "expires_in": 3600.5},
        {k: v for k, v in GOOD.items() if k != "access_token"},
        {**GOOD, "access_token": 5},
        {**GOOD, "access_token": None},
        {k: v for k, v in GOOD.items() if k != "token_type"},
        {**GOOD, "token_type": "mac"},
        {**GOOD, "token_type": None},
        [GOOD],
        "token",
    ],
)
def test_unexpected_replies(doc, unexpected):
    assert judge_error(200, body(doc), unexpected) == ("permanent", unexpected)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"error": "invalid_grant"}, "invalid_grant"),
        (
            {"error": "invalid_grant", "error_description": "Code expired"},
            "invalid_grant: Code expired",
        ),
        ({"error": "invalid_grant", "error_description": ""}, "invalid_grant"),
        ({"error": "invalid_grant", "error_description": 7}, "invalid_grant"),
        # an error wins even next to a token
        ({**GOOD, "error": "server_error"}, "server_error"),
    ],
)
def test_json_error_on_200(doc, message):
    assert judge_error(200, body(doc)) == ("permanent", message)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"error": "invalid_grant"}, "HTTP code 400 (invalid_grant)"),
        (
            {"error": "invalid_grant", "error_description": "Bad code"},
            "HTTP code 400 (invalid_grant: Bad code)",
        ),
        ({"nothing": "useful"}, "HTTP code 400"),
        ("not json", "HTTP code 400"),
    ],
)
def test_json_error_on_400(doc, message):
    payload = doc.encode() if isinstance(doc, str) else body(doc)
    assert judge_error(400, payload) == ("permanent", message)


def test_non_json_body():
    kind, message = judge_error(200, b"<html>oops</html>")
    assert kind == "permanent" and message.startswith("Invalid JSON: ")
    kind, message = judge_error(200, b"\xff\xfe")
    assert kind == "permanent" and message.startswith("Invalid JSON: ")


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_statuses(status):
    assert judge_error(status, b"") == ("transient", f"HTTP code {status}")


@pytest.mark.parametrize("status", [301, 302, 400, 401, 403, 404, 501])
def test_permanent_statuses(status):
    assert judge_error(status, b"") == ("permanent", f"HTTP code {status}")


@pytest.mark.parametrize(
    ("extra", "kind", "token"),
    [
        ({}, "absent", ""),
        ({"refresh_token": "new-rt"}, "string", "new-rt"),
        ({"refresh_token": None}, "invalid", ""),
        ({"refresh_token": 12}, "invalid", ""),
    ],
)
def test_refresh_token_kinds(extra, kind, token):
    doc = {k: v for k, v in GOOD.items() if k != "refresh_token"} | extra
    result = judge(200, body(doc), UNEXPECTED_REFRESH)
    assert (result.refresh_kind, result.refresh_token) == (kind, token)


# -- refresh over HTTP -----------------------------------------------------------------------


def test_refresh_ok(endpoint, session):
    endpoint.answer((200, body(GOOD)))
    result = refresh(session, refresh_request(endpoint.uri))
    assert result == TokenResult("ok", "", "at-1", 3600, "string", "rt")
    path, headers, sent = endpoint.requests[0]
    assert path == "/token"
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert "Authorization" not in headers  # client_secret_post, never HTTP Basic
    assert sent == b"client_id=cid&refresh_token=rt&grant_type=refresh_token"


@pytest.mark.parametrize("status", [503, 429])
def test_refresh_transient_status(endpoint, session, status):
    endpoint.answer((status, body({"error": "slow_down"})))
    result = refresh(session, refresh_request(endpoint.uri))
    assert result.outcome == "transient"
    assert result.message.startswith(f"HTTP code {status}")
    assert len(endpoint.requests) == 1  # one attempt; the parent schedules retries


def test_refresh_permanent_400(endpoint, session):
    endpoint.answer((400, body({"error": "invalid_grant", "error_description": "revoked"})))
    result = refresh(session, refresh_request(endpoint.uri))
    assert (result.outcome, result.message) == (
        "permanent",
        "HTTP code 400 (invalid_grant: revoked)",
    )


def test_refresh_non_json(endpoint, session):
    endpoint.answer((200, b"not json"))
    result = refresh(session, refresh_request(endpoint.uri))
    assert result.outcome == "permanent" and result.message.startswith("Invalid JSON: ")


def test_refresh_unexpected_json(endpoint, session):
    endpoint.answer((200, body({**GOOD, "expires_in": -5})))
    assert refresh(session, refresh_request(endpoint.uri)) == TokenResult(
        "permanent", UNEXPECTED_REFRESH
    )


def test_redirects_are_not_followed(endpoint, session):
    endpoint.answer((302, b""))
    result = refresh(session, refresh_request(endpoint.uri))
    assert (result.outcome, result.message) == ("permanent", "HTTP code 302")
    assert len(endpoint.requests) == 1


def test_oversized_body_is_permanent(endpoint, session, monkeypatch):
    monkeypatch.setattr(tokenclient, "MAX_BODY", 100)
    endpoint.answer((200, body({**GOOD, "padding": "x" * 1000})))
    result = refresh(session, refresh_request(endpoint.uri))
    assert result.outcome == "permanent"
    assert "too large" in result.message


def test_refresh_connection_refused_is_transient(session, closed_port):
    uri = f"http://127.0.0.1:{closed_port}/token"
    result = refresh(session, refresh_request(uri))
    assert result.outcome == "transient"
    assert result.message == f"couldn't connect to {uri}"


def test_refresh_read_timeout_is_transient(endpoint, session, monkeypatch):
    monkeypatch.setattr(tokenclient, "TIMEOUT", 0.3)
    endpoint.answer(STALL)
    assert refresh(session, refresh_request(endpoint.uri)).outcome == "transient"


def test_refresh_body_stall_is_transient(endpoint, session, monkeypatch):
    monkeypatch.setattr(tokenclient, "TIMEOUT", 0.3)
    endpoint.answer(STALL_BODY)
    assert refresh(session, refresh_request(endpoint.uri)).outcome == "transient"


# -- code exchange over HTTP -----------------------------------------------------------------


def test_exchange_ok(endpoint, session):
    endpoint.answer((200, body(GOOD)))
    sleeps = Sleeps()
    result = exchange_code(session, exchange_request(endpoint.uri), sleep=sleeps)
    assert result.outcome == "ok" and result.access_token == "at-1"
    assert sleeps == []
    assert urllib.parse.parse_qsl(endpoint.requests[0][2].decode()) == EXCHANGE_FORM


def test_exchange_400_not_retried_and_reports_oauth_error(endpoint, session):
    endpoint.answer((400, body({"error": "invalid_grant", "error_description": "used"})))
    sleeps = Sleeps()
    result = exchange_code(session, exchange_request(endpoint.uri), sleep=sleeps)
    assert (result.outcome, result.message) == ("permanent", "HTTP code 400 (invalid_grant: used)")
    assert sleeps == [] and len(endpoint.requests) == 1


def test_exchange_error_on_200(endpoint, session):
    endpoint.answer((200, body({"error": "access_denied"})))
    result = exchange_code(session, exchange_request(endpoint.uri), sleep=Sleeps())
    assert (result.outcome, result.message) == ("permanent", "access_denied")


def test_exchange_invalid_reply(endpoint, session):
    endpoint.answer((200, body({**GOOD, "token_type": "mac"})))
    result = exchange_code(session, exchange_request(endpoint.uri), sleep=Sleeps())
    assert (result.outcome, result.message) == ("permanent", UNEXPECTED_EXCHANGE)


def test_exchange_503_retried_then_succeeds(endpoint, session):
    endpoint.answer((503, b""), (200, body(GOOD)))
    sleeps = Sleeps()
    result = exchange_code(session, exchange_request(endpoint.uri), sleep=sleeps)
    assert result.outcome == "ok"
    assert sleeps == [tokenclient.EXCHANGE_RETRY_DELAY] == [6.0]
    assert len(endpoint.requests) == 2
    assert endpoint.requests[0][2] == endpoint.requests[1][2]


def test_exchange_503_every_time_gives_up(endpoint, session):
    endpoint.answer(*[(503, b"")] * tokenclient.EXCHANGE_ATTEMPTS)
    sleeps = Sleeps()
    result = exchange_code(session, exchange_request(endpoint.uri), sleep=sleeps)
    assert (result.outcome, result.message) == ("permanent", "HTTP code 503")
    assert len(endpoint.requests) == tokenclient.EXCHANGE_ATTEMPTS == 10
    assert sleeps == [6.0] * 9


def test_exchange_connection_refused_retried(session, closed_port):
    uri = f"http://127.0.0.1:{closed_port}/token"
    sleeps = Sleeps()
    result = exchange_code(session, exchange_request(uri), sleep=sleeps)
    assert sleeps == [6.0] * (tokenclient.EXCHANGE_ATTEMPTS - 1)
    assert (result.outcome, result.message) == ("permanent", f"couldn't connect to {uri}")


def test_exchange_read_timeout_not_retried(endpoint, session, monkeypatch):
    """The code may have been used; sending it again could revoke the grant."""
    monkeypatch.setattr(tokenclient, "TIMEOUT", 0.3)
    endpoint.answer(STALL, (200, body(GOOD)))
    sleeps = Sleeps()
    result = exchange_code(session, exchange_request(endpoint.uri), sleep=sleeps)
    assert result.outcome == "permanent"
    assert sleeps == []
    assert len(endpoint.requests) == 1


def test_exchange_body_stall_not_retried(endpoint, session, monkeypatch):
    monkeypatch.setattr(tokenclient, "TIMEOUT", 0.3)
    endpoint.answer(STALL_BODY, (200, body(GOOD)))
    sleeps = Sleeps()
    result = exchange_code(session, exchange_request(endpoint.uri), sleep=sleeps)
    assert result.outcome == "permanent"
    assert sleeps == []
    assert len(endpoint.requests) == 1


# -- forms (pizauth 1.1's field order) ----------------------------------------------------------


def test_exchange_form_order_with_secret():
    uri, form = tokenclient.exchange_form(
        ipc.NetExchange("http://t/token", "cid", b"sec", "code", b"ver", "http://localhost:1/")
    )
    assert uri == "http://t/token"
    assert form == [
        ("code", "code"),
        ("client_id", "cid"),
        ("code_verifier", "ver"),
        ("redirect_uri", "http://localhost:1/"),
        ("grant_type", "authorization_code"),
        ("client_secret", "sec"),
    ]


def test_exchange_form_without_secret():
    _, form = tokenclient.exchange_form(
        ipc.NetExchange("http://t/token", "cid", None, "code", b"ver", "http://localhost:1/")
    )
    assert [k for k, _ in form] == [
        "code",
        "client_id",
        "code_verifier",
        "redirect_uri",
        "grant_type",
    ]


def test_exchange_form_with_empty_secret_still_sends_it():
    _, form = tokenclient.exchange_form(
        ipc.NetExchange("http://t/token", "cid", b"", "code", b"ver", "http://localhost:1/")
    )
    assert form[-1] == ("client_secret", "")


def test_refresh_form_order():
    uri, form = tokenclient.refresh_form(ipc.NetRefresh("http://t/token", "cid", b"sec", b"rt"))
    assert uri == "http://t/token"
    assert form == [
        ("client_id", "cid"),
        ("refresh_token", "rt"),
        ("grant_type", "refresh_token"),
        ("client_secret", "sec"),
    ]
    _, form = tokenclient.refresh_form(ipc.NetRefresh("http://t/token", "cid", None, b"rt"))
    assert [k for k, _ in form] == ["client_id", "refresh_token", "grant_type"]


def test_form_posted_in_order_with_secret_last(endpoint, session):
    request = ipc.NetExchange(endpoint.uri, "c id", b"s&cret", "co/de", b"ver", "http://l:1/")
    endpoint.answer((200, body(GOOD)))
    assert exchange_code(session, request, sleep=Sleeps()).outcome == "ok"
    assert endpoint.requests[0][2] == (
        b"code=co%2Fde&client_id=c+id&code_verifier=ver&redirect_uri=http%3A%2F%2Fl%3A1%2F"
        b"&grant_type=authorization_code&client_secret=s%26cret"
    )


# -- hostile replies: every one is a clean, bounded result -----------------------------------

CONTROL = {chr(c) for c in range(0x20)} | {chr(c) for c in range(0x7F, 0xA0)}


def test_expires_in_of_400_digits_is_clamped():
    result = judge(
        200, b'{"access_token": "a", "token_type": "Bearer", "expires_in": 1' + b"0" * 400 + b"}"
    )
    assert (result.outcome, result.expires_in) == ("ok", limits.MAX_SECONDS)
    assert result.fields()[3] == str(limits.MAX_SECONDS).encode()
    assert judge(200, body({**GOOD, "expires_in": limits.MAX_SECONDS + 1})).expires_in == (
        limits.MAX_SECONDS
    )


@pytest.mark.parametrize(
    "raw", [b"1e400", b"-1" + b"0" * 400, b"3600.0", b"-0.5", b"NaN", b"Infinity", b'"1"']
)
def test_expires_in_that_is_not_a_whole_number_is_refused(raw):
    payload = b'{"access_token": "a", "token_type": "Bearer", "expires_in": ' + raw + b"}"
    assert judge_error(200, payload) == ("permanent", UNEXPECTED_EXCHANGE)


def test_provider_text_is_cut_and_made_safe():
    desc = "line1\nline2\x00\x1b[31m\u202e\ud800" + "d" * 100_000
    kind, message = judge_error(400, body({"error": "bad\0grant", "error_description": desc}))
    assert kind == "permanent"
    assert message.startswith("HTTP code 400 (bad\ufffdgrant: line1\ufffdline2\ufffd\ufffd[31m")
    assert not CONTROL & set(message) and "\ud800" not in message
    assert len(message.encode()) <= limits.MAX_PROVIDER_TEXT + len("HTTP code 400 ()")
    field = TokenResult("permanent", message).fields()[1]
    assert len(field) <= limits.MAX_PROVIDER_TEXT and b"\0" not in field


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        b'{"error": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ],
)
@pytest.mark.parametrize("status", [200, 400, 503])
def test_deep_nesting_is_a_clean_failure(payload, status):
    kind, message = judge_error(status, payload)
    assert kind == ("transient" if status == 503 else "permanent")


@pytest.mark.parametrize("which", ["access_token", "refresh_token"])
def test_token_over_the_limit_is_refused(which):
    at_limit = judge(200, body({**GOOD, which: "t" * limits.MAX_TOKEN}))
    assert at_limit.outcome == "ok"
    kind, message = judge_error(200, body({**GOOD, which: "t" * (limits.MAX_TOKEN + 1)}))
    assert kind == "permanent" and "longer than" in message
    # Counted in UTF-8 bytes, as it travels: 6000 three-byte characters are too long.
    kind, _ = judge_error(200, body({**GOOD, which: "\u20ac" * 6000}))
    assert kind == "permanent"


def test_token_with_a_lone_surrogate_is_refused():
    payload = b'{"access_token": "a\\ud800", "token_type": "Bearer"}'
    assert judge_error(200, payload) == ("permanent", UNEXPECTED_EXCHANGE)


def test_one_mebibyte_reply_with_a_huge_refresh_token(endpoint, session):
    head = body({**GOOD, "refresh_token": ""})[:-3]  # up to the refresh token's quotes
    payload = head + b'"' + b"r" * (limits.MAX_REPLY_BODY - len(head) - 3) + b'"}'
    assert len(payload) == limits.MAX_REPLY_BODY
    endpoint.answer((200, payload), (200, payload))
    result = exchange_code(session, exchange_request(endpoint.uri), sleep=Sleeps())
    assert result.outcome == "permanent" and "longer than" in result.message
    result = refresh(session, refresh_request(endpoint.uri))
    assert result.outcome == "permanent" and "longer than" in result.message
    ipc.encode(ipc.MsgType.NET_TOKEN_RESULT, 1, result.fields())  # within the frame limit


# The property: whatever a token endpoint answers, the client returns a result the
# network child can send and the parent will accept, and never raises.

JSON_NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=10**300, max_value=10**320),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["1e400", "-1e400", "9" * 400, "-" + "9" * 400, "0.0", "-0"]),
)
ODD_TEXT = st.one_of(
    st.text(max_size=50),
    st.sampled_from(["\0", "a\0b", "\x1b[2J", "\n\r", "\ud800", "\u202e"]),
    st.builds(lambda c, n: c * n, st.sampled_from(["x", "\0", "\u20ac"]), st.integers(0, 40_000)),
)


def encode_json(value: object) -> str:
    """JSON text, with the raw number strings above left as they are."""
    if isinstance(value, tuple):  # a raw JSON number
        return value[0]
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{encode_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode_json(v) for v in value) + "]"
    return json.dumps(value)


JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    JSON_NUMBERS.map(lambda n: (n,) if isinstance(n, str) else n),
    ODD_TEXT,
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)
TOKEN_REPLIES = st.fixed_dictionaries(
    {},
    optional={
        "access_token": st.one_of(ODD_TEXT, JSON_VALUES),
        "token_type": st.sampled_from(["Bearer", "bearer", "mac", ""]) | JSON_VALUES,
        "expires_in": JSON_LEAVES,
        "refresh_token": st.one_of(ODD_TEXT, JSON_VALUES),
        "error": st.one_of(ODD_TEXT, JSON_VALUES),
        "error_description": st.one_of(ODD_TEXT, JSON_VALUES),
    },
)
BODIES = st.one_of(
    TOKEN_REPLIES.map(encode_json),
    JSON_VALUES.map(encode_json),
    st.integers(1, 50_000).map(lambda n: "[" * n + "]" * n),
).map(lambda text: text.encode("utf-8", "surrogatepass")) | st.binary(max_size=300)


class FakeResponse:
    def __init__(self, status: int, payload: bytes, retry_after: str | None = None) -> None:
        self.status_code = status
        self.payload = payload
        self.headers = {} if retry_after is None else {"Retry-After": retry_after}

    def iter_content(self, size: int) -> Iterator[bytes]:
        for i in range(0, len(self.payload), size):
            yield self.payload[i : i + size]

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class FakeSession:
    def __init__(self, status: int, payload: bytes, retry_after: str | None = None) -> None:
        self.response = FakeResponse(status, payload, retry_after)

    def request(self, *args: object, **kwargs: object) -> FakeResponse:
        return self.response


def assert_well_formed(result: TokenResult) -> None:
    assert result.outcome in ("ok", "transient", "permanent")
    fields = result.fields()  # must not raise (a lone surrogate would)
    ipc.encode(ipc.MsgType.NET_TOKEN_RESULT, 1, fields)  # within the frame limit
    assert len(fields[1]) <= limits.MAX_PROVIDER_TEXT
    assert not CONTROL & set(fields[1].decode())
    assert len(fields[2]) <= limits.MAX_TOKEN and len(fields[5]) <= limits.MAX_TOKEN
    if result.outcome == "ok":
        assert result.access_token and not result.message
        assert result.expires_in is None or 0 <= result.expires_in <= limits.MAX_SECONDS
        assert result.refresh_kind in ("absent", "string", "invalid")
    else:
        assert result.message and not result.access_token and not result.refresh_token
    if result.retry_after is not None:
        assert result.outcome == "transient" and 0 <= result.retry_after <= RETRY_AFTER_MAX
    ipc.NetTokenResult.decode(ipc.decode(to_wire(result).encode(1)))  # the parent accepts it


# Retry-After values a hostile or broken server might send.
RETRY_AFTERS = st.none() | st.one_of(
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from(
        [
            "",
            " 120 ",
            "9" * 5000,
            "-1",
            "1.5",
            "0x10",
            "١٢٣",  # Arabic-Indic digits: str.isdigit() says yes, int() would take them
            "Wed, 21 Oct 2015 07:28:00 GMT",  # long past
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Sat, 01 Jan 10000 00:00:00 GMT",
            "Mon, 32 Foo 2024 99:99:99 GMT",
            "Sun, 06 Nov 1994 08:49:37 +9999",
            "nan",
            "\x00\r\n",
        ]
    ),
    st.text(max_size=80),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=st.sampled_from([200, 201, 204, 302, 400, 401, 429, 500, 503]) | st.integers(100, 599),
    payload=BODIES,
    retry_after=RETRY_AFTERS,
)
def test_any_reply_gives_a_well_formed_result(status, payload, retry_after):
    session = FakeSession(status, payload, retry_after)
    assert_well_formed(refresh(session, refresh_request("http://t/")))
    sleeps = Sleeps()
    assert_well_formed(exchange_code(session, exchange_request("http://t/"), sleeps))


@settings(max_examples=500, deadline=None)
@given(value=RETRY_AFTERS, now=st.floats(0, 2**40))
def test_any_retry_after_is_bounded(value, now):
    wait = reply.retry_after(value, now)
    assert wait is None or (isinstance(wait, int) and 0 <= wait <= RETRY_AFTER_MAX)


@pytest.mark.parametrize(
    ("value", "wait"),
    [
        (None, None),
        ("120", 120),
        (" 0120 ", 120),
        ("0", 0),
        ("9" * 400, RETRY_AFTER_MAX),
        ("-5", None),
        ("soon", None),
        ("1.5", None),
        ("١٢٣", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0),  # in the past: now
        ("Tue, 14 Nov 2023 22:23:20 GMT", 600),
        ("Tuesday, 14-Nov-23 22:23:20 GMT", 600),  # RFC 850, obsolete but to be read
        ("Tue Nov 14 22:23:20 2023", 600),  # asctime
        ("Fri, 31 Dec 9999 23:59:59 GMT", RETRY_AFTER_MAX),
    ],
)
def test_retry_after_values(value, wait):
    now = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
    assert reply.retry_after(value, now) == wait
