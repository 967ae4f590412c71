"""The token state machine (pizauth/priv/state/tokenstate.py): every change the table allows
raises exactly its event, and every other change raises IllegalTransition and changes
nothing, whichever way it is asked for (a transition, a reload, a restore, a shutdown)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from pizauth import config
from pizauth.ipc import TokenEvent
from pizauth.priv.state.authurl import AuthRequest
from pizauth.priv.state.secmem import Secret
from pizauth.priv.state.tokens import Active, DevicePending, Empty, Pending, TokenState, TokenTable
from pizauth.priv.state.tokenstate import KINDS, TRANSITIONS, Cause, IllegalTransition, allows, step
from pizauth.priv.storage import dump

ROOT = Path(__file__).resolve().parent.parent
ACCESS, REFRESH, VERIFIER, DEVICE_CODE = b"ACCESS-5e1f", b"REFRESH-77c2", b"VERIFIER-a0", b"DC-19"


def block(name: str, client_id: str = "c") -> str:
    return (
        f'account "{name}" {{ auth_uri = "http://a.com"; client_id = "{client_id}"; '
        'token_uri = "http://g.com"; }\n'
    )


def made(kind: type[TokenState]) -> TokenState:
    """A state of `kind`, holding secrets wherever the kind can."""
    if kind is Pending:
        return Pending(AuthRequest("st", Secret(VERIFIER), "http://f.com/", "http://a.com/"))
    if kind is DevicePending:
        return DevicePending(device_code=Secret(DEVICE_CODE), user_code="U")
    if kind is Active:
        return Active(Secret(ACCESS), 0.0, 3600.0, Secret(REFRESH))
    return Empty()


class Watched:
    """A one-account table in a state of `kind`, recording what it is told."""

    def __init__(self, kind: type[TokenState], text: str = block("x")) -> None:
        self.table = TokenTable(config.parse(text).accounts)
        self.changes: list[None] = []
        self.events: list[tuple[str, TokenEvent]] = []
        for name in self.table.entries:
            self.table.entries[name].state = made(kind)  # the start of the walk, by hand
        self.table.on_change = lambda: self.changes.append(None)
        self.table.on_event = lambda name, event: self.events.append((name, event))


LEGAL = sorted(TRANSITIONS.items(), key=lambda row: (row[0][0].__name__, row[0][1].value))
ILLEGAL = [
    (before, cause, after)
    for before, cause, after in itertools.product(KINDS, Cause, KINDS)
    if not ((before, cause) in TRANSITIONS and TRANSITIONS[(before, cause)].to is after)
]


def name(row: object) -> str:
    return getattr(row, "__name__", None) or getattr(row, "value", None) or str(row)


@pytest.mark.parametrize(
    ("key", "rule"),
    [pytest.param(k, r, id=f"{k[0].__name__}-{k[1].value}") for k, r in LEGAL],
)
def test_every_legal_transition_raises_exactly_its_event(key, rule) -> None:
    before, cause = key
    w = Watched(before)
    entry = w.table.entries["x"]
    old, generation = entry.state, entry.generation
    new = made(rule.to)
    assert w.table.transition("x", new, cause) is entry
    assert entry.state is new and entry.generation != generation
    assert w.events == ([] if rule.event is None else [("x", rule.event)])
    # The token store is rewritten when a token appears, changes or goes; never otherwise.
    assert len(w.changes) == (1 if Active in (before, rule.to) else 0)
    assert wiped(old)


def wiped(state: TokenState) -> bool:
    if isinstance(state, Active):
        return len(state.access_token) == 0 and len(state.refresh_token or b"") == 0
    if isinstance(state, Pending):
        return len(state.request.code_verifier) == 0
    if isinstance(state, DevicePending):
        return state.device_code is not None and len(state.device_code) == 0
    return True


@pytest.mark.parametrize(("before", "cause", "after"), ILLEGAL, ids=name)
def test_every_change_not_in_the_table_raises_and_changes_nothing(before, cause, after) -> None:
    w = Watched(before)
    entry = w.table.entries["x"]
    old, generation = entry.state, entry.generation
    with pytest.raises(IllegalTransition) as raised:
        w.table.transition("x", made(after), cause)
    assert entry.state is old and entry.generation == generation
    assert w.events == [] and w.changes == []
    assert not allows(old, cause, after)
    assert before is Empty or not wiped(old)
    # The message names kinds and the cause, never what a state holds.
    message = str(raised.value)
    assert f"{before.__name__} -> {after.__name__} ({cause.value})" in message
    for secret in (ACCESS, REFRESH, VERIFIER, DEVICE_CODE):
        assert secret.decode() not in message


def test_a_code_exchange_result_cannot_make_a_token_out_of_nothing() -> None:
    """The bug the machine exists to catch: a login's result arriving for an account
    with no login in progress raises, rather than quietly giving it a token."""
    w = Watched(Empty)
    with pytest.raises(IllegalTransition, match=r"Empty -> Active \(grant\)"):
        w.table.transition("x", made(Active), Cause.GRANT)
    assert isinstance(w.table.entries["x"].state, Empty)


def test_a_refresh_cannot_end_a_login_nor_a_login_replace_a_token() -> None:
    with pytest.raises(IllegalTransition):
        Watched(Pending).table.transition("x", made(Active), Cause.REFRESH)
    with pytest.raises(IllegalTransition):
        Watched(Active).table.transition("x", made(Pending), Cause.LOGIN)
    with pytest.raises(IllegalTransition):  # a restore never overwrites a current token
        Watched(Active).table.transition("x", made(Active), Cause.RESTORE)


def test_step_is_the_table() -> None:
    for (before, cause), rule in TRANSITIONS.items():
        assert step(made(before), cause, made(rule.to)) is rule.event
    assert {cause for _, cause in TRANSITIONS} == set(Cause)  # no cause without a rule
    assert {before for before, _ in TRANSITIONS} == set(KINDS)


@pytest.mark.parametrize("kind", KINDS, ids=name)
def test_a_reload_is_a_transition(kind: type[TokenState]) -> None:
    """An account whose client changed, and one that went: each leaves its state by the
    table's reload rule (token_invalidated for a token), in the new configuration's
    order and then the old one's; an account that stays keeps its state."""
    w = Watched(kind, block("kept") + block("changed") + block("gone"))
    kept = w.table.entries["kept"]
    state, generation = kept.state, kept.generation
    dropped = w.table.reload(config.parse(block("changed", "c2") + block("kept")).accounts)
    event = TRANSITIONS[(kind, Cause.RELOAD)].event
    expected = [] if event is None else ["changed", "gone"]
    assert dropped == expected
    assert w.events == [(n, event) for n in expected]
    assert len(w.changes) == (1 if expected else 0)
    assert w.table.entries["kept"] is kept and kept.state is state
    assert kept.generation == generation
    assert isinstance(w.table.entries["changed"].state, Empty)


