"""Shared helpers for the benchmarks: the server harness of the tests (tests/server_harness.py:
a pizauth server with real logged-in accounts against the local provider), plus /proc readings,
statistics and load.

Stdlib only (plus this checkout's tests/server_harness.py and examples/provider.py). Every
address is 127.0.0.1 or a Unix socket in a private temporary directory; every loop is bounded
in count and time; every server started here is shut down, and any process of it still alive
killed by pid, on exit, on an exception and (once parser() has been called) on
SIGTERM/SIGINT/SIGHUP.
"""

from __future__ import annotations

import argparse
import atexit
import json
import multiprocessing
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import server_harness as harness  # noqa: E402
from server_harness import (  # noqa: E402, F401 - re-exported for the scripts
    PIZAUTH,
    Client,
    Provider,
    children_of,
    http_get,
    show_request,
    sock_request,
    start_time,
    title,
    wait_for,
)

CLIENT_ID = harness.CLIENT_ID
CLIENT_SECRET = harness.CLIENT_SECRET
CLK_TCK = os.sysconf("SC_CLK_TCK")
NPROC = os.cpu_count() or 1

__all__ = ["Client", "Provider"]  # re-exported for the scripts


# -- output -----------------------------------------------------------------------------------


def say(text: str = "") -> None:
    """Print and flush at once, so run_all.py shows progress as it happens."""
    print(text, flush=True)


def verdict(met: bool) -> str:
    return "MET" if met else "MISSED"


def result(name: str, text: str) -> None:
    """The script's figure: always its last line, which run_all.py collects."""
    say(f"RESULT {name}: {text}")


def machine_line() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"machine: nproc={NPROC}, CPU {model}, Python {sys.version.split()[0]}"


def warn_if_editable() -> None:
    """An editable install (pip install -e) adds a .pth finder that every interpreter start
    imports (pathlib, re, ...), `python -c pass` included: start-up figures are then not
    those of a user's `pip install .`."""
    import site

    dirs = [*site.getsitepackages(), site.getusersitepackages()]
    for d in dirs:
        if os.path.isdir(d) and any(
            n.startswith("__editable__") and "pizauth" in n for n in os.listdir(d)
        ):
            say(
                "WARNING: pizauth is an editable install here; every interpreter start "
                "imports its .pth finder, so start-up figures differ from `pip install .`"
            )
            return


def quick_banner(quick: bool) -> None:
    if quick:
        say("QUICK RUN: shortened durations/counts; these are NOT the targets' conditions.")


# -- statistics -------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of `values`; nan if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


# -- failures ----------------------------------------------------------------------------------

# The benchmark could not be carried out (not a missed target).
BenchError = harness.HarnessError


# -- /proc ------------------------------------------------------------------------------------


_stat_fields = harness.stat_fields


def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (all threads), in clock ticks."""
    f = _stat_fields(pid)
    return int(f[11]) + int(f[12])


def cpu_split(pid: int) -> tuple[int, int]:
    """(utime, stime) of the whole process, in clock ticks."""
    f = _stat_fields(pid)
    return int(f[11]), int(f[12])


def _status_value(path: str, key: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise BenchError(f"{key} not in {path}")


def rss_kib(pid: int) -> int:
    return _status_value(f"/proc/{pid}/status", "VmRSS")


def thread_count(pid: int) -> int:
    return _status_value(f"/proc/{pid}/status", "Threads")


def ctxt_switches(pid: int) -> dict[int, tuple[int, int]]:
    """{tid: (voluntary, nonvoluntary)} for every thread of `pid`."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        path = f"/proc/{pid}/task/{tid}/status"
        try:
            out[int(tid)] = (
                _status_value(path, "voluntary_ctxt_switches"),
                _status_value(path, "nonvoluntary_ctxt_switches"),
            )
        except (OSError, BenchError):
            continue  # the thread ended while we read
    return out


# -- the server -------------------------------------------------------------------------------

_LIVE: list[Server] = []
_CLAIMED: set[int] = set()
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Make orphaned descendants (a `pizauth server` that detached) our children, so the
    daemon's pid is known without guessing and it can always be reaped and cleaned up."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise BenchError(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")


def reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _cleanup_all() -> None:
    for server in list(_LIVE):
        server.stop()


def _on_signal(signum: int, _frame: object) -> None:
    _cleanup_all()
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """Stop every server of this benchmark on exit and on SIGTERM/SIGINT/SIGHUP. Called by
    a script's main (through parser()), never on import."""
    atexit.register(_cleanup_all)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)


