#!/usr/bin/env python3
"""Run every benchmark, one after another, and summarise their figures.

    python benchmarks/run_all.py            # the targets' conditions (about 15 minutes)
    python benchmarks/run_all.py --quick    # a smoke run; figures NOT under those conditions

Each script prints its figure last (a `RESULT name: ...` line); they are collected into a
summary at the end. Benchmarks report, they do not fail on a missed target: the exit status
is 1 only if a script could not run. Before each script the machine is given up to
--quiet-wait seconds to calm down (others' processes move every figure), and how busy it
was is printed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import common as c  # noqa: E402

SCRIPTS = [
    ("show", "bench_show.py"),
    ("imports", "bench_imports.py"),
    ("throughput", "bench_throughput.py"),
    ("stuck", "bench_stuck.py"),
    ("idle", "bench_idle.py"),
    ("memory", "bench_memory.py"),
    ("startup", "bench_startup.py"),
    ("refresh", "bench_refresh.py"),
]
TIMEOUT = 30 * 60  # per script


def run_script(path: Path, args: list[str]) -> tuple[int, str | None]:
    """Run one script, echoing its output; (exit status, its RESULT line or None)."""
    proc = subprocess.Popen(
        [sys.executable, str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    last = None
    deadline = time.monotonic() + TIMEOUT
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            sys.stdout.write("  " + line)
            sys.stdout.flush()
            if line.startswith("RESULT "):
                last = line.strip()
            if time.monotonic() > deadline:
                raise TimeoutError
        return proc.wait(timeout=60), last
    except (TimeoutError, subprocess.TimeoutExpired, KeyboardInterrupt):
        proc.send_signal(signal.SIGTERM)  # the script shuts its servers down on SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return -1, last


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short smoke run (not the targets)")
    ap.add_argument("--only", nargs="*", help="run only these (show, imports, throughput, ...)")
    ap.add_argument("--quiet-wait", type=float, default=60.0, help="0: don't wait for quiet")
    args = ap.parse_args()
    import pizauth

    started = datetime.datetime.now().astimezone()
    c.say(f"pizauth benchmarks, {started:%Y-%m-%d %H:%M %Z}")
    c.say(c.machine_line())
    c.say(
        f"interpreter {sys.executable}; pizauth {pizauth.__version__} from "
        f"{os.path.dirname(pizauth.__file__)}"
    )
    c.warn_if_editable()
    if args.quick:
        c.say(
            "QUICK RUN: short durations and counts; the figures are NOT under the targets' "
            "conditions and say nothing about meeting them."
        )
    results: list[tuple[str, str]] = []
    failed = []
    for name, script in SCRIPTS:
        if args.only and name not in args.only:
            continue
        c.say(f"\n== {name} ({script})")
        if args.quiet_wait > 0:
            others = c.wait_quiet(args.quiet_wait)
            c.say(f"  (before start, other processes used {others:.2f} of {c.NPROC} cores)")
        t0 = time.monotonic()
        code, last = run_script(HERE / script, ["--quick"] if args.quick else [])
        c.say(f"  ({name}: {time.monotonic() - t0:.0f} s, exit {code})")
        if code != 0 or last is None:
            failed.append(name)
            results.append((name, f"FAILED TO RUN (exit {code})"))
        else:
            results.append((name, last.split(":", 1)[1].strip()))
    c.say(
        f"\n== summary ({'QUICK, not the targets conditions' if args.quick else 'full'}; "
        f"{(datetime.datetime.now().astimezone() - started).total_seconds() / 60:.1f} min)"
    )
    for name, text in results:
        c.say(f"{name:>10}: {text}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
