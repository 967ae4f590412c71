#!/usr/bin/env python3
"""Row 2: the modules `pizauth show` imports cold (`-X importtime`), beyond `python -c pass`.

Runs `python -X importtime <venv>/bin/pizauth show acct` (the console script, as a mail
client runs it) against a server holding a valid token, and `python -X importtime -c pass`,
several times each. Every module the first imports and the second does not is listed with
its median self and cumulative import time, what imported it, and whether it is standard
library, pizauth's own, or third-party. Target: no third-party module on this path.
(-X importtime itself slows imports down; the times are for ranking, not absolute.)
"""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict

import common as c


def parse_importtime(stderr: str) -> list[tuple[str, int, int, int]]:
    """[(module, self us, cumulative us, depth)] in the order -X importtime prints them."""
    out = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        self_us, cum_us, name = line[len("import time:") :].split("|", 2)
        name = name.removeprefix(" ")
        depth = (len(name) - len(name.lstrip(" "))) // 2
        out.append((name.strip(), int(self_us), int(cum_us), depth))
    return out


def importers(rows: list[tuple[str, int, int, int]]) -> dict[str, str]:
    """Module -> the module that imported it (children are printed before their parent)."""
    parent: dict[str, str] = {}
    for i, (name, _, _, depth) in enumerate(rows):
        for later, _, _, d in rows[i + 1 :]:
            if d < depth:
                parent[name] = later
                break
        else:
            parent[name] = "(top level)"
    return parent


def kind(module: str) -> str:
    top = module.split(".")[0]
    if top == "pizauth":
        return "pizauth"
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return "stdlib"
    return "THIRD-PARTY"


def run(argv: list[str], env: dict[str, str]) -> list[tuple[str, int, int, int]]:
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd="/")
    if proc.returncode != 0:
        raise c.BenchError(f"{argv} failed: {proc.stderr[-500:]}")
    return parse_importtime(proc.stderr)


def main() -> int:
    ap = c.parser(__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    runs = 5 if args.quick else args.runs
    c.say(c.machine_line())
    c.quick_banner(args.quick)
    py = sys.executable
    show_rows: list[list[tuple[str, int, int, int]]] = []
    base_names: set[str] = set()
    with (
        c.Provider([c.Client(c.CLIENT_ID, c.CLIENT_SECRET)]) as provider,
        c.Server(provider, ["acct"]) as server,
    ):
        server.start()
        server.authorise("acct")
        env = server.env
        for _ in range(runs):
            base_names |= {r[0] for r in run([py, "-X", "importtime", "-c", "pass"], env)}
            show_rows.append(run([py, "-X", "importtime", c.PIZAUTH, "show", "acct"], env))
    self_us: dict[str, list[int]] = defaultdict(list)
    cum_us: dict[str, list[int]] = defaultdict(list)
    by: dict[str, str] = {}
    for rows in show_rows:
        by.update(importers(rows))
        for name, s, cu, _ in rows:
            self_us[name].append(s)
            cum_us[name].append(cu)
    extra = [name for name in self_us if name not in base_names]
    c.say(f"modules imported by `pizauth show` and not by `python -c pass` ({runs} runs):")
    c.say(f"  {'module':<28} {'kind':<12} {'self us':>8} {'cum us':>8}  imported by")
    for name in extra:
        c.say(
            f"  {name:<28} {kind(name):<12} {c.median(self_us[name]):8.0f} "
            f"{c.median(cum_us[name]):8.0f}  {by.get(name, '?')}"
        )
    total = sum(c.median(self_us[n]) for n in extra)
    kinds = defaultdict(int)
    for name in extra:
        kinds[kind(name)] += 1
    third = [n for n in extra if kind(n) == "THIRD-PARTY"]
    c.say(f"sum of self times of these modules: {total / 1000:.1f} ms (under -X importtime)")
    met = not third
    c.result(
        "imports",
        f"{len(extra)} modules beyond python -c pass: {kinds['stdlib']} stdlib, "
        f"{kinds['pizauth']} pizauth, {len(third)} third-party"
        + (f" ({', '.join(third)})" if third else "")
        + f" (target: stdlib only): {c.verdict(met)}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
