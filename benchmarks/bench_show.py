#!/usr/bin/env python3
"""Row 1: `pizauth show ACCOUNT` with a valid token, whole process, against `python -c pass`.

Both commands run alternately (so drift on the machine hits both alike), from the same
interpreter in the same venv, in the same run; the figure is the ratio of the medians.
Informational rows split the time up: the console-script wrapper pip generates, pizauth's
own client path without that wrapper, and the server's socket round trip alone.
"""

from __future__ import annotations

import subprocess
import sys
import time

import common as c

TARGET = 1.0  # no slower than the bare interpreter


def time_command(argv: list[str], env: dict[str, str], cwd: str, expect: bytes | None) -> float:
    """Wall time of one whole process, spawn to exit; checks its output."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0 or (expect is not None and proc.stdout != expect):
        raise c.BenchError(f"{argv} failed: {proc.returncode} {proc.stderr[-300:]!r}")
    return elapsed


def main() -> int:
    ap = c.parser(__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40, help="runs of each command (>= 30)")
    args = ap.parse_args()
    runs = 10 if args.quick else args.runs
    c.say(c.machine_line())
    c.quick_banner(args.quick)
    c.warn_if_editable()
    py = sys.executable
    with (
        c.Provider([c.Client(c.CLIENT_ID, c.CLIENT_SECRET)]) as provider,
        c.Server(provider, ["acct"]) as server,
    ):
        server.start()
        token = server.authorise("acct").encode() + b"\n"
        env = server.env
        # Not the checkout, where `python -c` would import pizauth from the source tree.
        cwd = str(server.tmp)
        show = "pizauth show acct (console script)"
        commands = {
            "python -c pass": ([py, "-c", "pass"], None),
            show: ([c.PIZAUTH, "show", "acct"], token),
            "python -c 'import re' (what pip's wrapper imports)": ([py, "-c", "import re"], None),
            "python -c 'import pizauth.cli, pizauth.client' (imports only)": (
                [py, "-c", "import pizauth.cli, pizauth.client"],
                None,
            ),
            "python -c 'from pizauth.cli import main; main(show)' (no pip wrapper)": (
                [
                    py,
                    "-c",
                    "import sys; from pizauth.cli import main; "
                    "sys.exit(main(['pizauth', 'show', 'acct']))",
                ],
                token,
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(3):  # warm the page cache and the server
            for argv, expect in commands.values():
                time_command(argv, env, cwd, expect)
        noise = c.MachineLoad()
        deadline = time.monotonic() + 600
        for _ in range(runs):
            for name, (argv, expect) in commands.items():
                times[name].append(time_command(argv, env, cwd, expect))
            if time.monotonic() > deadline:
                raise c.BenchError("show benchmark took over 10 minutes")
        rt = []
        for _ in range(max(runs, 200)):
            t0 = time.perf_counter()
            reply = server.request(c.show_request("acct"))
            rt.append(time.perf_counter() - t0)
            assert reply.startswith(b"access_token:")
        c.say(noise.line())
    base = c.median(times["python -c pass"])
    c.say(f"{runs} runs of each, alternating; medians (min .. p90):")
    for name, values in times.items():
        c.say(
            f"  {c.ms(c.median(values)):>10}  ({c.ms(min(values))} .. "
            f"{c.ms(c.percentile(values, 90))})  {c.median(values) / base:5.2f}x  {name}"
        )
    c.say(f"  {c.ms(c.median(rt)):>10}  socket round trip alone (showtoken, from this process)")
    show_time = c.median(times[show])
    ratio = show_time / base
    over = f", {ratio / TARGET - 1:.0%} over" if ratio > TARGET else ""
    c.result(
        "show",
        f"median {c.ms(show_time)} vs python -c pass {c.ms(base)} = {ratio:.2f}x "
        f"(target <= {TARGET}x): {c.verdict(ratio <= TARGET)}{over}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
