#!/usr/bin/env python3
"""Row 7: start-up. `pizauth server` in daemon mode (no -d), spawned, until `show` answers.

Two readings per run: (a) `pizauth server` returns (it does once the daemon is ready) and
then a `showtoken` request is answered -- what `pizauth server && pizauth show` sees; this
is the figure; (b) a client that polls the socket every 2 ms from the moment of spawning,
which is answered as soon as the command child serves, before the whole daemon is ready.
Each run has a fresh configuration and runtime directory and is shut down before the next.

The configuration is one account with a user's defaults, so HTTPS is on (the network child
makes a fresh certificate at every start); runs with `https_listen = none` are shown too.
"""

from __future__ import annotations

import sys
import time

import common as c

TARGET = 1.0  # seconds


def measure(provider: c.Provider, https: bool) -> tuple[float, float]:
    """(seconds until `pizauth server` returned and show answered, until the poll answered)."""
    with c.Server(provider, ["acct"], https=https) as server:
        polled = server.start(daemon=True)
        server.pids()  # all three processes are up
        return server.shown_after_return, polled


def main() -> int:
    ap = c.parser(__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    runs = 3 if args.quick else args.runs
    c.say(c.machine_line())
    c.quick_banner(args.quick)
    seq: dict[bool, list[float]] = {True: [], False: []}
    poll: dict[bool, list[float]] = {True: [], False: []}
    with c.Provider([c.Client(c.CLIENT_ID, c.CLIENT_SECRET)]) as provider:
        measure(provider, True)  # warm the page cache
        deadline = time.monotonic() + 600
        for _ in range(runs):
            for https in (True, False):
                noise = c.MachineLoad()
                s, p = measure(provider, https)
                seq[https].append(s)
                poll[https].append(p)
                c.say(
                    f"  https {'on ' if https else 'off'}: server returned + show answered "
                    f"{c.ms(s)}; polling client answered {c.ms(p)}; {noise.line()}"
                )
            if time.monotonic() > deadline:
                raise c.BenchError("start-up benchmark took over 10 minutes")
    for https in (False, True):
        c.say(
            f"https {'on ' if https else 'off'}: median server returned + show answered "
            f"{c.ms(c.median(seq[https]))} (min {c.ms(min(seq[https]))}, max "
            f"{c.ms(max(seq[https]))}); median polling client answered "
            f"{c.ms(c.median(poll[https]))}"
        )
    figure = c.median(seq[True])
    c.result(
        "startup",
        f"median {c.ms(figure)} from spawning `pizauth server` until it returned and `show` "
        f"answered ({runs} runs, HTTPS on; {c.ms(c.median(seq[False]))} with HTTPS off; a "
        f"client polling from the spawn was answered after {c.ms(c.median(poll[True]))}) "
        f"(target <= {TARGET:.0f} s): {c.verdict(figure <= TARGET)}"
        + ("" if figure <= TARGET else f" ({figure / TARGET - 1:.0%} over)"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
