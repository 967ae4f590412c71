"""Keeping the token table in the sealed token store (docs/token-store.md).

At start, before the server answers anything, restore_at_start() checks the
cipher (store.check_aead), runs the key command (blocking: nothing is served yet,
so nothing waits on the loop), opens the store and merges its tokens into the
table; what went wrong is kept in start_problems for `pizauth server` to print
before it detaches (server.py). From then on every change of
token state (TokenTable.on_change) asks for a write; the changes of one second
are written together (store.WriteSchedule), from the parent's loop (tick and
next_wakeup). The key material stays in a Secret. With no key yet (the key
command failed) the key command runs again when a write is due, without
blocking the loop. A revoke the store cannot record yet goes to PATH.revoked
(priv/storage/storerevoked.py).

The parent alone reads and writes the file: it holds the tokens and needs no
network to seal them, so no child gains file access or a token for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from pizauth import ipc, paths
from pizauth.config import Config
from pizauth.priv.run import secretcmd
from pizauth.priv.run.notifier import Notifier
from pizauth.priv.state.clock import instant
from pizauth.priv.state.secmem import Secret
from pizauth.priv.state.tokens import TokenTable
from pizauth.priv.state.tokenstate import Cause
from pizauth.priv.storage import store, storerevoked
from pizauth.priv.storage.store import Aead, Status, Store, StoreError, WriteSchedule
from pizauth.text import shown
from pizauth.timeouts import STORE_LAST_KEY as LAST_KEY

log = logging.getLogger("pizauth")


class StoreKeeper:
    """The store of `config` (inert when none is configured) for `table`; `clock()` is
    the instant now, the clock of the loop that calls tick."""

    def __init__(
        self,
        config: Config,
        table: TokenTable,
        notifier: Notifier,
        watch: Callable[[int, Callable[[], None]], None],
        unwatch: Callable[[int], None],
        aead: Aead | None = None,
        *,
        clock: Callable[[], float] = instant,
    ) -> None:
        self._clock = clock
        self.table = table
        self.notifier = notifier
        self.configured = (config.token_store, config.token_store_key_cmd)
        self.key_cmd = config.token_store_key_cmd or ""
        # server.main has expanded it once already, so that a bad home fails the start.
        self.store = (
            Store(paths.expand_home(config.token_store), aead) if config.token_store else None
        )
        self.aead = aead
        self.schedule = WriteSchedule()
        self.commands = secretcmd.SecretCommands(watch, unwatch, clock=clock)
        self.key: Secret | None = None
        self.closed = False
        self.generations_at_start: dict[str, int] | None = None
        # What went wrong at start, for `pizauth server` to print before it detaches.
        self.start_problems: list[str] = []
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
        at start, in this run or the next) must not give that account its old token back."""
        if self.generations_at_start is not None:
            self.generations_at_start.pop(name, None)
        if self.store is None or self.store.status is Status.OPENED:
            return  # the next write takes the token out of the store
        if not (self.store.exists() or storerevoked.asides_exist(self.store.path)):
            return  # no file holds a token of it
        try:
            storerevoked.add(self.store.path, name, time.time())
        except StoreError as e:
            self.notifier.server_error(
                f"the revoke of {shown(name)} is not recorded for the unopened token store: {e}"
            )

    # -- start ---------------------------------------------------------------------------

    def restore_at_start(self) -> None:
        """Check the cipher, run the key command and restore the store's tokens, if there
        is a store. Whatever goes wrong is reported (start_problems too), never fatal."""
        if self.store is None:
            return
        try:
            self._restore_at_start()
        except Exception:
            # A bug must not stop the server, nor cost the file: it is kept, as unopened.
            log.exception("internal error restoring the token store")
            self.store.not_opened("internal error while opening it")
            self._start_problem(f"token store {self.store.path} not opened: internal error")

    def _start_problem(self, message: str) -> None:
        self.start_problems.append(message)
        self.notifier.server_error(message)

    def _restore_at_start(self) -> None:
        assert self.store is not None
        path = self.store.path
        problem = store.check_aead(self.aead)
        if problem is not None:
            why = f"the encryption library fails its self-test: {problem}"
            self.store.unusable(why)
            self._start_problem(
                f"token store {path} not used, starting without it: {why} "
                f"({_library_versions()}); the file is left as it is"
            )
            return
        # Even with no file yet: a key that is missing or too short is reported now,
        # not at the first write after a login.
        result = secretcmd.run_blocking(self.key_cmd, secretcmd.STORE_KEY, {})
        if isinstance(result, secretcmd.CommandError):
            if not self.store.exists():
                self._start_problem(
                    f"token store {path} cannot be written: {result.message} "
                    "(tried again before the first write)"
                )
                return
            self.store.key_failed(result.message)
            # Opened later, the store may give tokens back only to accounts untouched
            # since: never to one revoked or invalidated meanwhile.
            self.generations_at_start = {
                name: entry.generation for name, entry in self.table.entries.items()
            }
            self._start_problem(
                f"token store {path} not opened, starting without its tokens: "
                f"{result.message} (it is tried again before the next write)"
            )
            return
        self.key = result
        if self.store.exists():
            self._load(self._start_problem)

    def _load(self, report: Callable[[str], None]) -> None:
        """Open the store with self.key and merge its tokens into the table."""
        from pizauth.priv.storage import dump  # cryptography: only loaded when a store is used

        assert self.store is not None and self.key is not None
        try:
            revoked = storerevoked.read(self.store.path)
        except StoreError as e:
            # Any stored token may be one revoked meanwhile: none is given back. The store
            # is not set aside for it (the next write consumes the list).
            report(f"{e}: no token is restored from the token store; the accounts need a login")
            revoked = {name: float("inf") for name in self.table.entries}
        try:
            plaintext = self.store.load(self.key)
        except StoreError as e:
            self.store.not_opened(str(e))
            self._set_aside(f"token store {self.store.path} not opened: {e}", report)
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
            merged = dump.merge(
                self.table, plaintext, only=only, revoked=revoked, cause=Cause.STORE_OPEN
            )  # each token given back raises token_new, as `pizauth restore` does
        except dump.DumpError as e:
            self.store.not_opened(f"token store {self.store.path} is damaged: {e}")
            self._set_aside(f"token store {self.store.path} is damaged: {e}", report)
            return
        finally:
            ipc.wipe(plaintext)
        for name, why in merged.refused:
            self.notifier.error(name, f"Token of {shown(name)} not restored from the store: {why}")
        for name, why in merged.left_out:
            log.error("token of %s not restored from the store: %s", shown(name), why)
        log.info("token store: %d token(s) restored", len(merged.restored))

    def _set_aside(self, why: str, report: Callable[[str], None]) -> None:
        """The file did not open: move it aside now, so that the user can be told where."""
        assert self.store is not None
        try:
            moved = self.store.set_aside()
        except StoreError as e:
            report(
                f"{why}: starting without its tokens; {e} (tried again before the next "
                "write, and never overwritten)"
            )
            return
        report(f"{why}: starting without its tokens; the file is kept as {moved}")

    # -- writes --------------------------------------------------------------------------

    def _unusable(self) -> bool:
        return self.store is None or self.store.status is Status.UNUSABLE

    def changed(self) -> None:
        if not self.closed and not self._unusable():
            self.schedule.changed(self._clock())

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
            self._load(self.notifier.server_error)
        self._save()

    def _save(self) -> None:
        from pizauth.priv.storage import dump

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
        if storerevoked.consume(self.store.path):
            log.info("token store written: the revokes it could not record are in it now")
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
        if self._unusable() or self.closed:
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
                self._load(self.notifier.server_error)
        self._save()

    def close(self) -> None:
        self.closed = True
        self.commands.kill_all()
        if self.key is not None:
            self.key.wipe()
            self.key = None


def _library_versions() -> str:
    import cryptography
    from cryptography.hazmat.backends.openssl.backend import backend

    return f"cryptography {cryptography.__version__}, {backend.openssl_version_text()}"
