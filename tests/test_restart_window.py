"""A child makes itself non-dumpable before it imports anything of pizauth.

From exec until PR_SET_DUMPABLE 0, a process of the same uid could ptrace it;
the children's prologue shrinks that to the interpreter's own start-up.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pizauth.process import CHILD_PROLOGUE

PROBE = """
import ctypes, sys
PR_GET_DUMPABLE = 3
dumpable = ctypes.CDLL(None).prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("pizauth", "requests", "ssl"))
print(dumpable, loaded, sys.argv[1:], __name__)
"""


def test_prologue_makes_the_child_non_dumpable_before_any_import(tmp_path: Path) -> None:
    (tmp_path / "probe_child.py").write_text(PROBE)
    result = subprocess.run(
        [sys.executable, "-c", CHILD_PROLOGUE, "probe_child", "--channel", "5"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(tmp_path)},
    )
    # Not dumpable, nothing of pizauth or of the network stack loaded yet, the
    # module's own arguments intact, and it runs as __main__ (as with -m).
    assert result.stdout.split("\n")[0] == "0 [] ['--channel', '5'] __main__"
