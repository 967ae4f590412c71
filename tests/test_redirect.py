"""The redirect listener's request reader, parser and responses (pizauth 1.1's checks and
messages; docs/compatibility.md "Redirect listener bounds")."""

from __future__ import annotations

import socket
import time

import pytest

from pizauth.ipc import Callback
from pizauth.net import redirect
from pizauth.net.redirect import BadRequest, parse_request, read_request, response


def get(target: str = "/?state=s&code=c", host: str = "localhost:8080", extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def bad(raw: bytes, scheme: str = "http") -> str:
    with pytest.raises(BadRequest) as info:
        parse_request(raw, scheme)
    return str(info.value)


# -- parse_request ---------------------------------------------------------------------------


def test_plain_callback():
    cb = parse_request(get(), "http")
    assert cb == Callback("http", "localhost", 8080, "/", False, (("state", "s"), ("code", "c")))


def test_scheme_comes_from_the_listener():
    cb = parse_request(get(host="localhost:9443"), "https")
    assert (cb.scheme, cb.port) == ("https", 9443)


@pytest.mark.parametrize(("scheme", "port"), [("http", 80), ("https", 443)])
def test_default_ports(scheme, port):
    assert parse_request(get(host="localhost"), scheme).port == port


@pytest.mark.parametrize(
    ("host", "expected_host", "port"),
    [("[::1]:8080", "::1", 8080), ("[::1]", "::1", 80), ("127.0.0.1:1", "127.0.0.1", 1)],
)
def test_ip_hosts(host, expected_host, port):
    cb = parse_request(get(host=host), "http")
    assert (cb.host, cb.port) == (expected_host, port)


def test_host_name_is_case_insensitive_and_value_trimmed():
    raw = b"GET /cb HTTP/1.1\r\nhOsT:\t  localhost:7\r\n\r\n"
    cb = parse_request(raw, "http")
    assert (cb.host, cb.port, cb.path) == ("localhost", 7, "/cb")


def test_bare_lf_line_endings():
    cb = parse_request(b"GET /?state=s HTTP/1.1\nHost: h\n\n", "http")
    assert (cb.host, cb.get("state")) == ("h", "s")


def test_headers_end_at_blank_line_or_eof():
    # no blank line at all (EOF)
    assert parse_request(b"GET / HTTP/1.1\r\nHost: h", "http").host == "h"
    # a second Host after the blank line is body, not a header
    raw = b"GET / HTTP/1.1\r\nHost: h\r\n\r\nHost: other\r\n"
    assert parse_request(raw, "http").host == "h"


@pytest.mark.parametrize(
    "request_line",
    [
        "get / HTTP/1.1",
        "POST / HTTP/1.1",
        "HEAD / HTTP/1.1",
        "GET  / HTTP/1.1",
        "GET / HTTP/1.1 x",
        "GET /",
        "GET",
        "",
        " GET / HTTP/1.1",
        "GET\t/\tHTTP/1.1",
    ],
)
def test_strict_request_line(request_line):
    raw = f"{request_line}\r\nHost: h\r\n\r\n".encode()
    assert bad(raw) == "Malformed HTTP request"


def test_header_continuation():
    raw = b"GET / HTTP/1.1\r\nX-A: 1\r\n  continued\r\nHost:\r\n\tlocalhost:99\r\n\r\n"
    cb = parse_request(raw, "http")
    assert (cb.host, cb.port) == ("localhost", 99)


def test_continuation_as_first_header():
    assert bad(b"GET / HTTP/1.1\r\n folded\r\nHost: h\r\n\r\n") == "Malformed HTTP header"


def test_missing_host():
    assert bad(b"GET / HTTP/1.1\r\nX-Host: h\r\n\r\n") == "No host field specified in HTTP request"
    assert bad(b"GET / HTTP/1.1\r\n\r\n") == "No host field specified in HTTP request"


def test_repeated_host():
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nX: y\r\nHOST: a\r\n\r\n"
    assert bad(raw) == "Repeated 'host' field in HTTP header"


def test_non_utf8_is_bad_request():
    bad(b"GET /\xff HTTP/1.1\r\nHost: h\r\n\r\n")
    bad(b"GET / HTTP/1.1\r\nHost: h\r\nX-Junk: \xc3\x28\r\n\r\n")


@pytest.mark.parametrize(
    ("target", "host"),
    [("http://evil.com/", "h"), ("*", "h"), ("/", "h:port"), ("/", "h:99999")],
)
def test_invalid_request_uri(target, host):
    assert bad(get(target, host)).startswith("Invalid request URI")


def test_host_with_space_is_invalid():
    assert bad(get(host="local host")).startswith("Invalid request URI")


def test_query_is_form_decoded():
    cb = parse_request(get("/?state=a+b%2Bc&code=%2F%3d%7E&e=&f"), "http")
    assert cb.pairs == (("state", "a b+c"), ("code", "/=~"), ("e", ""), ("f", ""))
    assert cb.get("f") == ""
    assert cb.get("missing") is None


def test_first_occurrence_wins():
    cb = parse_request(get("/?state=1&code=x&state=2&code=y"), "http")
    assert cb.get("state") == "1"
    assert cb.get("code") == "x"


def test_fragment_flag():
    cb = parse_request(get("/cb?state=s#frag"), "http")
    assert cb.has_fragment is True
    assert cb.get("state") == "s"
    assert cb.path == "/cb"
    assert parse_request(get("/cb?state=s"), "http").has_fragment is False


def test_path_kept_and_favicon():
    cb = parse_request(get("/favicon.ico"), "http")
    assert cb.path == "/favicon.ico"
    assert cb.get("state") is None


def test_callback_fields():
    cb = parse_request(get("/p?state=s&code=c#f"), "https")
    fields = cb.fields()
    assert [bytes(f) for f in fields[:5]] == [b"https", b"localhost", b"8080", b"/p", b"1"]
    assert len(fields) == 6


# -- read_request ----------------------------------------------------------------------------


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_read_request_stops_at_header_end(pair):
    client, server = pair
    client.sendall(get() + b"BODY-NOT-READ")
    raw = read_request(server, time.monotonic() + 5)
    assert raw.startswith(b"GET /?state=s&code=c HTTP/1.1\r\nHost: localhost:8080")
    assert b"BODY" not in raw
    assert parse_request(raw, "http").get("code") == "c"


def test_read_request_until_eof(pair):
    client, server = pair
    client.sendall(b"GET / HTTP/1.1\r\nHost: h")
    client.shutdown(socket.SHUT_WR)
    assert read_request(server, time.monotonic() + 5) == b"GET / HTTP/1.1\r\nHost: h"


def test_read_request_size_bound(pair):
    client, server = pair
    pad = "X-Pad: " + "a" * 200 + "\r\n"
    client.sendall(get(extra=pad * 90)[:-2])  # ~18 KiB of headers, never a blank line
    with pytest.raises(BadRequest) as info:
        read_request(server, time.monotonic() + 5)
    assert str(info.value) == "HTTP request exceeds maximum permitted size"


def test_read_request_just_under_bound(pair):
    client, server = pair
    pad = "X-Pad: " + "a" * 200 + "\r\n"
    raw = get(extra=pad * 75)
    assert len(raw) < redirect.MAX_REQUEST
    client.sendall(raw)
    got = read_request(server, time.monotonic() + 5)
    assert parse_request(got, "http").get("state") == "s"


def test_read_request_deadline(pair):
    client, server = pair
    client.sendall(b"GET / HTTP/1.1\r\n")  # and then nothing
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        read_request(server, time.monotonic() + 0.2)
    assert time.monotonic() - start < 2.0


# -- response --------------------------------------------------------------------------------


def split(resp: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = resp.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.lower()] = value.strip()
    return lines[0], headers, body


def test_response_200():
    text = "pizauth processing authentication: you can safely close this page."
    status, headers, body = split(response(200, text))
    assert status == "HTTP/1.1 200 OK"
    assert body == f"<html><body><h2>{text}</h2></body></html>".encode()
    assert int(headers["content-length"]) == len(body)


@pytest.mark.parametrize("code", [400, 404])
def test_response_empty(code):
    status, headers, body = split(response(code))
    assert status.startswith(f"HTTP/1.1 {code}")
    assert body == b""
    assert headers["content-length"] == "0"


def test_response_escapes_page_text():
    page = "Authentication for x failed: <script>alert('x')</script>&"
    resp = response(400, page)
    _, headers, body = split(resp)
    assert b"<script>" not in resp
    assert b"&lt;script&gt;" in body
    assert int(headers["content-length"]) == len(body)


def test_response_content_length_counts_bytes():
    _, headers, body = split(response(200, "héllo ✓"))
    assert int(headers["content-length"]) == len(body)
    assert len(body) > len("<html><body><h2>héllo ✓</h2></body></html>")