class Server(harness.Server):
    """The tests' server with `accounts`, in its own temporary directory.

    `start()` runs `pizauth server -d` (foreground, as the tests do); `start(daemon=True)`
    runs plain `pizauth server`, which detaches and returns once it answers.
    """

    def __init__(
        self,
        provider: Provider,
        accounts: Iterable[str],
        *,
        account_extra: str = "",
        globals_: str = "",
        https: bool = False,
    ) -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix="pizauth-bench-")), provider)
        self.accounts = list(accounts)
        self.daemon = False
        self.returned_at: float | None = None  # when a daemon-mode `pizauth server` exited
        self.shown_after_return = 0.0
        blocks = "".join(self.account_block(name, account_extra) for name in self.accounts)
        self.write_config(blocks, globals_, https=https)
        _LIVE.append(self)

    def start(self, daemon: bool = False, timeout: float = 30.0) -> float:  # type: ignore[override]
        """Start the server; returns seconds until it answers a `showtoken` request."""
        if not daemon:
            t0 = time.perf_counter()
            super().start(timeout=timeout)
            self.wait_answering(timeout)
            return time.perf_counter() - t0
        become_subreaper()
        self.daemon = True
        ready = self.tmp / "ready"
        t0 = time.perf_counter()
        with open(self.tmp / "server.log", "wb") as log:
            self.proc = subprocess.Popen(
                [PIZAUTH, "server", "-c", str(self.conf)],
                env=self.env,
                cwd=self.tmp,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        answered = self.wait_answering(timeout)
        elapsed = time.perf_counter() - t0
        if self.proc.wait(timeout) != 0:
            raise BenchError(f"pizauth server failed: {self.log()}")
        if self.returned_at is None:
            self.returned_at = time.perf_counter()
        # What `pizauth server && pizauth show` sees: a request once the command returned.
        self.request(show_request(self.accounts[0]))
        self.shown_after_return = time.perf_counter() - t0
        wait_for(ready.exists, timeout, "startup_cmd")
        if not answered:
            raise BenchError(f"server did not answer: {self.log()}")
        self._find_daemon()
        return elapsed

    def wait_answering(self, timeout: float) -> bool:
        """Poll the socket until `showtoken` gets any reply (bounded by `timeout`)."""
        deadline = time.monotonic() + timeout
        probe = show_request(self.accounts[0])
        while time.monotonic() < deadline:
            if self.proc is not None and self.returned_at is None and self.daemon:
                code = self.proc.poll()
                if code is not None:
                    self.returned_at = time.perf_counter()
                    if code != 0:
                        return False  # the invoking `pizauth server` failed
            if not self.daemon and self.proc is not None and self.proc.poll() is not None:
                return False
            try:
                if sock_request(self.sock, probe, timeout=max(deadline - time.monotonic(), 0.1)):
                    return True
            except OSError:
                pass
            time.sleep(0.002)
        return False

    def _find_daemon(self) -> None:
        """A detached daemon is found among this process's children: become_subreaper()
        made us its new parent."""
        for pid in children_of(os.getpid()):
            if title(pid) == "pizauth: parent" and pid not in _CLAIMED:
                _CLAIMED.add(pid)
                self.parent_pid = pid
                self._remember(pid)
                self.roles()
                return
        raise BenchError("cannot find the detached pizauth daemon")

    def pids(self) -> dict[str, int]:  # type: ignore[override]
        pids = self.roles()
        if set(pids) != {"parent", "command", "network"}:
            raise BenchError(f"expected three server processes, found {pids}")
        return pids

    def stop(self) -> None:
        """Shut down, kill (by pid) whatever of ours is left, reap a detached daemon (it
        became our child), remove the files."""
        if self in _LIVE:
            _LIVE.remove(self)
        if self.daemon and self.parent_pid is not None:
            parent = self.parent_pid
            try:
                sock_request(self.sock, b"shutdown:", timeout=10)
            except OSError:
                pass
            super().stop()
            wait_for(lambda: start_time(parent) is None, 10, "the daemon to exit")
            reap(parent)
        else:
            super().stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def authorise_all(self) -> dict[str, str]:
        return {name: self.authorise(name) for name in self.accounts}


# -- argument parsing -------------------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    install_cleanup()
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="short smoke run (not the targets)")
    return ap


# -- socket load, from worker processes -------------------------------------------------------


