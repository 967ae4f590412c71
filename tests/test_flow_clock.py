"""The parent's timed flows on a fake clock: a Parent built with `clock=` whose children are
never started, driven by its own tick() at chosen instants. The device poll schedule (the
interval, +5 s per slow_down, one poll at a time, expiry at expires_in, 5 s when the
provider gives no interval) and the login page's EXCHANGE_PAGE bound are checked in
milliseconds here; tests/test_device.py and tests/test_hostile.py check the same rules
against the installed server in real seconds."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_netcall import Recorded, answer, recorded_parent, show

from pizauth import ipc
from pizauth.ipc import MsgType, NetTokenResult, TokenOutcome
from pizauth.net import device as netdevice
from pizauth.net.calls import device_auth_to_wire
from pizauth.priv.flows import device
from pizauth.priv.flows.loginpages import PROCESSING_PAGE, STILL_COMPLETING_PAGE
from pizauth.priv.flows.refresher import MAX_SLEEP
from pizauth.priv.parent import Parent
from pizauth.priv.state.tokens import Active, DevicePending, Empty, Pending
from pizauth.timeouts import EXCHANGE_PAGE

CONF = (
    'account "r" { auth_uri = "http://127.0.0.1:9/auth"; token_uri = "http://127.0.0.1:9/t";'
    ' client_id = "c"; client_secret = "s3cret"; }\n'
    'account "d" { auth_flow = "device"; device_auth_uri = "http://127.0.0.1:9/device";'
    ' token_uri = "http://127.0.0.1:9/t"; client_id = "c"; client_secret = "s3cret"; }\n'
)
START = 1000.0
PENDING = NetTokenResult(
    TokenOutcome.TRANSIENT, "authorization pending", provider_error="authorization_pending"
)
SLOW_DOWN = NetTokenResult(TokenOutcome.TRANSIENT, "slow down", provider_error="slow_down")


class Clock:
    """The instant now, moved only by the test."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class Timed:
    def __init__(self, parent: Parent, seen: Recorded, clock: Clock) -> None:
        self.p, self.seen, self.clock = parent, seen, clock

    def at(self, offset: float) -> None:
        """The loop wakes at START + offset."""
        self.clock.now = START + offset
        self.p.tick(self.clock.now)

    def answer_at(self, offset: float, result: ipc.Wire, request_id: int) -> None:
        """The network child's result arrives at START + offset."""
        self.clock.now = START + offset
        answer(self.p, result, request_id)

    def polls(self) -> list[int]:
        return [request_id for request_id, _ in self.seen.sent(MsgType.NET_DEVICE_POLL)]

    def wakes_in(self) -> float:
        """How long the loop would sleep now."""
        return self.p.next_wakeup(self.clock.now)

    def verdicts(self) -> list[tuple[int, int, str]]:
        out = []
        for m, _ in self.seen.frames:
            if m.type is MsgType.NET_CALLBACK_VERDICT:
                verdict = ipc.decode_as(m)
                assert isinstance(verdict, ipc.CallbackVerdict)
                out.append((m.request_id, verdict.status, verdict.page))
        return out


@pytest.fixture
def timed(tmp_path: Path) -> Iterator[Timed]:
    clock = Clock()
    with recorded_parent(tmp_path, CONF, clock=clock) as (p, seen):
        yield Timed(p, seen, clock)
        assert seen.dropped == []


def authorized(t: Timed, result: ipc.NetDeviceAuthResult) -> DevicePending:
    """`pizauth show d` at START, answered by the device endpoint's `result` at once."""
    show(t.p, "d", 1)
    t.answer_at(0.0, result, t.seen.request_id(MsgType.NET_DEVICE_AUTH))
    assert t.seen.replies() == ["pending:https://x/d and code ABCD"]
    t.at(0.0)  # the loop's next turn: the new code's reminder, at once
    state = t.p.table.entries["d"].state
    assert isinstance(state, DevicePending)
    return state


def device_code(expires_in: int = 600, interval: int = 3) -> ipc.NetDeviceAuthResult:
    return ipc.NetDeviceAuthResult(
        TokenOutcome.OK,
        device_code=b"dc",
        user_code="ABCD",
        verification_uri="https://x/d",
        expires_in=expires_in,
        interval=interval,
    )


# -- the device poll schedule ------------------------------------------------------------------


def test_the_first_poll_comes_after_the_interval_and_slow_down_adds_five_seconds(
    timed: Timed,
) -> None:
    t = timed
    authorized(t, device_code(interval=3))
    assert t.wakes_in() == pytest.approx(3.0)  # the loop sleeps until the poll is due
    t.at(2.999)
    assert t.polls() == []
    t.at(3.0)
    [first] = t.polls()
    # Answered at 3.5: the next poll is counted from the answer, at the same interval.
    t.answer_at(3.5, PENDING, first)
    t.at(6.499)
    assert t.polls() == [first]
    t.at(6.5)
    [_, second] = t.polls()
    # Told to slow down at 7: 3 + 5 = 8 s from then on.
    t.answer_at(7.0, SLOW_DOWN, second)
    assert t.wakes_in() == pytest.approx(8.0)
    t.at(14.999)
    assert len(t.polls()) == 2
    t.at(15.0)
    third = t.polls()[2]
    t.answer_at(15.0, PENDING, third)  # the interval stays at 8
    t.at(22.999)
    assert len(t.polls()) == 3
    t.at(23.0)
    fourth = t.polls()[3]
    t.answer_at(23.0, SLOW_DOWN, fourth)  # and grows again: 13
    t.at(35.999)
    assert len(t.polls()) == 4
    t.at(36.0)
    assert len(t.polls()) == 5
    state = t.p.table.entries["d"].state
    assert isinstance(state, DevicePending) and state.interval == 13.0


