"""Where a stopped run's state is and the distgru command that continues it (train, seeds, tune)."""

from __future__ import annotations

from pathlib import Path

from distgru.training.rundir import RunDir
from distgru.training.state import STATE_FILE, TrainState

RESUME = {"train": "distgru train --resume {run}", "seeds": "distgru train --resume {run}",
          "tune": "distgru tune --resume {run}"}


def resume_command(kind: str, run: RunDir) -> str:
    return RESUME[kind].format(run=run)


def last_checkpoint_epoch(run: RunDir) -> int | None:
    """Epochs completed in the newest Ray Train checkpoint of the run directory (None without one)."""
    states = sorted(run.path.glob(f"checkpoint_*/{STATE_FILE}"))
    for path in reversed(states):
        try:
            return TrainState.load(path.parent).epoch
        except Exception:  # a checkpoint being copied when the run stopped: the one before it counts
            continue
    return None


def where(run: RunDir, kind: str) -> str:
    if kind != "train":
        return f"state in {run}"
    epoch = last_checkpoint_epoch(run)
    return f"state in {run} ({'no epoch completed yet' if epoch is None else f'last checkpoint after epoch {epoch}'})"


def mark_lost(run_dir: str | Path, kind: str, driver: int) -> str | None:
    """For the watchdog, once ``driver`` is gone: the message for a run it left ``running``, now ``failed``."""
    run = RunDir(run_dir)
    status = run.read_status()
    if not status or status["state"] != "running" or status.get("pid") != driver:
        return None
    resume = resume_command(kind, run)
    why = "the distgru process ended inside the run (killed, or its Ray runtime died, which ends it)"
    run.write_status("failed", kind=kind, resume=resume, message=why)
    return f"{why}; {where(run, kind)}; resume with: {resume}"
