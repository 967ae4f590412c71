"""The HTTPS redirect listener: a whole login over TLS, with the certificate pinned
to the fingerprint `pizauth info -j` shows."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import time
import urllib.parse

from conftest import CLIENT_ID, CLIENT_SECRET, Pizauth, http_get, wait_for
from provider import Client, Provider
from server_harness import free_port


def pinned_get(url: str, fingerprint: str) -> tuple[int, bytes]:
    """GET over TLS, trusting exactly the certificate with this SHA-256 fingerprint."""
    parts = urllib.parse.urlsplit(url)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # self-signed: pinned by fingerprint below instead
    with socket.create_connection(("127.0.0.1", parts.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
            got = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
            assert got == fingerprint, "certificate does not match the pinned fingerprint"
            target = parts.path + "?" + parts.query
            tls.sendall(
                f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            response = b""
            while chunk := tls.recv(65536):
                response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_login_over_https_with_pinned_certificate(tmp_path) -> None:
    port = free_port()
    redirect = f"https://localhost:{port}/"
    with Provider([Client(CLIENT_ID, CLIENT_SECRET, redirect_uris=(redirect,))]) as provider:
        pizauth = Pizauth(tmp_path, provider)
        pizauth.conf.write_text(
            f'http_listen = none;\nhttps_listen = "127.0.0.1:{port}";\n'
            'startup_cmd = "touch ready";\n'
            + pizauth.account_block(extra='redirect_uri = "https://localhost/";')
        )
        try:
            pizauth.start()
            info = json.loads(pizauth.run("info", "-j", "-c", str(pizauth.conf)).stdout)
            server = info["server_info"]
            assert (server["http_port"], server["https_port"]) == ("none", str(port))
            fingerprint = server["https_cert_sha256"]
            assert len(fingerprint) == 32 * 3 - 1
            assert server["https_pub_key"].startswith("04:") and len(server["https_pub_key"]) == 194

            # A plain-HTTP request and a connection that never starts its handshake
            # must not hold up the listener.
            plain = socket.create_connection(("127.0.0.1", port), timeout=10)
            plain.sendall(b"GET /?state=x HTTP/1.1\r\nHost: localhost\r\n\r\n")
            silent = socket.create_connection(("127.0.0.1", port), timeout=10)

            url = pizauth.auth_url()
            assert urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["redirect_uri"] == [
                redirect
            ]
            status, headers, _ = http_get(url)
            assert status == 302
            started = time.monotonic()
            status, body = pinned_get(headers["location"], fingerprint)
            assert time.monotonic() - started < 5
            assert status == 200
            assert b"pizauth processing authentication" in body
            token = wait_for(lambda: pizauth._token("acct"), 10, "token after HTTPS login")
            assert provider.is_valid_access_token(token)
            assert provider.errors == []
            # The plain request was never served as HTTP: the server ended that connection.
            received = b""
            try:
                while chunk := plain.recv(4096):
                    received += chunk
            except ConnectionResetError:
                pass  # ended with a reset: as much an end as a close
            assert b"HTTP/1.1" not in received
            plain.close()
            silent.close()
        finally:
            pizauth.stop()
