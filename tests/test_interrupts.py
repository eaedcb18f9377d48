"""Runs stopped as users and the world stop them, through real processes and signals: Ctrl-C on ``distgru train``
resumes to the same metrics as an uninterrupted run, Ctrl-C on ``--seeds`` never prints a table, Ctrl-C on ``distgru
tune`` leaves its trials so far in results.csv, SIGTERM stops a run as Ctrl-C does, a Ray runtime that dies under a
run is named, and a finished run is not resumed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from distgru.cli import main
from distgru.training.rundir import RunDir, read_result
from tests.ray_fixtures import ray_runtime  # noqa: F401
from tests.test_train_cli import TINY_RUN

REPO = Path(__file__).resolve().parents[1]
RUN = {**TINY_RUN, "name": "stop", "train": {**TINY_RUN["train"], "n_epochs": 4, "deterministic": True}}
METRICS = ("IC", "ICIR", "RankIC", "RankICIR")


def foreground_signals() -> None:
    # A shell starts background jobs with SIGINT ignored, and children inherit that: give the command the
    # default, as a terminal's foreground job has it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def config(tmp_path: Path, run: dict = RUN) -> Path:
    path = tmp_path / "stop.yaml"
    path.write_text(yaml.safe_dump({**run, "data": {**run["data"], "cache_dir": str(tmp_path / "cache")}}))
    return path


def start(*args: str, cwd: Path) -> subprocess.Popen:
    # A new session: the signal goes to the command alone, as a terminal's Ctrl-C goes to its foreground job.
    return subprocess.Popen([sys.executable, "-m", "distgru", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            preexec_fn=foreground_signals)


def wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"exited early ({proc.returncode}): {proc.communicate()}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the command and the Ray it started
            pytest.fail(f"timed out after {timeout} s: {proc.communicate()}")
        time.sleep(0.5)


def ctrl_c_once_a_trial_runs(*args: str, runs: Path) -> tuple[Path, str, str]:
    """Start ``distgru ARGS --output runs`` (trials under Tune), Ctrl-C it a few seconds into its first trial;
    returns its experiment directory, stdout and stderr once it has exited as interrupted."""
    proc = start(*args, "--output", str(runs), cwd=runs.parent)
    wait_for(lambda: any(runs.glob("stop-*/trial_*/progress.csv")), 240, proc)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    (exp,) = runs.glob("stop-*")
    assert proc.returncode == 130, (out[-2000:], err[-2000:])
    return exp, out, err


def epochs_done(runs: Path) -> int:
    rows = [line for p in runs.glob("*/metrics.jsonl") for line in p.read_text().splitlines() if line.strip()]
    return len(rows)


@pytest.mark.ray
def test_ctrl_c_stops_train_and_resume_ends_as_an_uninterrupted_run(ray_runtime, tmp_path) -> None:  # noqa: F811
    cfg = config(tmp_path)
    assert main(["train", str(cfg), "--output", str(tmp_path / "clean")]) == 0  # the reference, in this process
    (clean,) = (tmp_path / "clean").glob("stop-*")

    runs = tmp_path / "runs"
    proc = start("train", str(cfg), "--output", str(runs), cwd=tmp_path)
    wait_for(lambda: epochs_done(runs) >= 2, 240, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    (run_dir,) = runs.glob("stop-*")
    assert proc.returncode == 130, err
    assert f"resume with: distgru train --resume {run_dir}" in err and "last checkpoint after epoch" in err
    status = RunDir(run_dir).read_status()
    assert status["state"] == "interrupted" and status["resume"] == f"distgru train --resume {run_dir}"
    assert not (run_dir / "result.json").exists() and not (run_dir / "predictions.parquet").exists()
    assert "segment" not in out  # no metric table of a partial run

    proc = start("train", "--resume", str(run_dir), cwd=tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert RunDir(run_dir).read_status()["state"] == "finished"
    resumed, reference = read_result(run_dir), read_result(clean)
    assert (resumed.best_epoch, resumed.epochs) == (reference.best_epoch, reference.epochs)
    for seg in ("valid", "test"):
        for key in METRICS:
            assert getattr(resumed, seg)[key] == getattr(reference, seg)[key], (seg, key)

    proc = start("train", "--resume", str(run_dir), cwd=tmp_path)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "finished already" in err


@pytest.mark.ray
def test_ctrl_c_on_seeds_prints_no_table_and_resume_finishes_them(tmp_path) -> None:
    runs = tmp_path / "runs"
    # ~0.1 s an epoch here: 30 epochs ended within the helper's 3 s, so its Ctrl-C landed after the run and
    # there was nothing to resume. 200 (~20 s) keep both seeds training when it lands, and resume in under a minute.
    seeds = {**RUN, "train": {**RUN["train"], "n_epochs": 200, "early_stop": 200}}
    exp, out, err = ctrl_c_once_a_trial_runs("train", str(config(tmp_path, seeds)), "--seeds", "0,1", runs=runs)
    assert f"resume with: distgru train --resume {exp}" in err
    assert "mean ± std" not in out and "seeds finished" not in out and not (exp / "seeds.csv").exists()
    assert "epoch   1/200" in out  # per-trial epoch lines while it ran
    status = json.loads((exp / "status.json").read_text())
    assert status["state"] == "interrupted" and status["kind"] == "seeds"

    proc = start("train", "--resume", str(exp), cwd=tmp_path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert "2 of 2 seeds finished" in out and (exp / "seeds.csv").is_file()
    assert json.loads((exp / "status.json").read_text())["state"] == "finished"


@pytest.mark.ray
def test_sigterm_stops_train_as_ctrl_c_does(tmp_path) -> None:
    runs = tmp_path / "runs"
    long = {**RUN, "train": {**RUN["train"], "n_epochs": 200, "early_stop": 200}}  # mid-training when it lands
    proc = start("train", str(config(tmp_path, long)), "--output", str(runs), cwd=tmp_path)
    wait_for(lambda: epochs_done(runs) >= 1, 240, proc)
    proc.send_signal(signal.SIGTERM)  # as `kill PID` or a batch scheduler sends it
    _, err = proc.communicate(timeout=120)
    (run_dir,) = runs.glob("stop-*")
    assert proc.returncode == 143, err[-3000:]
    assert "interrupted (stopped by SIGTERM)" in err and f"resume with: distgru train --resume {run_dir}" in err
    status = RunDir(run_dir).read_status()
    assert status["state"] == "interrupted" and status["message"] == "stopped by SIGTERM"
    deadline = time.monotonic() + 30  # and none of the Ray processes it started outlives it
    while (left := subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True).stdout.split()):
        assert time.monotonic() < deadline, f"left running: {left}"
        time.sleep(0.5)


@pytest.mark.ray
def test_ctrl_c_on_tune_writes_the_trials_so_far(tmp_path) -> None:
    runs = tmp_path / "runs"
    # far more epochs than the seconds it runs: whatever the machine's speed, Ctrl-C lands inside the first trial
    search = {**RUN, "train": {**RUN["train"], "n_epochs": 1000, "early_stop": 1000},
              "tune": {"space": {"train.lr": {"grid": [1e-3, 3e-3]}}, "num_samples": 1, "max_concurrent_trials": 1,
                       "scheduler": {"kind": "fifo"}, "score_test": False}}
    exp, out, err = ctrl_c_once_a_trial_runs("tune", str(config(tmp_path, search)), runs=runs)
    assert f"resume with: distgru tune --resume {exp}" in err
    # One trial at a time: the first was stopped mid-run; the second exists once Tune created it, and has not run.
    table = pd.read_csv(exp / "results.csv")
    assert len(table) in (1, 2) and (table["status"] == "UNFINISHED").all(), table
    assert table["epochs"].iloc[0] < 1000 and table["epochs"].iloc[1:].eq(0).all()
    assert out.count("UNFINISHED") == len(table)  # the same table on the terminal, above the resume command
    assert not (exp / "best_config.yaml").exists() and not (exp / "tune_result.json").exists()
    assert json.loads((exp / "status.json").read_text())["state"] == "interrupted"


@pytest.mark.ray
def test_a_ray_runtime_killed_under_the_run_is_named(tmp_path) -> None:
    runs = tmp_path / "runs"
    proc = start("train", str(config(tmp_path)), "--output", str(runs), cwd=tmp_path)
    wait_for(lambda: epochs_done(runs) >= 1, 240, proc)
    raylets = [int(p) for p in subprocess.run(["pgrep", "-s", str(os.getsid(proc.pid)), "-f", "raylet/raylet"],
                                              capture_output=True, text=True).stdout.split()]
    assert raylets
    for pid in raylets:
        os.kill(pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=180)
    (run_dir,) = runs.glob("stop-*")
    assert proc.returncode == 1, err[-3000:]
    # Said by distgru when the exception reaches it, or by its watchdog when Ray ended the process first.
    assert "the Ray runtime stopped under the run" in err or "its Ray runtime died" in err, err[-3000:]
    assert f"resume with: distgru train --resume {run_dir}" in err
    assert RunDir(run_dir).read_status()["state"] == "failed"
