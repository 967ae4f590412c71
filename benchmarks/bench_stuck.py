#!/usr/bin/env python3
"""Row 4: stuck clients. The throughput load of bench_throughput.py while 200 idle
connections are held open on the control socket (connected, never sending a byte; one the
server closes at its read deadline is reconnected at once, so 200 stay held).

Rounds alternate without and with the idle connections on the same server, so the baseline
is measured in the same run; the figure is the ratio of the median rates.
"""

from __future__ import annotations

import sys

import common as c

TARGET = 0.80  # "within 20 %" of the baseline


def main() -> int:
    ap = c.parser(__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="length of one round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of each kind")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--idle", type=int, default=200)
    ap.add_argument("--procs", type=int, default=1, help="load-generator processes")
    ap.add_argument(
        "--spread",
        type=float,
        default=10.0,
        help="seconds over which the idle connections are first opened (the server's read "
        "deadline, so its closes and our reconnects are spread out); 0 = all at once, "
        "which makes all of them come back together every deadline (a thundering herd)",
    )
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.spread = 2.0, 1, min(args.spread, 2.0)
    c.say(c.machine_line())
    c.quick_banner(args.quick)
    c.say(
        f"load: {args.clients} client threads in {args.procs} process(es) on the same "
        f"{c.NPROC}-core machine as the server; stuck: {args.idle} idle connections, first "
        f"opened over {args.spread:.0f} s, each reconnected as soon as the server closes it"
    )
    names = [f"acct{i}" for i in range(10)]
    held = 0
    base: list[c.LoadResult] = []
    stuck: list[c.LoadResult] = []
    with (
        c.Provider([c.Client(c.CLIENT_ID, c.CLIENT_SECRET)]) as provider,
        c.Server(provider, names) as server,
    ):
        server.start()
        server.authorise_all()
        pids = server.pids()
        for k in range(args.rounds):
            noise = c.MachineLoad()
            r = c.run_load(server.sock, names, args.clients, args.procs, args.seconds, pids)
            c.say(f"  round {k + 1} baseline: {r.line()}")
            c.say(f"    {r.cpu_line()}; {noise.line()}")
            base.append(r)
            idle = c.IdleClients(server.sock, args.idle, args.spread)
            try:
                idle.start()
                held = idle.wait_held(args.spread + 15)
                noise = c.MachineLoad()
                r = c.run_load(server.sock, names, args.clients, args.procs, args.seconds, pids)
                held = min(held, len(idle.socks))
            finally:
                idle.stop()
            c.say(
                f"  round {k + 1} +{held} idle: {r.line()}  (idle reconnects {idle.reconnects}, "
                f"failed connects {idle.failures}, EAGAIN retries {idle.eagain})"
            )
            c.say(f"    {r.cpu_line()}; {noise.line()}")
            for sample in r.samples:
                c.say(f"    error sample: {sample}")
            stuck.append(r)
    base_rate = c.median([r.rate for r in base])
    stuck_rate = c.median([r.rate for r in stuck])
    ratio = stuck_rate / base_rate
    errors = sum(r.errors for r in stuck)
    c.say(
        f"p99: baseline {c.ms(c.median([r.p99 for r in base]))}, "
        f"with idle connections {c.ms(c.median([r.p99 for r in stuck]))}"
    )
    misses = []
    if ratio < TARGET:
        misses.append(f"{TARGET - ratio:.0%} points short")
    if errors:
        misses.append(f"{errors} errors")
    c.result(
        "stuck",
        f"{stuck_rate:.0f} replies/s with {held} idle connections vs {base_rate:.0f} "
        f"without = {ratio:.0%} ({errors} errors) (target >= {TARGET:.0%}, and the "
        f"throughput row's 0 errors): {c.verdict(not misses)}"
        + (f" ({'; '.join(misses)})" if misses else ""),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