def test_restore_and_store_open_are_transitions() -> None:
    """Tokens merged from a dump (pizauth restore) or the token store raise the table's
    event for their cause; a current token is left as it is."""
    source = TokenTable(config.parse(block("x") + block("y")).accounts)
    for n in ("x", "y"):
        source.entries[n].state = made(Active)
    clock = dump.Now(1.7e9, 100.0)
    for cause in (Cause.RESTORE, Cause.STORE_OPEN):
        w = Watched(Pending, block("x") + block("y"))
        current = w.table.entries["y"].state = made(Active)
        merged = dump.merge(w.table, dump.encode(source, clock), clock, cause=cause)
        assert merged.restored == ("x",)
        assert w.events == [("x", TRANSITIONS[(Pending, cause)].event)]
        assert w.table.entries["y"].state is current


def test_shutdown_wipes_every_state_even_one_the_table_does_not_know() -> None:
    """wipe_all is a shutdown transition for each account; a state of no known kind (a
    bug) raises, but only after every token has been wiped."""
    w = Watched(Active, block("x") + block("y"))
    x, y = w.table.entries["x"].state, w.table.entries["y"].state
    assert isinstance(x, Active) and isinstance(y, Active)

    class Stray:
        wiped = False

        def wipe(self) -> None:
            Stray.wiped = True

    w.table.entries["x"].state = Stray()  # type: ignore[assignment]
    with pytest.raises(IllegalTransition):
        w.table.wipe_all()
    assert Stray.wiped and len(y.access_token) == 0
    assert all(isinstance(e.state, Empty) for e in w.table.entries.values())
    assert w.events == [] and w.changes == []
    x.wipe()


def render() -> str:
    """TRANSITIONS as the Markdown table docs/architecture.md shows."""
    rows = ["| from | cause | to | event |", "|---|---|---|---|"]
    for (before, cause), rule in TRANSITIONS.items():
        event = "none" if rule.event is None else f"`{rule.event.value}`"
        rows.append(f"| {before.__name__} | {cause.value} | {rule.to.__name__} | {event} |")
    return "\n".join(rows) + "\n"


def test_the_table_in_the_architecture_document_is_the_code() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert render() in text, "docs/architecture.md: paste tests/test_tokenstate.py render()"
