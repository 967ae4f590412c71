"""What a compromised network child's lies can do, and what they cannot outlive.

The system tests compromise the live network child as tests/test_confinement.py
does (as root, gdb runs Python code inside it): the child then answers the parent
with what an attacker chooses, through its real channel. Nothing a child said may
outlive it, and every text it sends reaches `status`, `show`, the log and a hook
cleaned. The unit tests hand a parent the same lies as forged frames.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import unicodedata
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import CLIENT_ID, CLIENT_SECRET, Pizauth, Provider, wait_for
from test_hostile import frame, no_internal_errors

from pizauth import config, ipc
from pizauth.ipc import MsgType
from pizauth.priv.parent import Parent, Sockets
from pizauth.priv.state.tokens import Empty, Pending
from pizauth.priv.state.tokenstate import Cause

# What a child may try to smuggle into a terminal or a log: an OSC 52 clipboard write,
# a cursor move, a forged log line, C1 controls (CSI, NEL), bidi overrides, a line
# separator.
EVIL = (
    "bad\x1b]52;c;cm0gLXJmIH4K\x07\x1b[2J\r\nERROR forged line\x9b31m\x85"
    "\u202egnp.exe\u2066\u2028tail"
)


def clean(text: str) -> bool:
    """No control or format character (C0, C1, bidi, separators) but the newlines that
    end the lines the program itself writes."""
    return not any(
        unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in text.replace("\n", "")
    )


# -- compromising the live network child ------------------------------------------------------


def _require_gdb() -> None:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (to ptrace a non-dumpable process)")
    if shutil.which("gdb") is None:
        missing.append("gdb")
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must provide " + ", ".join(missing))
        pytest.skip("needs " + ", ".join(missing))


def compromise(server: Pizauth, lie: str) -> int:
    """Run `lie` (Python, inside the network child) to replace how the child answers its
    next request of one type; the child's pid."""
    from test_confinement import inject

    pid = server.roles()["network"]
    assert inject(pid, [lie]) == [0]
    return pid


# Patched into the network child: its next answer to a request of type KIND is ANSWER,
# built inside the child and sent on its channel under the parent's request id; every
# other request is served as before.
LIE = """
import sys
_m = sys.modules["pizauth.net.child"]
_honest = _m.NetChild._relay
_told = []
def _relay(self, msg_type, request_id, request, _honest=_honest, _m=_m, _told=_told):
    if msg_type == _m.MsgType.{kind} and not _told:
        _told.append(1)
        _m.ipc.wipe(request)
        self.channel.send({answer}, request_id)
        return
    _honest(self, msg_type, request_id, request)
_m.NetChild._relay = _relay
"""


class Attacker:
    """A second local HTTP listener: where a lying child would send codes and tokens."""

    def __init__(self) -> None:
        seen: list[str] = []
        self.seen = seen

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                seen.append(f"{self.command} {self.path}")
                body = b'{"error":"invalid_grant"}'
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def attacker() -> Iterator[Attacker]:
    a = Attacker()
    yield a
    a.close()


def issuer_accounts(provider: Provider, *names: str) -> str:
    return "".join(
        f'account "{name}" {{\n'
        f'  issuer = "{provider.issuer}";\n'
        f'  client_id = "{CLIENT_ID}";\n'
        f'  client_secret = "{CLIENT_SECRET}";\n'
        "}\n"
        for name in names
    )


def endpoints(server: Pizauth) -> dict[str, dict[str, str]]:
    info = json.loads(server.run("info", "-j").stdout)
    return info["server_info"]["endpoints"]


