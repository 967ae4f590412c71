#!/usr/bin/env python3
"""Row 8: refresh under load. 20 accounts whose tokens live --expires-in seconds (6) at the
local provider, refreshed --refresh-before-expiry (3 s) before they expire, for --seconds
(60), while client threads in a worker process call `showtoken` as fast as the server
answers.

The provider records when each token request arrives and when each token was issued; for
every account the chain login -> refresh -> refresh ... gives each refresh's deviation from
its schedule (previous token issued + expires_in - refresh_before_expiry). Every token the
clients were shown is checked against its expiry at the provider (issue time + expires_in,
taken from the moment the request reached the provider, so a little early: conservative).

Targets: every refresh within +-1 s of its schedule; no token shown after its expiry.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import threading
import time
from typing import Any

import common as c

TARGET = 1.0  # seconds either side of the schedule


class TimedProvider(c.Provider):
    """The local provider, noting when each successful token request arrived and finished."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # (arrived, done, grant_type, refresh token sent, access token issued, refresh issued)
        self.timeline: list[tuple[float, float, str, str | None, str, str | None]] = []

    def _token(
        self, params: dict[str, str], dups: list[str], authorization: str | None
    ) -> tuple[int, dict[str, str], bytes]:
        arrived = time.monotonic()
        status, headers, body = super()._token(params, dups, authorization)
        if status == 200:
            payload = json.loads(body)
            self.timeline.append(
                (
                    arrived,
                    time.monotonic(),
                    params.get("grant_type", ""),
                    params.get("refresh_token"),
                    payload["access_token"],
                    payload.get("refresh_token"),
                )
            )
        return status, headers, body


def _show_thread(sock: str, names: list[str], end: float, offset: int, out: dict) -> None:
    last_asked: dict[str, float] = {}
    counts = {"tokens": 0, "expired": 0, "other": 0, "failed": 0}
    samples: list[str] = []
    i = offset
    while time.monotonic() < end:
        name = names[i % len(names)]
        i += 1
        asked = time.monotonic()
        try:
            reply = c.sock_request(sock, c.show_request(name), timeout=10)
        except OSError as e:
            counts["failed"] += 1
            if len(samples) < 3:
                samples.append(f"{type(e).__name__}: {e}")
            continue
        if reply.startswith(b"access_token:"):
            counts["tokens"] += 1
            token = reply[len(b"access_token:") :].decode()
            last_asked[token] = max(last_asked.get(token, 0.0), asked)
        elif b"expired" in reply:
            counts["expired"] += 1
            if len(samples) < 3:
                samples.append(reply.decode(errors="replace"))
        else:
            counts["other"] += 1
            if len(samples) < 3:
                samples.append(reply[:100].decode(errors="replace"))
    out.update(last_asked=last_asked, counts=counts, samples=samples)


