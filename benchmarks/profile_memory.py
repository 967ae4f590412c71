#!/usr/bin/env python3
"""Where the memory goes: the RSS each top-level package adds to each server process.

For each process the modules it imports are listed with `-X importtime` (in the order they
finish, leaves first); a fresh interpreter then imports them one by one in that order and
reads its VmRSS after each, so every increase is charged to the package of the module just
imported. Not a row of the table and not run by run_all.py: the tool for explaining the
memory figure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import common as c

CONFIG = """account "a" {
  auth_uri = "http://127.0.0.1:1/authorize";
  token_uri = "http://127.0.0.1:1/token";
  client_id = "x";
}
"""
# What each process imports; the parent (the `pizauth server` process: CLI, start-up, then
# the parent proper) also parses its configuration, which imports pyparsing lazily.
ROLES = {
    "parent": "import pizauth.cli, pizauth.server, pizauth.priv.parent, setproctitle, "
    "pizauth.config; pizauth.config.load({path!r})",
    "command": "import pizauth.cmd.child, setproctitle",
    "network": "import pizauth.net.child, setproctitle",
}

MEASURE = r"""
import importlib, json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
start = rss()
out = []
for name in json.loads(sys.argv[1]):
    before = rss()
    try:
        importlib.import_module(name)
    except Exception:
        continue
    out.append((name, rss() - before))
before = rss()
exec(sys.argv[2])  # the role's own code (parsing the configuration), now that all is imported
out.append(("(running: " + sys.argv[2][:40] + ")", rss() - before))
print(json.dumps({"start": start, "end": rss(), "steps": out}))
"""


def import_order(code: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, cwd="/"
    )
    if proc.returncode != 0:
        raise c.BenchError(proc.stderr[-500:])
    names = []
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "imported package" not in line:
            names.append(line.split("|", 2)[2].strip())
    return names


def show_role(role: str, code: str, top: int) -> None:
    names = import_order(code)
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(names), code],
        capture_output=True,
        text=True,
        cwd="/",
        check=True,
    )
    data = json.loads(proc.stdout)
    by_pkg: dict[str, int] = {}
    for name, kib in data["steps"]:
        pkg = name.split(".")[0]
        by_pkg[pkg] = by_pkg.get(pkg, 0) + kib
    ranked = sorted(by_pkg.items(), key=lambda kv: -kv[1])[:top]
    c.say(
        f"{role}: bare interpreter {c.mib(data['start'])}, after its imports "
        f"{c.mib(data['end'])} ({len(names)} modules); largest additions:"
    )
    for pkg, kib in ranked:
        c.say(f"  {c.mib(kib):>9}  {pkg}")


def main() -> int:
    ap = c.parser(__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    c.say(c.machine_line())
    tmp = tempfile.mkdtemp(prefix="pizauth-mem-")
    path = os.path.join(tmp, "pizauth.conf")
    with open(path, "w") as f:
        f.write(CONFIG)
    try:
        for role, code in ROLES.items():
            show_role(role, code.format(path=path), args.top)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    c.result("profile_memory", "RSS by package printed above")
    return 0


if __name__ == "__main__":
    sys.exit(main())