def test_metadata_lie_does_not_outlive_the_child(
    pizauth: Pizauth, provider: Provider, attacker: Attacker
) -> None:
    _require_gdb()
    pizauth.write_config(issuer_accounts(provider, "a", "b"))
    pizauth.start()
    answer = (
        "_m.ipc.NetMetadataResult(_m.ipc.TokenOutcome.OK, '', "
        f"'{provider.auth_uri}', '{attacker.url}/token', '', '{attacker.url}/revoke')"
    )
    liar = compromise(pizauth, LIE.format(kind="NET_METADATA", answer=answer))
    # Account a's login makes the parent ask, and the compromised child lies.
    pizauth.auth_url("a")
    assert endpoints(pizauth)["a"]["token_uri"] == attacker.url + "/token"  # the lie took
    assert endpoints(pizauth)["b"]["token_uri"] == attacker.url + "/token"

    os.kill(liar, signal.SIGKILL)
    wait_for(lambda: pizauth.roles().get("network", liar) != liar, 10, "a new network child")
    # Forgotten with the child that said it: the next need asks the new child.
    assert endpoints(pizauth)["b"] == {"issuer": provider.issuer, "resolved": "no"}
    token = pizauth.authorise("b")
    assert provider.is_valid_access_token(token)
    assert [r["grant_type"] for r in provider.token_requests] == ["authorization_code"]
    assert attacker.seen == []
    assert endpoints(pizauth)["b"]["token_uri"] == provider.token_uri
    # a's login URL came from the liar's document: it ended with the liar.
    status = pizauth.run("status").stdout.decode()
    assert "a: No access token; last error" in status and "network process restarted" in status
    assert pizauth.log_problems() == []


def test_a_lying_childs_text_reaches_status_show_log_and_hook_cleaned(
    pizauth: Pizauth, provider: Provider
) -> None:
    _require_gdb()
    hook = 'error_notify_cmd = "env > notified-env; echo done >> notified";'
    pizauth.write_config(pizauth.account_block(), hook)
    pizauth.start("-vvv")  # the log says all it can
    code = "x\x1b]52;c;x\x07\r\n\u202e"  # within the 64 bytes of a provider error code
    answer = (
        f"_m.ipc.NetTokenResult(_m.ipc.TokenOutcome.PERMANENT, {EVIL!r}, provider_error={code!r})"
    )
    compromise(pizauth, LIE.format(kind="NET_EXCHANGE", answer=answer))
    with pytest.raises(AssertionError):
        pizauth.authorise()  # the exchange "fails" with the child's text
    wait_for(lambda: (pizauth.tmp / "notified").exists(), 10, "error_notify_cmd", pizauth.log)
    status = pizauth.run("status").stdout.decode()
    shown = pizauth.show().stderr.decode()
    env = (pizauth.tmp / "notified-env").read_text()
    [msg] = [line for line in env.splitlines() if line.startswith("PIZAUTH_MSG=")]
    # Without error_notify_cmd the failure goes to the log: the child lies once more.
    pizauth.write_config(pizauth.account_block())
    assert pizauth.run("reload").returncode == 0
    compromise(pizauth, LIE.format(kind="NET_EXCHANGE", answer=answer))
    with pytest.raises(AssertionError):
        pizauth.authorise()
    wait_for(lambda: "ERROR - Authentication for acct failed" in pizauth.log(), 10, "log")
    log = pizauth.log()
    for name, text in (("status", status), ("show", shown), ("hook", msg), ("log", log)):
        assert "bad" in text and "tail" in text, (name, text)  # the text itself is there
        assert clean(text), (name, text)
    assert "\nERROR forged line" not in log and "\nERROR forged line" not in status
    assert status.count("\n") == 1, status  # one account, one line


def test_unknown_account_name_is_echoed_cleaned(pizauth: Pizauth) -> None:
    pizauth.start()
    r = pizauth.show(EVIL)
    err = r.stderr.decode()
    assert r.returncode == 1 and err.startswith("ERROR - No account '"), err
    assert clean(err) and err.count("\n") == 1, err


# -- the same lies as forged frames at the parent's edge ---------------------------------------

ISSUER = "http://127.0.0.1:9"
CONF = (
    'error_notify_cmd = "true";\n'
    f'account "a" {{ issuer = "{ISSUER}"; client_id = "c"; }}\n'
    f'account "b" {{ issuer = "{ISSUER}"; client_id = "c"; }}\n'
    'account "c" { auth_uri = "http://127.0.0.1:9/auth"; token_uri = "http://127.0.0.1:9/t";'
    ' client_id = "c"; }\n'
)


