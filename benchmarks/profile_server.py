#!/usr/bin/env python3
"""Where the time goes: a sampling profile of the server's processes under the throughput
load (py-spy, optional), and cProfile of one `pizauth show` client process.

Not a row of the table and not run by run_all.py: this is the tool for explaining a missed
target. py-spy is not a dependency; install it where you like (`pip install py-spy`) and it
is found on PATH, beside this interpreter, or with --py-spy PATH. Without it only the client
profile is made.
"""

from __future__ import annotations

import io
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

import common as c


def find_py_spy(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def summarise(raw: Path, top: int) -> list[str]:
    """Collapsed stacks ("f1;f2;...;leaf N") -> the top functions, self and inclusive."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    out = [f"    {total} samples; by own time:"]
    out += [f"      {100 * n / total:5.1f}%  {f}" for f, n in own.most_common(top)]
    out.append("    by inclusive time:")
    out += [f"      {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return out


def profile_client(server: c.Server, top: int) -> None:
    """cProfile of a whole `pizauth show` (the console script), as a mail client runs it."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "show.prof"
        subprocess.run(
            [sys.executable, "-m", "cProfile", "-o", str(out), c.PIZAUTH, "show", "acct0"],
            env=server.env,
            cwd=server.tmp,  # not the checkout: import pizauth from the installed package
            check=True,
            capture_output=True,
        )
        text = io.StringIO()
        stats = pstats.Stats(str(out), stream=text)
        stats.sort_stats("cumulative").print_stats(top)
    c.say("cProfile of `pizauth show` (cumulative; after interpreter start-up):")
    for line in text.getvalue().splitlines():
        if line.strip():
            c.say("  " + line)


def main() -> int:
    ap = c.parser(__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    ap.add_argument("--py-spy", dest="py_spy", default=None)
    ap.add_argument("--keep", default=None, help="directory to keep py-spy's raw output in")
    args = ap.parse_args()
    if args.quick:
        args.seconds = 3.0
    c.say(c.machine_line())
    names = [f"acct{i}" for i in range(10)]
    py_spy = find_py_spy(args.py_spy)
    with (
        c.Provider([c.Client(c.CLIENT_ID, c.CLIENT_SECRET)]) as provider,
        c.Server(provider, names) as server,
    ):
        server.start()
        server.authorise_all()
        profile_client(server, args.top)
        if py_spy is None:
            c.say("py-spy not found: no server profile (pip install py-spy, or --py-spy PATH)")
            c.result("profile", "client profile only (py-spy not installed)")
            return 0
        pids = server.pids()
        keep = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="pizauth-prof-"))
        keep.mkdir(parents=True, exist_ok=True)
        result: dict[str, c.LoadResult] = {}

        def load() -> None:
            result["r"] = c.run_load(server.sock, names, args.clients, 1, args.seconds + 3)

        loader = threading.Thread(target=load)
        loader.start()
        spies = {}
        try:
            import time

            time.sleep(2.0)  # the load generator's start-up
            for name in ("command", "parent"):
                raw = keep / f"{name}.txt"
                spies[name] = (
                    subprocess.Popen(
                        [
                            py_spy,
                            "record",
                            "--pid",
                            str(pids[name]),
                            "--duration",
                            str(int(args.seconds)),
                            "--rate",
                            str(args.rate),
                            "--format",
                            "raw",
                            "--nonblocking",
                            "--gil",
                            "--output",
                            str(raw),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    ),
                    raw,
                )
            for name, (proc, raw) in spies.items():
                _, err = proc.communicate(timeout=args.seconds + 30)
                if proc.returncode != 0 or not raw.exists():
                    c.say(f"py-spy on {name} failed: {err.decode(errors='replace')[-400:]}")
                    continue
                c.say(
                    f"py-spy --gil (samples of the thread holding the GIL, i.e. where the "
                    f"Python CPU time goes), pizauth: {name} (pid {pids[name]}) under load:"
                )
                for line in summarise(raw, args.top):
                    c.say(line)
        finally:
            for proc, _ in spies.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            loader.join(timeout=args.seconds + 60)
        r = result.get("r")
        if r is not None:
            c.say(f"load while profiling (perturbed by py-spy): {r.line()}")
        c.say(f"raw profiles kept in {keep}" if args.keep else "")
        if not args.keep:
            shutil.rmtree(keep, ignore_errors=True)
    c.result("profile", f"server profiled with {os.path.basename(py_spy)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
