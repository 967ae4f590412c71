#!/usr/bin/env python3
"""Row 5: idle cost. A server with 20 accounts, all Active (logged in through the real flow),
left alone for --seconds (60) per run: CPU of the three processes from /proc/PID/stat
(utime+stime, all threads), and wake-ups as the deltas of voluntary_ctxt_switches summed
over every thread (/proc/PID/task/*/status). Nothing talks to the server meanwhile; reading
/proc does not wake it.

Targets: <= 0.5 % of one core over all three processes, and wake-ups bounded by the 37 s
tick, i.e. at most ceil(seconds / 37) + 1 over all processes and threads together.
"""

from __future__ import annotations

import math
import sys
import time

import common as c

TARGET_CPU = 0.5  # percent of one core
TICK = 37.0


def snapshot(pids: dict[str, int]) -> tuple[dict[str, int], dict[str, dict[int, int]]]:
    ticks = {name: c.cpu_ticks(pid) for name, pid in pids.items()}
    switches = {
        name: {tid: v for tid, (v, _) in c.ctxt_switches(pid).items()} for name, pid in pids.items()
    }
    return ticks, switches


def main() -> int:
    ap = c.parser(__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="length of one idle run")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--accounts", type=int, default=20)
    ap.add_argument("--settle", type=float, default=5.0, help="wait after logging in")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.runs, args.settle = 5.0, 1, 2.0
    c.say(c.machine_line())
    c.quick_banner(args.quick)
    bound = math.ceil(args.seconds / TICK) + 1
    names = [f"acct{i}" for i in range(args.accounts)]
    cpu_pct: list[float] = []
    wakeups: list[int] = []
    with (
        c.Provider([c.Client(c.CLIENT_ID, c.CLIENT_SECRET)]) as provider,
        c.Server(provider, names) as server,
    ):
        server.start()
        server.authorise_all()
        status = server.request(b"status:").decode()
        active = status.count("Active access token")
        if active != args.accounts:
            raise c.BenchError(f"only {active} of {args.accounts} accounts Active:\n{status}")
        pids = server.pids()
        c.say(f"{active} accounts Active; pids {pids}; settling {args.settle:.0f} s")
        time.sleep(args.settle)
        for k in range(args.runs):
            noise = c.MachineLoad()
            t0 = time.monotonic()
            ticks0, sw0 = snapshot(pids)
            time.sleep(args.seconds)
            ticks1, sw1 = snapshot(pids)
            elapsed = time.monotonic() - t0
            used = sum(ticks1.values()) - sum(ticks0.values())
            pct = 100 * used / c.CLK_TCK / elapsed
            per_proc = []
            total_w = 0
            detail = []
            for name in pids:
                w = 0
                for tid, v in sw1[name].items():
                    d = v - sw0[name].get(tid, 0)
                    w += d
                    if d:
                        detail.append(f"{name}/tid {tid}: {d}")
                total_w += w
                cpu = 100 * (ticks1[name] - ticks0[name]) / c.CLK_TCK / elapsed
                per_proc.append(f"{name} {cpu:.2f}% cpu {w} wake-ups")
            c.say(
                f"  run {k + 1} ({elapsed:.1f} s): total {pct:.2f}% of one core "
                f"({used} ticks of 1/{c.CLK_TCK} s), {total_w} wake-ups; {'; '.join(per_proc)}"
            )
            if detail:
                c.say(f"    threads that woke: {', '.join(detail)}")
            c.say(f"    {noise.line()}")
            cpu_pct.append(pct)
            wakeups.append(total_w)
        c.say(f"status still: {server.request(b'status:').decode().count('Active')} Active")
    cpu = c.median(cpu_pct)
    w = int(c.median(wakeups))
    met = cpu <= TARGET_CPU and max(wakeups) <= bound
    c.result(
        "idle",
        f"median {cpu:.2f}% of one core, median {w} wake-ups (max {max(wakeups)}) per "
        f"{args.seconds:.0f} s over 3 processes (target <= {TARGET_CPU}% and <= {bound} "
        f"wake-ups, one per {TICK:.0f} s tick): {c.verdict(met)}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
