"""How a run's lifecycle ends, in-process (the same endings through real processes and signals are in
tests/test_interrupts.py): each way out gives its state, exit code and resume command, and the terminal hears it
before status.json changes, because Ray may end a driver whose raylet died between the two."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from ray.exceptions import RaySystemError

from distgru.training import lifecycle as lifecycle_module
from distgru.training import ray_watchdog
from distgru.training.lifecycle import RunInterrupted, RunStopped, WorkerGroupFailed, lifecycle
from distgru.training.rundir import RunDir

RESUME = "resume with: distgru train --resume {run}"


class SaidFirst(RunDir):
    """A run directory that records what stderr held each time its status changed."""

    def __init__(self, path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        super().__init__(path)
        object.__setattr__(self, "said", [])
        object.__setattr__(self, "capsys", capsys)

    def write_status(self, state: str, **kw) -> Path:
        err = self.capsys.readouterr().err
        sys.stderr.write(err)  # put it back for the test's own read
        self.said.append((state, err))
        return super().write_status(state, **kw)


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    previous = signal.getsignal(signal.SIGINT)
    yield SaidFirst(tmp_path, capsys)
    signal.signal(signal.SIGINT, previous)  # the lifecycle arms "a second Ctrl-C exits at once"


@pytest.mark.parametrize(("raised", "state", "code", "words"), [
    (KeyboardInterrupt(), "interrupted", 130, "interrupted (stopped by Ctrl-C)"),
    (RunInterrupted("training stopped after epoch 3"), "interrupted", 130,
     "interrupted (training stopped after epoch 3)"),
    (WorkerGroupFailed("3 worker failures, more than resources.max_failures=2"), "failed", 1,
     "failed: 3 worker failures, more than resources.max_failures=2"),
    (RaySystemError("raylet gone"), "failed", 1, "the Ray runtime stopped under the run (RaySystemError"),
])
def test_each_ending_is_said_before_status_json_changes(run: SaidFirst, capsys, raised: BaseException,
                                                       state: str, code: int, words: str) -> None:
    with pytest.raises(RunStopped) as stopped, lifecycle(run, "train"):
        assert ray_watchdog.note_path(os.getpid()).is_file()
        raise raised
    assert stopped.value.exit_code == code
    err = capsys.readouterr().err
    assert words in err and RESUME.format(run=run) in err, err
    assert [s for s, _ in run.said] == ["running", state]
    assert words in run.said[1][1]  # already on the terminal when status.json changed
    assert run.read_status()["state"] == state and run.read_status()["resume"] == f"distgru train --resume {run}"
    assert not ray_watchdog.note_path(os.getpid()).exists()


class Ended(BaseException):
    pass


def test_sigterm_is_said_recorded_then_ends_the_process(run: SaidFirst, capsys, monkeypatch) -> None:
    def end_process(code: int) -> None:
        raise Ended(code)

    monkeypatch.setattr(lifecycle_module, "_end_process", end_process)
    with pytest.raises(Ended) as ended, lifecycle(run, "train"):
        raise SystemExit(1)  # what Ray's SIGTERM handler in the driver raises
    assert ended.value.args == (143,)
    assert [s for s, _ in run.said] == ["running", "interrupted"]
    assert "interrupted (stopped by SIGTERM)" in run.said[1][1] and RESUME.format(run=run) in run.said[1][1]
    assert run.read_status()["message"] == "stopped by SIGTERM"


def test_any_other_error_is_said_first_and_propagates(run: SaidFirst, capsys) -> None:
    with pytest.raises(ValueError, match="bad batch"), lifecycle(run, "train"):
        raise ValueError("bad batch")
    assert [s for s, _ in run.said] == ["running", "failed"]
    assert "failed (ValueError: bad batch)" in run.said[1][1] and "after fixing the cause" in run.said[1][1]
    assert run.read_status()["message"] == "ValueError: bad batch"


def test_a_block_that_ends_is_finished(run: SaidFirst, capsys) -> None:
    with lifecycle(run, "train"):
        pass
    assert [s for s, _ in run.said] == ["running", "finished"] and capsys.readouterr().err == ""
