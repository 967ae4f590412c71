#!/usr/bin/env python3
"""Row 6: memory. RSS (VmRSS) of the parent, network and command processes while 1,000
refreshes are driven across 20 logged-in accounts: `refresh:withurl NAME` on the socket for
every account, then wait until the provider has answered that many refresh requests, and
again. RSS is read after login and at every 250 refreshes (each reading the median of 5
samples, after the server has settled); the whole thing is repeated on fresh servers and the
figures are medians over those runs.

Targets: parent <= 25 MiB, all three <= 100 MiB, and no growth from the 500th to the
1,000th refresh (judged here as at most 256 KiB over all three: page-sized noise).
"""

from __future__ import annotations

import sys
import time

import common as c

TARGET_PARENT = 25 * 1024  # KiB
TARGET_TOTAL = 100 * 1024
GROWTH_NOISE = 256  # KiB
ROLES = ("parent", "network", "command")


def rss(pids: dict[str, int]) -> dict[str, float]:
    samples: dict[str, list[int]] = {r: [] for r in ROLES}
    for _ in range(5):
        for role in ROLES:
            samples[role].append(c.rss_kib(pids[role]))
        time.sleep(0.1)
    return {role: c.median(v) for role, v in samples.items()}


def refresh_count(provider: c.Provider) -> int:
    return sum(1 for r in provider.token_requests if r.get("grant_type") == "refresh_token")


def one_run(refreshes: int, accounts: int, limit: float) -> dict[int, dict[str, float]]:
    names = [f"acct{i}" for i in range(accounts)]
    checkpoints = sorted({0, refreshes // 4, refreshes // 2, 3 * refreshes // 4, refreshes})
    readings: dict[int, dict[str, float]] = {}
    with (
        c.Provider([c.Client(c.CLIENT_ID, c.CLIENT_SECRET)]) as provider,
        c.Server(provider, names) as server,
    ):
        server.start()
        server.authorise_all()
        pids = server.pids()
        time.sleep(0.5)
        deadline = time.monotonic() + limit
        done = 0
        requests = len(provider.token_requests)
        bad = 0
        for point in checkpoints:
            while done < point:
                if time.monotonic() > deadline:
                    raise c.BenchError(f"only {done} refreshes in {limit:.0f} s")
                for name in names:
                    if server.request(b"refresh:withurl " + name.encode()) != b"scheduled:":
                        bad += 1
                # A refresh still running when asked again is not started twice, so a batch
                # may add fewer than len(names); the count comes from the provider.
                provider.wait_for_token_requests(requests + len(names), timeout=10)
                time.sleep(0.02)  # let the results reach the parent
                requests = len(provider.token_requests)
                done = refresh_count(provider)
            time.sleep(0.5)  # settle: the network child's request threads end
            readings[point] = {**rss(pids), "count": float(done)}
            c.say(
                f"    after {done:5d} refreshes: "
                + ", ".join(f"{r} {c.mib(readings[point][r])}" for r in ROLES)
                + f", total {c.mib(sum(readings[point][r] for r in ROLES))}"
            )
        for name in names:
            if server.token(name) is None:
                raise c.BenchError(f"{name} has no valid token after the refreshes")
        if bad or provider.errors:
            raise c.BenchError(f"{bad} bad refresh replies; provider errors {provider.errors[:3]}")
    return readings


def main() -> int:
    ap = c.parser(__doc__.splitlines()[0])
    ap.add_argument("--refreshes", type=int, default=1000)
    ap.add_argument("--accounts", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--limit", type=float, default=600.0, help="seconds allowed per run")
    args = ap.parse_args()
    if args.quick:
        args.refreshes, args.runs = 100, 1
    c.say(c.machine_line())
    c.quick_banner(args.quick)
    runs = []
    for k in range(args.runs):
        c.say(f"  run {k + 1}: {args.refreshes} refreshes across {args.accounts} accounts")
        t0 = time.monotonic()
        noise = c.MachineLoad()
        runs.append(one_run(args.refreshes, args.accounts, args.limit))
        c.say(f"    ({time.monotonic() - t0:.1f} s; {noise.line()})")
    half, full = args.refreshes // 2, args.refreshes
    end = {r: c.median([run[full][r] for run in runs]) for r in ROLES}
    total = sum(end.values())
    growth = {r: c.median([run[full][r] - run[half][r] for run in runs]) for r in ROLES}
    growth_total = c.median([sum(run[full][r] - run[half][r] for r in ROLES) for run in runs])
    c.say(
        f"growth from refresh {half} to {full} (median over runs): "
        + ", ".join(f"{r} {g:+.0f} KiB" for r, g in growth.items())
        + f", total {growth_total:+.0f} KiB"
    )
    misses = []
    if end["parent"] > TARGET_PARENT:
        misses.append(f"parent {end['parent'] / TARGET_PARENT - 1:.0%} over")
    if total > TARGET_TOTAL:
        misses.append(f"total {total / TARGET_TOTAL - 1:.0%} over")
    if growth_total > GROWTH_NOISE:
        misses.append(f"grew {growth_total:.0f} KiB")
    c.result(
        "memory",
        f"after {full} refreshes parent {c.mib(end['parent'])}, network "
        f"{c.mib(end['network'])}, command {c.mib(end['command'])}, total {c.mib(total)}; "
        f"growth {half}->{full}: {growth_total:+.0f} KiB (targets parent <= 25 MiB, "
        f"total <= 100 MiB, no growth): {c.verdict(not misses)}"
        + (f" ({'; '.join(misses)})" if misses else ""),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
