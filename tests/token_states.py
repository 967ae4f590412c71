"""Putting an account in a token state for a test, the way the server could reach it:
through the state machine (pizauth/priv/state/tokenstate.py), by a cause its table allows."""

from __future__ import annotations

from pizauth.priv.state.tokens import Entry, TokenState, TokenTable
from pizauth.priv.state.tokenstate import TRANSITIONS


def put(table: TokenTable, name: str, state: TokenState) -> Entry:
    """Move `name` to `state` by the first cause the table has for that change; a change
    no cause allows fails the test, as it would be a bug in the server."""
    before = type(table.entries[name].state)
    for (kind, cause), rule in TRANSITIONS.items():
        if kind is before and rule.to is type(state):
            return table.transition(name, state, cause)
    raise AssertionError(f"no cause moves {before.__name__} to {type(state).__name__}")