@pytest.fixture
def parent(tmp_path: Path) -> Iterator[tuple[Parent, list[bytes], list[tuple[str, str]]]]:
    import socket

    control = socket.socket(socket.AF_UNIX)
    control.bind(str(tmp_path / "sock"))
    p = Parent(config.parse(CONF), "unused", Sockets(control, None, None), [], lambda _: None)
    sent: list[bytes] = []
    errors: list[tuple[str, str]] = []
    for child in (p.cmd, p.net):
        child.drop = lambda: None  # type: ignore[method-assign]
        child.send = lambda frame, secret=False: sent.append(bytes(frame))  # type: ignore
    p.notifier.error = lambda name, message: errors.append((name, message))  # type: ignore
    with no_internal_errors():
        yield p, sent, errors
    p.table.wipe_all()
    control.close()


def replies(sent: list[bytes]) -> list[str]:
    out = []
    for raw in sent:
        msg = ipc.decode(raw)
        if msg.type is MsgType.CMD_REPLY:
            out.append(bytes(msg.fields[0]).decode())
    return out


def metadata_request(sent: list[bytes]) -> int:
    [request_id] = [
        ipc.decode(raw).request_id for raw in sent if ipc.decode(raw).type is MsgType.NET_METADATA
    ]
    sent.clear()
    return request_id


def test_parent_forgets_metadata_and_its_logins_when_the_network_child_is_lost(parent) -> None:  # type: ignore[no-untyped-def]
    p, sent, _ = parent
    p.cmd.on_frame(frame(MsgType.CMD_SHOW, [b"1", b"a"], request_id=1))
    p.cmd.on_frame(frame(MsgType.CMD_SHOW, [b"1", b"c"], request_id=2))
    lie = [b"ok", b"", b"http://127.0.0.1:6/auth", b"http://127.0.0.1:6/token", b"", b""]
    p.net.on_frame(frame(MsgType.NET_METADATA_RESULT, lie, request_id=metadata_request(sent)))
    assert [r.split("?")[0] for r in replies(sent)] == ["pending:http://127.0.0.1:6/auth"]
    assert p.resolver.known(p.table.entries["b"].account).token_uri == "http://127.0.0.1:6/token"
    assert isinstance(p.table.entries["a"].state, Pending)
    assert isinstance(p.table.entries["c"].state, Pending)  # its URL is the configuration's

    p.net.on_exit()  # the network child exited
    # Nothing it said is kept: the document, and a's login whose URL came from it.
    assert p.resolver.metadata == {}
    assert p.resolver.known(p.table.entries["b"].account).token_uri is None
    assert isinstance(p.table.entries["a"].state, Empty)
    assert "network process restarted" in p.table.entries["a"].last_error.message
    assert isinstance(p.table.entries["c"].state, Pending)
    # The next need asks again.
    sent.clear()
    p.cmd.on_frame(frame(MsgType.CMD_SHOW, [b"1", b"b"], request_id=3))
    assert metadata_request(sent)


def test_forged_texts_are_cleaned_at_the_parents_edge(parent) -> None:  # type: ignore[no-untyped-def]
    p, sent, errors = parent
    p.cmd.on_frame(frame(MsgType.CMD_SHOW, [b"1", b"a"], request_id=1))
    # An unusable document, said with control characters.
    evil = EVIL.encode()
    p.net.on_frame(
        frame(
            MsgType.NET_METADATA_RESULT,
            [b"permanent", evil, b"", b"", b"", b""],
            request_id=metadata_request(sent),
        )
    )
    [reply] = replies(sent)
    assert reply.startswith("error:bad") and clean(reply), reply
    assert errors and all(clean(m) for _, m in errors), errors
    sent.clear()
    p.cmd.on_frame(frame(MsgType.CMD_STATUS, [], request_id=2))
    [status] = replies(sent)
    assert "bad" in status and clean(status) and status.count("\n") == 2, status
    # A callback's error and description, and a token result's message, likewise.
    c = p.table.entries["c"]
    p.http_port = 8080  # the redirect listener the callback claims to have come through
    p.cmd.on_frame(frame(MsgType.CMD_SHOW, [b"1", b"c"], request_id=3))
    assert isinstance(c.state, Pending)
    state = c.state.request.state.encode()
    query = [b"state", state, b"error", evil, b"error_description", evil]
    errors.clear()
    p.net.on_frame(
        frame(
            MsgType.NET_CALLBACK,
            [b"http", b"localhost", b"8080", b"/", b"0", ipc.pack_list(query)],
        )
    )
    assert c.last_error is not None and clean(c.last_error.message), c.last_error
    assert all(clean(m) for _, m in errors), errors


