"""Keeping the token table in the sealed token store (docs/token-store.md).

At start, before the server answers anything, restore_at_start() runs the key
command (blocking: nothing is served yet, so nothing waits on the loop), opens
the store and merges its tokens into the table. From then on every change of
token state (TokenTable.on_change) asks for a write; the changes of one second
are written together (store.WriteSchedule), from the parent's loop (tick and
next_wakeup). The key material stays in a Secret. With no key yet (no store at
start, or the key command failed) the key command runs when a write is due,
without blocking the loop.

The parent alone reads and writes the file: it holds the tokens and needs no
network to seal them, so no child gains file access or a token for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pizauth import ipc, paths
from pizauth.config import Config
from pizauth.ipc import TokenEvent
from pizauth.priv import secretcmd
from pizauth.priv.clock import instant
from pizauth.priv.notifier import Notifier
from pizauth.priv.secmem import Secret
from pizauth.priv.store import Status, Store, StoreError, WriteSchedule
from pizauth.priv.tokens import TokenTable
from pizauth.text import shown
from pizauth.timeouts import STORE_LAST_KEY as LAST_KEY

log = logging.getLogger("pizauth")


class StoreKeeper:
    """The store of `config` (inert when none is configured) for `table`."""

    def __init__(
        self,
        config: Config,
        table: TokenTable,
        notifier: Notifier,
        watch: Callable[[int, Callable[[], None]], None],
        unwatch: Callable[[int], None],
    ) -> None:
        self.table = table
        self.notifier = notifier
        self.configured = (config.token_store, config.token_store_key_cmd)
        self.key_cmd = config.token_store_key_cmd or ""
        # server.main has expanded it once already, so that a bad home fails the start.
        self.store = Store(paths.expand_home(config.token_store)) if config.token_store else None
        self.schedule = WriteSchedule()
        self.commands = secretcmd.SecretCommands(watch, unwatch)
        self.key: Secret | None = None
        self.closed = False
        self.generations_at_start: dict[str, int] | None = None
        if self.store is not None:
            table.on_change = self.changed

    @property
    def path(self) -> str | None:
        return None if self.store is None else self.store.path

    @property
    def error(self) -> str | None:
        """Why the store file was not opened (it is kept, to be moved aside), if it was not."""
        return None if self.store is None else self.store.error

    def revoked(self, name: str) -> None:
        """`pizauth revoke NAME`: a store that opens only later (its key command failed
        at start) must not give that account its old token back."""
        if self.generations_at_start is not None:
            self.generations_at_start.pop(name, None)

    # -- start ---------------------------------------------------------------------------

    def restore_at_start(self) -> None:
        """Run the key command and restore the store's tokens, if there is a store."""
        if self.store is None or not self.store.exists():
            return  # the key command runs before the first write
        try:
            self._restore_at_start()
        except Exception:
            # A bug must not stop the server, nor cost the file: it is kept, as unopened.
            log.exception("internal error restoring the token store")
            self.store.not_opened("internal error while opening it")

    def _restore_at_start(self) -> None:
        assert self.store is not None
        result = secretcmd.run_blocking(self.key_cmd, secretcmd.STORE_KEY, {})
        if isinstance(result, secretcmd.CommandError):
            self.store.key_failed(result.message)
            # Opened later, the store may give tokens back only to accounts untouched
            # since: never to one revoked or invalidated meanwhile.
            self.generations_at_start = {
                name: entry.generation for name, entry in self.table.entries.items()
            }
            self.notifier.server_error(
                f"token store {self.store.path} not opened, starting without its tokens: "
                f"{result.message} (it is tried again before the next write)"
            )
            return
        self.key = result
        self._load()

    def _load(self) -> None:
        """Open the store with self.key and merge its tokens into the table."""
        from pizauth.priv import dump  # cryptography: only loaded when a store is used

        assert self.store is not None and self.key is not None
        try:
            plaintext = self.store.load(self.key)
        except StoreError as e:
            self._not_opened(str(e))
            return
        if plaintext is None:
            return
        only = None
        if self.generations_at_start is not None:
            only = {
                name
                for name, entry in self.table.entries.items()
                if self.generations_at_start.get(name) == entry.generation
            }
        try:
            merged = dump.merge(self.table, plaintext, only=only)
        except dump.DumpError as e:
            self.store.not_opened(str(e))
            self._not_opened(f"token store {self.store.path} is damaged: {e}")
            return
        finally:
            ipc.wipe(plaintext)
        for name, why in merged.refused:
            self.notifier.error(name, f"Token of {shown(name)} not restored from the store: {why}")
        for name in merged.restored:
            self.notifier.event(name, TokenEvent.NEW)  # as `pizauth restore` does
        log.info("token store: %d token(s) restored", len(merged.restored))

    def _not_opened(self, why: str) -> None:
        self.notifier.server_error(
            f"{why}: starting without its tokens; the file is kept (moved aside before "
            "the next write, never overwritten)"
        )

    # -- writes --------------------------------------------------------------------------

    def changed(self) -> None:
        if not self.closed:
            self.schedule.changed(instant())

    def next_wakeup(self) -> float | None:
        times = [self.schedule.next_write_due(), self.commands.next_deadline()]
        return min((t for t in times if t is not None), default=None)

    def tick(self, now: float) -> None:
        if self.store is None:
            return
        try:
            self.commands.enforce_timeouts(now)
            if self.schedule.take(now) and not self.closed:
                self._write()
        except Exception:
            log.exception("internal error writing the token store")  # the loop goes on

    def _write(self) -> None:
        if self.key is not None:
            self._save()
        elif not self.commands.running:
            # The command's result writes whatever the table holds by then.
            self.commands.start(self.key_cmd, secretcmd.STORE_KEY, {}, self._key_done)

    def _key_done(self, result: secretcmd.Result) -> None:
        try:
            self._key_arrived(result)
        except Exception:
            log.exception("internal error writing the token store")  # the loop goes on

    def _key_arrived(self, result: secretcmd.Result) -> None:
        assert self.store is not None
        if self.closed:
            if isinstance(result, Secret):
                result.wipe()
            return
        if isinstance(result, secretcmd.CommandError):
            self.store.key_failed(result.message)
            self.notifier.server_error(
                f"token store {self.store.path} not written: {result.message} "
                "(tried again at the next change)"
            )
            return
        self.key = result
        if self.store.status is Status.KEY_FAILED:
            # The store the key command could not open at start: its tokens first, for
            # accounts that have none (a current token is never replaced by an old one).
            self._load()
        self._save()

    def _save(self) -> None:
        from pizauth.priv import dump

        assert self.store is not None and self.key is not None
        old_error = self.store.error
        plaintext = dump.encode(self.table, dump.now())
        try:
            moved = self.store.save(plaintext, self.key)
        except StoreError as e:
            self.notifier.server_error(f"{e} (tried again at the next change)")
            return
        finally:
            ipc.wipe(plaintext)
        if moved is not None:
            self.notifier.server_error(
                f"token store {self.store.path} could not be opened ({old_error}): "
                f"kept as {moved}, and a new store written"
            )
        log.debug("token store written")

    # -- reload and shutdown -------------------------------------------------------------

    def reloaded(self, config: Config) -> None:
        if (config.token_store, config.token_store_key_cmd) != self.configured:
            # Switching files under a running server could lose one of them.
            log.error(
                "token_store and token_store_key_cmd changes take effect when the server restarts"
            )

    def last_write(self) -> None:
        """Before the tokens are wiped at shutdown: write a change not yet written (the
        store is left for the next start), then write nothing more."""
        if self.store is None or self.closed:
            return
        pending = self.schedule.take(float("inf")) or bool(self.commands.running)
        self.closed = True
        if not pending:
            return
        if self.key is None:
            # No key yet (no store at start, or its command failed or still runs): one
            # more try, bounded, so that a stop is not held up for long.
            self.commands.kill_all()
            result = secretcmd.run_blocking(self.key_cmd, secretcmd.STORE_KEY, {}, LAST_KEY)
            if isinstance(result, secretcmd.CommandError):
                log.error("token store: the last changes are not saved: %s", result.message)
                return
            self.key = result
            if self.store.status is Status.KEY_FAILED:
                self._load()
        self._save()

    def close(self) -> None:
        self.closed = True
        self.commands.kill_all()
        if self.key is not None:
            self.key.wipe()
            self.key = None
