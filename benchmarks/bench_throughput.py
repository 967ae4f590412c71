#!/usr/bin/env python3
"""Row 3: server throughput. 32 concurrent clients speak the socket protocol directly (no
process start), `showtoken` round-robin over 10 logged-in accounts, for 10 s a round.

The clients are threads in worker processes of this benchmark, on the same machine as the
server: with few cores the load generator takes CPU from the server, so the figure is a
lower bound of what the server could do alone. Figures are medians over the rounds.
"""

from __future__ import annotations

import sys

import common as c

TARGET_RATE = 3000.0
TARGET_P99 = 0.020


def main() -> int:
    ap = c.parser(__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="length of one round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--procs", type=int, default=1, help="load-generator processes")
    ap.add_argument("--accounts", type=int, default=10)
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.rounds = 2.0, 2
    c.say(c.machine_line())
    c.quick_banner(args.quick)
    c.say(
        f"load: {args.clients} client threads in {args.procs} process(es), on the same "
        f"{c.NPROC}-core machine as the server (they compete for CPU)"
    )
    names = [f"acct{i}" for i in range(args.accounts)]
    with (
        c.Provider([c.Client(c.CLIENT_ID, c.CLIENT_SECRET)]) as provider,
        c.Server(provider, names) as server,
    ):
        server.start()
        server.authorise_all()
        results = []
        for k in range(args.rounds):
            noise = c.MachineLoad()
            r = c.run_load(
                server.sock, names, args.clients, args.procs, args.seconds, server.pids()
            )
            c.say(f"  round {k + 1}: {r.line()}")
            c.say(f"    {r.cpu_line()}; {noise.line()}")
            for sample in r.samples:
                c.say(f"    error sample: {sample}")
            results.append(r)
    rate = c.median([r.rate for r in results])
    p50 = c.median([r.p50 for r in results])
    p99 = c.median([r.p99 for r in results])
    errors = sum(r.errors for r in results)
    met = rate >= TARGET_RATE and p99 <= TARGET_P99 and errors == 0
    misses = []
    if rate < TARGET_RATE:
        misses.append(f"rate {1 - rate / TARGET_RATE:.0%} short")
    if p99 > TARGET_P99:
        misses.append(f"p99 {p99 / TARGET_P99:.1f}x the limit")
    if errors:
        misses.append(f"{errors} errors")
    c.result(
        "throughput",
        f"median {rate:.0f} replies/s, p50 {c.ms(p50)}, p99 {c.ms(p99)}, {errors} errors "
        f"over {len(results)} x {args.seconds:.0f} s (target >= {TARGET_RATE:.0f}/s, "
        f"p99 <= {c.ms(TARGET_P99)}, 0 errors): {c.verdict(met)}"
        + (f" ({'; '.join(misses)})" if misses else ""),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