def _load_thread(
    sock_path: str,
    requests: list[bytes],
    start: float,
    end: float,
    offset: int,
    out: dict[str, Any],
) -> None:
    lat: list[float] = []
    errors = 0
    samples: list[str] = []
    i = offset
    perf = time.perf_counter
    while time.monotonic() < start:
        time.sleep(min(0.001, max(start - time.monotonic(), 0)))
    while True:
        now = time.monotonic()
        if now >= end:
            break
        payload = requests[i % len(requests)]
        i += 1
        t0 = perf()
        try:
            reply = sock_request(sock_path, payload, timeout=10)
            ok = reply.startswith(b"access_token:")
            if not ok and len(samples) < 5:
                samples.append(repr(reply[:80]))
        except OSError as e:
            ok = False
            if len(samples) < 5:
                samples.append(f"{type(e).__name__}: {e}")
        t1 = perf()
        if time.monotonic() > end:
            break  # finished after the window: not counted either way
        if ok:
            lat.append(t1 - t0)
        else:
            errors += 1
    out["lat"] = lat
    out["errors"] = errors
    out["samples"] = samples


def _load_worker(
    sock_path: str,
    requests: list[bytes],
    threads: int,
    start: float,
    end: float,
    first: int,
    queue: Any,
) -> None:
    import resource

    outs: list[dict[str, Any]] = [{} for _ in range(threads)]
    workers = [
        threading.Thread(
            target=_load_thread, args=(sock_path, requests, start, end, first + k, outs[k])
        )
        for k in range(threads)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    lat = [x for o in outs for x in o.get("lat", [])]
    errors = sum(o.get("errors", 0) for o in outs)
    samples = [s for o in outs for s in o.get("samples", [])][:5]
    use = resource.getrusage(resource.RUSAGE_SELF)
    cpu = use.ru_utime + use.ru_stime
    queue.put(json.dumps({"lat": lat, "errors": errors, "samples": samples, "cpu": cpu}))


class LoadResult:
    def __init__(self, lat: list[float], errors: int, seconds: float, samples: list[str]) -> None:
        self.lat = lat
        self.errors = errors
        self.seconds = seconds
        self.samples = samples
        self.loadgen_cpu = 0.0  # seconds of CPU the load generator used (whole life)
        self.server_cpu: dict[str, float] = {}  # seconds of CPU per server process, in window
        self.server_sys: dict[str, float] = {}  # of which in the kernel

    def cpu_line(self) -> str:
        pct = 100 / self.seconds
        parts = [
            f"{name} {pct * t:.0f}% (sys {pct * self.server_sys[name]:.0f}%)"
            for name, t in self.server_cpu.items()
        ]
        return (
            f"CPU (% of one core): server {', '.join(parts)}; load generator "
            f"~{100 * self.loadgen_cpu / self.seconds:.0f}% (incl. its start-up)"
        )

    @property
    def rate(self) -> float:
        return len(self.lat) / self.seconds

    @property
    def p50(self) -> float:
        return percentile(self.lat, 50)

    @property
    def p99(self) -> float:
        return percentile(self.lat, 99)

    def line(self) -> str:
        return (
            f"{self.rate:8.0f} replies/s  p50 {ms(self.p50)}  p99 {ms(self.p99)}  "
            f"errors {self.errors}  ({len(self.lat)} replies in {self.seconds:.1f} s)"
        )


def run_load(
    sock_path: str,
    accounts: Sequence[str],
    clients: int,
    procs: int,
    seconds: float,
    server_pids: dict[str, int] | None = None,
) -> LoadResult:
    """`clients` concurrent connections-in-a-loop spread over `procs` worker processes
    (threads inside each), each doing `showtoken` round-robin over `accounts` for
    `seconds`. Bounded: workers stop at the window's end; a worker that hangs past it
    is terminated."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    requests = [show_request(a) for a in accounts]
    per = [clients // procs + (1 if k < clients % procs else 0) for k in range(procs)]
    start = time.monotonic() + 1.5  # time for the spawned interpreters to be ready
    end = start + seconds
    workers = []
    first = 0
    for n in per:
        if n == 0:
            continue
        p = ctx.Process(
            target=_load_worker, args=(sock_path, requests, n, start, end, first, queue)
        )
        first += n
        p.start()
        workers.append(p)
    results = []
    before: dict[str, tuple[int, int]] = {}
    after: dict[str, tuple[int, int]] = {}
    try:
        if server_pids:
            time.sleep(max(start - time.monotonic(), 0))
            before = {name: cpu_split(pid) for name, pid in server_pids.items()}
            time.sleep(max(end - time.monotonic(), 0))
            after = {name: cpu_split(pid) for name, pid in server_pids.items()}
        for _ in workers:
            results.append(json.loads(queue.get(timeout=seconds + 30)))
    finally:
        for p in workers:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join()
    lat = [x for r in results for x in r["lat"]]
    out = LoadResult(
        lat,
        sum(r["errors"] for r in results),
        seconds,
        [s for r in results for s in r["samples"]][:5],
    )
    out.loadgen_cpu = sum(r["cpu"] for r in results)
    out.server_cpu = {n: (sum(after[n]) - sum(before[n])) / CLK_TCK for n in after}
    out.server_sys = {n: (after[n][1] - before[n][1]) / CLK_TCK for n in after}
    return out


class IdleClients:
    """`count` connections to the control socket that never send a byte, kept open: one the
    server closes (its read deadline) is reconnected at once, so `count` stay held.

    The first connections are opened evenly over `spread` seconds, as stuck clients would
    pile up over time; their deadlines, and so the reconnections, are then spread out too.
    With `spread=0` all are opened at once and all come back at once every read deadline:
    a thundering herd of reconnections."""

    def __init__(self, sock_path: str, count: int, spread: float = 0.0) -> None:
        self.sock_path = sock_path
        self.count = count
        self.spread = spread
        self.socks: list[socket.socket] = []
        self.reconnects = 0
        self.failures = 0
        self.eagain = 0  # connects refused at once because the listen backlog was full
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _open(self) -> socket.socket | None:
        # Non-blocking connect: on AF_UNIX a full listen backlog gives EAGAIN at once (not
        # EINPROGRESS), so retry, bounded, until the server's accept loop makes room.
        deadline = time.monotonic() + 10
        while not self._stop.is_set():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(self.sock_path)
                return s
            except BlockingIOError:
                s.close()
                self.eagain += 1
                if time.monotonic() > deadline:
                    break
                time.sleep(0.005)
            except OSError:
                s.close()
                break
        if not self._stop.is_set():  # giving up because we are stopping is no failure
            self.failures += 1
        return None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._keep, daemon=True)
        self._thread.start()

    def wait_held(self, timeout: float) -> int:
        """Wait until all `count` are open (bounded); returns how many are."""
        deadline = time.monotonic() + timeout
        while len(self.socks) < self.count and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.socks)

    def _keep(self) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        t0 = time.monotonic()
        opened = 0
        while not self._stop.is_set():
            now = time.monotonic()
            while opened < self.count and (
                self.spread <= 0 or now >= t0 + opened * self.spread / self.count
            ):
                opened += 1
                s = self._open()
                if s is not None:
                    self.socks.append(s)
                    sel.register(s, selectors.EVENT_READ)
            for key, _ in sel.select(0.01 if opened < self.count else 0.2):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if data:
                    continue  # an error reply before the close; the EOF comes next
                sel.unregister(s)
                s.close()
                self.socks.remove(s)
                new = self._open()
                if new is not None:
                    self.reconnects += 1
                    self.socks.append(new)
                    sel.register(new, selectors.EVENT_READ)
        sel.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        for s in self.socks:
            s.close()
        self.socks.clear()


# -- how busy the rest of the machine is ------------------------------------------------------


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user/nice
    return total - idle, total


def _tree_ticks(root: int) -> int:
    """CPU ticks of `root` and every live descendant, with the children they have reaped."""
    by_parent: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                by_parent.setdefault(int(_stat_fields(int(entry))[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            f = _stat_fields(pid)
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        except (OSError, IndexError, ValueError):
            pass
        todo.extend(by_parent.get(pid, []))
    return total


class MachineLoad:
    """CPU the rest of the machine (other users' processes) used while we measured: the
    benchmarks share the machine, and a busy neighbour moves every figure."""

    def __init__(self) -> None:
        self.busy0, self.total0 = _machine_ticks()
        self.ours0 = _tree_ticks(os.getpid())

    def others_cores(self) -> float:
        """Cores' worth of CPU used by processes outside this benchmark's tree."""
        busy, total = _machine_ticks()
        ours = _tree_ticks(os.getpid())
        elapsed = (total - self.total0) / NPROC
        if elapsed <= 0:
            return 0.0
        return max(busy - self.busy0 - (ours - self.ours0), 0) / elapsed

    def line(self) -> str:
        return (
            f"other processes on the machine used {self.others_cores():.2f} of {NPROC} cores "
            "meanwhile (noise)"
        )


def wait_quiet(max_wait: float, threshold: float = 0.25, window: float = 2.0) -> float:
    """Wait (at most `max_wait` s) until other processes use under `threshold` cores over a
    `window`; returns the last reading."""
    deadline = time.monotonic() + max_wait
    while True:
        probe = MachineLoad()
        time.sleep(window)
        others = probe.others_cores()
        if others < threshold or time.monotonic() + window > deadline:
            return others