def show_load(sock: str, names: list[str], clients: int, end: float, queue: Any) -> None:
    outs: list[dict] = [{} for _ in range(clients)]
    threads = [
        threading.Thread(target=_show_thread, args=(sock, names, end, k, outs[k]))
        for k in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    last: dict[str, float] = {}
    counts = {"tokens": 0, "expired": 0, "other": 0, "failed": 0}
    samples: list[str] = []
    for o in outs:
        for token, t in o["last_asked"].items():
            last[token] = max(last.get(token, 0.0), t)
        for k, v in o["counts"].items():
            counts[k] += v
        samples += o["samples"]
    queue.put(json.dumps({"last": last, "counts": counts, "samples": samples[:5]}))


def main() -> int:
    ap = c.parser(__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--accounts", type=int, default=20)
    ap.add_argument("--expires-in", dest="expires_in", type=int, default=6)
    ap.add_argument("--refresh-before-expiry", dest="rbe", type=int, default=3)
    ap.add_argument("--clients", type=int, default=8, help="show-load threads")
    args = ap.parse_args()
    if args.quick:
        args.seconds = 10.0
    c.say(c.machine_line())
    c.quick_banner(args.quick)
    period = args.expires_in - args.rbe
    c.say(
        f"{args.accounts} accounts, expires_in {args.expires_in} s, refresh_before_expiry "
        f"{args.rbe} s (a refresh every {period} s per account), {args.clients} show-load "
        f"threads, {args.seconds:.0f} s"
    )
    names = [f"acct{i}" for i in range(args.accounts)]
    provider = TimedProvider([c.Client(c.CLIENT_ID, c.CLIENT_SECRET)], expires_in=args.expires_in)
    with (
        provider,
        c.Server(provider, names, account_extra=f"refresh_before_expiry = {args.rbe}s;") as server,
    ):
        server.start()
        server.authorise_all()
        noise = c.MachineLoad()
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        end = time.monotonic() + args.seconds
        worker = ctx.Process(target=show_load, args=(server.sock, names, args.clients, end, queue))
        worker.start()
        try:
            load = json.loads(queue.get(timeout=args.seconds + 60))
        finally:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
                worker.join()
        finished = time.monotonic()
        c.say(noise.line())
        timeline = list(provider.timeline)
        provider_errors = provider.errors
    # Chains: each account's refresh token (not rotated) ties its requests together.
    chains: dict[str, list[tuple[float, float]]] = {}
    expiry: dict[str, float] = {}
    for arrived, done, grant, rt_in, access, rt_out in timeline:
        expiry[access] = arrived + args.expires_in
        key = rt_out if grant == "authorization_code" else rt_in
        if key is not None:
            chains.setdefault(key, []).append((arrived, done))
    deviations: list[float] = []
    overdue = 0
    for events in chains.values():
        for (_, prev_done), (arrived, _) in zip(events, events[1:], strict=False):
            deviations.append(arrived - (prev_done + period))
        if finished - (events[-1][1] + period) > TARGET:
            overdue += 1  # the account's next refresh should have come and did not
    refreshes = len(deviations)
    off = [d for d in deviations if abs(d) > TARGET]
    abs_dev = [abs(d) for d in deviations]
    shown_late = []
    margins = []
    for token, asked in load["last"].items():
        if token not in expiry:
            shown_late.append(f"unknown token {token[:10]}...")
            continue
        margin = expiry[token] - asked
        margins.append(margin)
        if margin < 0:
            shown_late.append(f"{token[:10]}... asked {-margin * 1000:.0f} ms after expiry")
    counts = load["counts"]
    c.say(
        f"refreshes: {refreshes} over {len(chains)} accounts (expected about "
        f"{len(chains) * args.seconds / period:.0f}); deviation from schedule: median "
        f"{c.ms(c.median(deviations))}, p99 |dev| {c.ms(c.percentile(abs_dev, 99))}, "
        f"max |dev| {c.ms(max(abs_dev, default=0))}, outside +-{TARGET:.0f} s: {len(off)}, "
        f"overdue at the end: {overdue}"
    )
    c.say(
        f"show load: {counts['tokens']} tokens shown ({counts['tokens'] / args.seconds:.0f}/s), "
        f"{counts['expired']} 'expired' replies, {counts['other']} other replies, "
        f"{counts['failed']} failed requests; {len(load['last'])} distinct tokens; closest "
        f"to expiry a token was last asked for: {c.ms(min(margins, default=float('nan')))} "
        "before it"
    )
    for s in load["samples"]:
        c.say(f"  sample reply: {s}")
    for s in shown_late[:5]:
        c.say(f"  shown after expiry: {s}")
    if provider_errors:
        c.say(f"  provider errors: {provider_errors[:3]}")
    met = not off and not overdue and not shown_late and refreshes > 0
    c.result(
        "refresh",
        f"{refreshes} refreshes, max |deviation| {c.ms(max(abs_dev, default=0))} (median "
        f"{c.ms(c.median(abs_dev))}), {len(off)} outside +-1 s, {overdue} overdue; "
        f"{len(shown_late)} tokens shown after expiry of {len(load['last'])} shown "
        f"(target: all within +-1 s, none after expiry): {c.verdict(met)}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