def test_forged_token_result_message_is_cleaned(parent) -> None:  # type: ignore[no-untyped-def]
    p, sent, errors = parent
    p.cmd.on_frame(frame(MsgType.CMD_SHOW, [b"1", b"c"], request_id=1))
    c = p.table.entries["c"]
    sent.clear()
    p.refresher.exchange(c, "code")  # an exchange in flight, as after a callback
    [exchange] = sent
    request_id = ipc.decode(bytearray(exchange)).request_id
    evil = EVIL.encode()
    p.net.on_frame(
        frame(
            MsgType.NET_TOKEN_RESULT,
            [
                b"permanent",
                evil,
                b"",
                b"",
                b"absent",
                b"",
                "x\x1b]52;c;x\x07\r\n\u202e".encode(),
                b"",
            ],
            request_id=request_id,
        )
    )
    assert isinstance(c.state, Empty)
    assert c.last_error is not None and "bad" in c.last_error.message
    assert clean(c.last_error.message), c.last_error
    assert errors and all(clean(m) and "bad" in m for _, m in errors), errors


def test_a_token_is_never_sent_to_another_token_endpoint(
    pizauth: Pizauth, provider: Provider, attacker: Attacker
) -> None:
    _require_gdb()
    pizauth.write_config(
        issuer_accounts(provider, "a"), 'error_notify_cmd = "echo \\"$PIZAUTH_MSG\\" >> notified";'
    )
    pizauth.start()
    assert provider.is_valid_access_token(pizauth.authorise("a"))  # via its token endpoint
    # The document goes with the child that fetched it; the next child lies about it.
    old = pizauth.roles()["network"]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: pizauth.roles().get("network", old) != old, 10, "a new network child")
    answer = (
        "_m.ipc.NetMetadataResult(_m.ipc.TokenOutcome.OK, '', "
        f"'{attacker.url}/auth', '{attacker.url}/token', '', '')"
    )
    compromise(pizauth, LIE.format(kind="NET_METADATA", answer=answer))
    assert pizauth.run("refresh", "a").returncode == 0
    notified = pizauth.tmp / "notified"
    wait_for(notified.exists, 10, "error_notify_cmd", pizauth.log)
    message = notified.read_text()
    assert f"token endpoint is now {attacker.url}/token" in message, message
    assert "log in again" in message
    # The token was dropped, never sent: the refresh token went nowhere.
    assert attacker.seen == []
    assert [r["grant_type"] for r in provider.token_requests] == ["authorization_code"]
    status = pizauth.run("status").stdout.decode()
    assert status.startswith("a: No access token; last error"), status


def test_refresh_goes_only_to_the_token_endpoint_that_issued_the_token(parent) -> None:  # type: ignore[no-untyped-def]
    from pizauth.priv.state.clock import instant
    from pizauth.priv.state.secmem import Secret
    from pizauth.priv.state.tokens import Active

    p, sent, errors = parent
    now = instant()
    issued_by = "http://127.0.0.1:6/token"
    for name, bound in (("a", issued_by), ("b", None)):  # b: restored, endpoint unknown
        active = Active(Secret(b"at"), now, now - 1, Secret(b"rt-" + name.encode()))
        active.token_uri = bound
        p.refresher.change(p.table.entries[name], active, Cause.RESTORE)
        p.refresher.start_refresh(p.table.entries[name], now)
    moved = [b"ok", b"", b"", b"http://127.0.0.1:7/token", b"", b""]
    p.net.on_frame(frame(MsgType.NET_METADATA_RESULT, moved, request_id=metadata_request(sent)))
    # a's refresh token never left: dropped, and the user told to log in again.
    a, b = p.table.entries["a"], p.table.entries["b"]
    assert isinstance(a.state, Empty)
    assert a.last_error is not None and "log in again" in a.last_error.message
    assert [name for name, _ in errors] == ["a"] and issued_by in errors[0][1]
    # b's is bound to the endpoint of its first refresh, where it went.
    refreshes = [ipc.NetRefresh.decode(ipc.decode(raw)) for raw in sent]
    assert [(r.token_uri, bytes(r.refresh_token)) for r in refreshes] == [
        ("http://127.0.0.1:7/token", b"rt-b")
    ]
    assert isinstance(b.state, Active) and b.state.token_uri == "http://127.0.0.1:7/token"
