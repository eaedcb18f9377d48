"""Ends a local Ray instance whose driver died without shutting it down (SIGKILL, OOM killer, a lost terminal).

Ray's agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) ignore SIGTERM and outlive a killed driver,
reparented to init. ``ray_session`` starts this watchdog in its own session when it starts a local Ray:

    python -m distgru.training.ray_watchdog DRIVER_PID

Every second it records the driver's process tree (gcs, raylet, dashboard, agents, workers); once the driver is
gone it SIGKILLs every recorded process that still exists (same pid and start time, so a reused pid is never hit),
then exits. After a normal ``ray.shutdown`` there is nothing left to kill.

A driver that dies inside a run cannot say so itself: Ray ends the driver process at once when its raylet dies,
and nothing runs after SIGKILL. The run's lifecycle leaves a note (``note_run``); if the driver is gone while the
noted run's status.json still says ``running``, the watchdog marks it ``failed`` and prints, on the terminal the
driver had, where the state is and the command that resumes it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

POLL_S = 1.0


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat); None when it does not exist or has
    exited (a zombie waiting for its parent to collect it has stopped running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return out


def tree(root: int) -> dict[int, int]:
    """pid → start time of ``root``'s descendants (not ``root`` itself)."""
    found: dict[int, int] = {os.getpid(): 0}  # never this watchdog, a child of the driver too
    stack = children(root)
    while stack:
        pid = stack.pop()
        started = start_time(pid)
        if started is not None and pid not in found:
            found[pid] = started
            stack.extend(children(pid))
    del found[os.getpid()]
    return found


def watch(driver: int, poll_s: float = POLL_S) -> int:
    """Block until ``driver`` exits, then kill what is left of its tree; returns how many were killed."""
    driver_start = start_time(driver)
    seen: dict[int, int] = {}
    while driver_start is not None and start_time(driver) == driver_start:
        seen.update(tree(driver))
        time.sleep(poll_s)
    killed = 0
    for pid, started in seen.items():
        if start_time(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


def note_path(driver: int) -> Path:
    return Path(tempfile.gettempdir()) / f"distgru-run-{driver}.json"


def note_run(run_dir: str | Path, kind: str) -> None:
    """Tell this process's watchdog (if any) which run it is driving."""
    note_path(os.getpid()).write_text(json.dumps({"run": str(run_dir), "kind": kind}))


def forget_run() -> None:
    note_path(os.getpid()).unlink(missing_ok=True)


def report_lost_run(driver: int) -> None:
    """The driver died: a run it was driving that still reads ``running`` becomes ``failed``, said on stderr."""
    note = note_path(driver)
    if not note.is_file():
        return
    info = json.loads(note.read_text())
    note.unlink(missing_ok=True)
    from distgru.training.resume import mark_lost

    message = mark_lost(Path(info["run"]), info["kind"], driver)
    if message:
        print(f"distgru: {message}", file=sys.stderr, flush=True)


def spawn(driver: int) -> None:
    """Start the watchdog for ``driver`` in a new session, so a signal to the driver's group does not reach it;
    it shares the driver's stderr to say what happened to a run the driver could not finish."""
    import subprocess

    subprocess.Popen([sys.executable, "-m", "distgru.training.ray_watchdog", str(driver)], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    if not Path("/proc/self/stat").exists():  # not Linux: nothing to watch with
        sys.exit(0)
    driver_pid = int(sys.argv[1])
    watch(driver_pid)
    report_lost_run(driver_pid)