def test_never_two_polls_at_once(timed: Timed) -> None:
    t = timed
    authorized(t, device_code(interval=3))
    t.at(3.0)
    [first] = t.polls()
    # No answer yet: however late the loop wakes, the poll in flight is the only one, and
    # the loop does not wake for it (it would spin).
    for offset in (6.0, 9.0, 100.0):
        t.at(offset)
        assert t.polls() == [first]
    assert device.next_wakeup(t.p.table) == START + 600.0  # only the expiry is left
    assert t.wakes_in() == MAX_SLEEP
    t.answer_at(100.0, PENDING, first)
    t.at(102.999)
    assert t.polls() == [first]
    t.at(103.0)
    assert len(t.polls()) == 2


def test_the_attempt_ends_at_expires_in(timed: Timed) -> None:
    t = timed
    authorized(t, device_code(expires_in=10, interval=4))
    t.at(4.0)
    [first] = t.polls()
    t.answer_at(4.0, PENDING, first)  # next poll due at 8
    t.at(8.0)
    [_, second] = t.polls()
    t.answer_at(8.5, PENDING, second)  # due at 12.5, after the code has expired
    assert t.wakes_in() == pytest.approx(1.5)
    t.at(9.999)
    assert isinstance(t.p.table.entries["d"].state, DevicePending)
    t.at(10.0)
    entry = t.p.table.entries["d"]
    assert isinstance(entry.state, Empty)
    assert entry.last_error is not None and "the device code expired" in entry.last_error.message
    assert entry.last_error.at == START + 10.0  # on the parent's clock
    t.at(12.5)
    assert len(t.polls()) == 2  # no poll after the end


def test_without_an_interval_from_the_provider_polls_come_every_five_seconds(
    timed: Timed,
) -> None:
    t = timed
    # What the network child makes of a device endpoint's reply that has no interval.
    reply = netdevice._authorization(
        {"device_code": "dc", "user_code": "ABCD", "verification_uri": "https://x/d"}
    )
    state = authorized(t, device_auth_to_wire(reply))
    assert state.interval == 5.0
    t.at(4.999)
    assert t.polls() == []
    t.at(5.0)
    [first] = t.polls()
    t.answer_at(5.0, PENDING, first)
    t.at(9.999)
    assert len(t.polls()) == 1
    t.at(10.0)
    assert len(t.polls()) == 2


# -- the login page's bound ----------------------------------------------------------------------


def callback(t: Timed, request_id: int) -> int:
    """A browser brings a code for `pizauth show r` at START; the exchange's request id."""
    show(t.p, "r", 1)
    t.at(0.0)  # the loop's next turn: the new URL's reminder, at once
    state = t.p.table.entries["r"].state
    assert isinstance(state, Pending)
    pairs = (("state", state.request.state), ("code", "c0de"))
    got = ipc.NetCallback("http", "localhost", 80, "/", False, pairs)
    t.clock.now = START
    t.p.net.on_frame(got.encode(request_id))
    return t.seen.request_id(MsgType.NET_EXCHANGE)


def test_a_callback_whose_exchange_does_not_end_in_time_gets_the_still_completing_page(
    timed: Timed,
) -> None:
    t = timed
    exchange = callback(t, 7)
    assert t.wakes_in() == pytest.approx(EXCHANGE_PAGE)
    t.at(EXCHANGE_PAGE - 0.001)
    assert t.verdicts() == []
    t.at(EXCHANGE_PAGE)
    assert t.verdicts() == [(7, 200, STILL_COMPLETING_PAGE)]
    # The exchange ends later: the token is kept, and the browser is not answered twice.
    token = NetTokenResult(TokenOutcome.OK, access_token=b"at", expires_in=3600)
    t.answer_at(EXCHANGE_PAGE + 5, token, exchange)
    assert isinstance(t.p.table.entries["r"].state, Active)
    assert t.verdicts() == [(7, 200, STILL_COMPLETING_PAGE)]


def test_a_callback_whose_exchange_ends_in_time_gets_its_result(timed: Timed) -> None:
    t = timed
    exchange = callback(t, 7)
    token = NetTokenResult(TokenOutcome.OK, access_token=b"at", expires_in=3600)
    t.answer_at(EXCHANGE_PAGE - 0.001, token, exchange)
    assert t.verdicts() == [(7, 200, PROCESSING_PAGE)]
    t.at(EXCHANGE_PAGE + 1)
    assert t.verdicts() == [(7, 200, PROCESSING_PAGE)]


def test_a_callback_whose_exchange_fails_in_time_gets_the_reason(timed: Timed) -> None:
    t = timed
    exchange = callback(t, 7)
    refused = NetTokenResult(TokenOutcome.PERMANENT, "HTTP code 400 (invalid_grant)")
    t.answer_at(1.0, refused, exchange)
    [(request_id, status, page)] = t.verdicts()
    assert (request_id, status) == (7, 200)
    assert page.startswith("Authentication for r failed: HTTP code 400 (invalid_grant)")
    t.at(EXCHANGE_PAGE)
    assert len(t.verdicts()) == 1
