"""What every long command does when it is stopped: one set of rules for train, seeds and tune.

    with lifecycle(run, "train"):       # status.json: running → finished | interrupted | failed
        ...

- The first Ctrl-C stops the run: its state on disk is what the last completed epoch (or trial checkpoint) left,
  status.json says ``interrupted``, and the terminal says where the state is and the distgru command that
  resumes it. A second Ctrl-C exits at once. SIGTERM (``kill PID``, a batch scheduler) is said and recorded the
  same way (Ray's handler in the driver turns it into ``SystemExit``), then the process exits at once with 143.
- A worker group Ray Train gave up on (``WorkerGroupFailed``: more failures than ``resources.max_failures``)
  is said in one line naming that setting.
- Any other error marks the run ``failed`` with the same pointers; an error of the Ray runtime itself (a node or
  the raylet gone) is said in one line instead of a traceback.
- Nothing downstream (scoring, backtest, tables, best config) runs after either: ``RunStopped`` ends the command
  with exit code 130 (interrupted) or 1 (failed).
- The terminal is told before status.json changes: a driver whose raylet died may be ended by Ray between the two
  steps, and the watchdog then speaks only for a run that still reads ``running``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from distgru.training import ray_watchdog
from distgru.training.resume import resume_command, where
from distgru.training.rundir import RunDir


class RunStopped(Exception):
    """The command ends early; ``exit_code`` 130 for an interruption, 1 for a failure. The message was printed
    when it was raised."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RunInterrupted(Exception):
    """Training ended without finishing (a stop request reached it, or a scheduler's trials were paused)."""


class WorkerGroupFailed(RuntimeError):
    """Ray Train gave the worker group up: it failed more often than ``resources.max_failures`` allows."""


def _say(kind: str, message: str) -> None:
    # Said at once: leaving ray_session next may not return (Ray ends a driver whose raylet is gone).
    print(f"distgru {kind}: {message}", file=sys.stderr, flush=True)


def _stop(kind: str, message: str, exit_code: int) -> RunStopped:
    _say(kind, message)
    return RunStopped(message, exit_code)


def _is_ray_runtime_error(error: BaseException) -> bool:
    return type(error).__module__.split(".")[0] == "ray"


def _exit_now(signum: int, frame: Any) -> None:
    os._exit(130)


def _end_process(code: int) -> None:
    # After SIGTERM, Ray's handler has already stopped the local Ray's processes; leaving through ray.shutdown then
    # sometimes aborts (SIGABRT) instead of exiting. The watchdog ends whatever is left.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@contextmanager
def lifecycle(run: RunDir, kind: str, **info: Any) -> Iterator[None]:
    """Keep ``run``'s status.json current while the block runs (see the module docstring)."""
    resume = resume_command(kind, run)
    run.write_status("running", kind=kind, resume=resume, pid=os.getpid(), **info)
    ray_watchdog.note_run(run.path, kind)
    try:
        yield
    except (KeyboardInterrupt, RunInterrupted, SystemExit) as e:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, _exit_now)  # a second Ctrl-C while Ray shuts down exits at once
        terminated = isinstance(e, SystemExit)
        why = "stopped by SIGTERM" if terminated else str(e) or "stopped by Ctrl-C"
        stop = _stop(kind, f"interrupted ({why}); {where(run, kind)}; resume with: {resume}", 130)
        run.write_status("interrupted", kind=kind, resume=resume, message=why, **info)
        if terminated:
            _end_process(128 + signal.SIGTERM)
        raise stop from None
    except Exception as e:
        message = f"{type(e).__name__}: {e}".strip().splitlines()[0]
        stop = None
        if isinstance(e, WorkerGroupFailed):  # its message names the cause and resources.max_failures
            stop = _stop(kind, f"failed: {e}; {where(run, kind)}; resume with: {resume}", 1)
        elif _is_ray_runtime_error(e):
            stop = _stop(kind, f"the Ray runtime stopped under the run ({message}); {where(run, kind)}; once Ray is "
                               f"back, resume with: {resume}", 1)
        else:
            _say(kind, f"failed ({message}); {where(run, kind)}; after fixing the cause, resume with: {resume}")
        run.write_status("failed", kind=kind, resume=resume, message=message, **info)
        if stop is None:
            raise
        raise stop from None
    finally:
        ray_watchdog.forget_run()
    run.write_status("finished", kind=kind, **info)
