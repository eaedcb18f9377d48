"""distgru tune: space validation (no Ray), an in-process ASHA search with its outputs and report, a 2-worker
Ray Train trial, and the trial table and resume of an experiment whose driver was killed.

The ASHA test is deterministic by construction: a grid of lr [1e-2, 3e-3, 1e-8, 1e-9] with 2 concurrent trials.
All trials start from the same weights (same train.seed), so after epoch 1 the two lr≈0 trials score exactly
their initial IC, below the two that learned. Trials 2 and 3 can only start once trial 0 or 1 has ended, i.e.
after a good trial recorded its epoch-1 result at ASHA's first rung; a later arrival below the median of the
earlier arrivals is stopped, so both near-zero-lr trials stop after one epoch whatever the timing (which of the
two learning trials reaches the rung first is timing, so the second of them may be stopped too).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
import yaml

from distgru.cli import main
from distgru.config import ConfigError, config_from_dict, load_config, to_dict
from distgru.training.rundir import PREDICTIONS_FILE
from distgru.tuning.records import trial_records
from distgru.tuning.results import (
    BEST_CONFIG,
    REPORT_FILE,
    RESULTS_CSV,
    RESULTS_PARQUET,
    SUMMARY_FILE,
    finish_experiment,
    trial_configs,
)
from distgru.tuning.runner import max_concurrent, run_experiment
from distgru.tuning.space import check_space, data_key
from tests.ray_fixtures import ray_runtime, tiny_config, tiny_panel, tiny_state  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


def _tune_cfg(tmp: str, tune: dict[str, Any], *overrides: str) -> Any:
    data = to_dict(tiny_config(tmp, *overrides))
    data["tune"] = tune
    return config_from_dict(data, need_tune=True)


def _data(cfg: Any) -> dict:
    return {data_key(cfg): (tiny_panel(), tiny_state())}


def _result(path: Path, epochs: int, *, ic: list[float] | None = None, stopped_early: bool = False) -> Any:
    """A Tune Result as trial_records reads it: its directory, reported epochs, error, parameters."""
    frame = (pd.DataFrame({"epoch": range(1, epochs + 1), "valid_ic": ic, "stopped_early": [False] * (epochs - 1)
                           + [stopped_early]}) if epochs else None)
    return SimpleNamespace(path=str(path), metrics_dataframe=frame, error=None, config={"train.lr": 1e-3})


def test_trial_table_marks_what_a_stopped_search_had_not_ended(tmp_path) -> None:
    cfg = _tune_cfg(str(tmp_path), {"space": {"train.lr": {"choice": [1e-3]}}, "metric": "valid_ic"},
                    "train.n_epochs=4")
    grid = [_result(tmp_path / "trial_a_00000", 4, ic=[0.01, 0.05, 0.03, 0.02]),        # ran all its epochs
            _result(tmp_path / "trial_a_00001", 2, ic=[0.02, 0.04], stopped_early=True),  # patience
            _result(tmp_path / "trial_a_00002", 2, ic=[0.01, 0.00]),                      # ASHA stopped it
            _result(tmp_path / "trial_a_00003", 3, ic=[0.03, 0.06, 0.07]),                # running when stopped
            _result(tmp_path / "trial_a_00004", 0)]                                       # started, no epoch yet
    params = {f"a_0000{i}": {"train.lr": 1e-3} for i in range(5)}
    # a_00000 too by the saved state, as a killed driver's lagging snapshot leaves it: its loop had ended
    records = trial_records(cfg, grid, params, trial_configs(cfg, params), frozenset({"a_00000", "a_00003",
                                                                                      "a_00004"}))
    table = pd.DataFrame([r.row for r in records]).set_index("trial_id")
    assert table["stopped_by"].tolist() == ["completed", "patience", "scheduler", "unfinished", "unfinished"]
    assert table["status"].tolist() == ["TERMINATED"] * 3 + ["UNFINISHED"] * 2
    assert table.loc["a_00003", ["best_valid_ic", "best_epoch", "epochs"]].tolist() == [0.07, 3, 3]
    assert table.loc["a_00000", "best_epoch"] == 2 and pd.isna(table.loc["a_00004", "best_valid_ic"])
    assert table.loc["a_00004", "epochs"] == 0


def test_a_search_on_best_score_keeps_the_best_epoch(tmp_path) -> None:
    # The case that stopped csi300-2010's best trial: its best epoch just before a rung, a worse one at the rung.
    cfg = _tune_cfg(str(tmp_path), {"space": {"train.lr": {"choice": [1e-3]}}, "metric": "best_score"},
                    "train.n_epochs=3")
    assert cfg.tune.resolved_mode == "max"
    result = _result(tmp_path / "trial_b_00000", 3, ic=[0.0604, 0.0745, 0.0654])
    result.metrics_dataframe["best_score"] = [0.0604, 0.0745, 0.0745]  # the loop's running best of valid_ic
    params = {"b_00000": {"train.lr": 1e-3}}
    (record,) = trial_records(cfg, [result], params, trial_configs(cfg, params))
    assert (record.row["best_best_score"], record.row["best_epoch"]) == (0.0745, 2)  # the first epoch at the best


# ---- validation: no Ray, no data -------------------------------------------------------------------------------

@pytest.mark.parametrize(("space", "needle"), [
    ({"train.lrr": {"uniform": [1e-3, 1e-2]}}, "train.lrr"),
    ({"model.hidden_size": {"choice": []}}, "tune.space.model.hidden_size: choice list is empty"),
    ({"train.clip_value": {"uniform": [5, 1]}}, "tune.space.train.clip_value: uniform low 5 is greater than high 1"),
    ({"model.hidden_size": {"randint": [64, 32]}}, "tune.space.model.hidden_size: randint low 64"),
    ({"model.dropout": {"uniform": [0.0, 1.0]}}, "model.dropout: 1.0 must be in [0, 1)"),
    ({"train.lr": {"normal": [0, 1]}}, "unknown distribution 'normal'"),
    ({"features.columns": {"uniform": [0, 1]}}, "must be choice or grid"),
    ({"resources.num_workers": {"choice": [1, 2]}}, "cannot vary resources"),
])
def test_space_errors_fail_before_any_trial(tmp_path, monkeypatch, capsys, space, needle) -> None:
    def no_data(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("data was prepared although the space is invalid")

    monkeypatch.setattr("distgru.tuning.runner.prepare_data", no_data)
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump({"tune": {"space": space}}))
    assert main(["tune", str(path), "--output", str(tmp_path)]) == 2
    assert needle in capsys.readouterr().err
    assert not list(tmp_path.glob("distgru-*")), "an experiment directory was created"


def test_pbt_needs_single_worker_trials(tmp_path) -> None:
    tune = {"space": {"train.lr": {"loguniform": [1e-4, 1e-2]}}, "scheduler": {"kind": "pbt"}}
    with pytest.raises(ConfigError, match="'pbt' needs single-worker trials"):
        check_space(_tune_cfg(str(tmp_path), tune))  # tiny_config has 2 workers
    check_space(_tune_cfg(str(tmp_path), tune, "resources.num_workers=1"))


def test_optional_searcher_and_concurrency(tmp_path) -> None:
    from distgru.tuning.runner import check_search_package

    try:
        import optuna  # noqa: F401
    except ImportError:
        cfg = _tune_cfg(str(tmp_path), {"space": {"train.lr": {"choice": [1e-3]}}, "search": "optuna"})
        with pytest.raises(ConfigError, match="needs the optuna package"):
            check_search_package(cfg)
    one = _tune_cfg(str(tmp_path), {"space": {"train.lr": {"choice": [1e-3]}}, "resources": {"gpu": 0.25}},
                    "resources.num_workers=1")
    assert max_concurrent(one, {"CPU": 16, "GPU": 2}) == 8
    two = _tune_cfg(str(tmp_path), {"space": {"train.lr": {"choice": [1e-3]}}})
    assert max_concurrent(two, {"CPU": 8}) == 2  # 1 trial process + 2 workers each
    with pytest.raises(ConfigError, match="one trial needs 3 CPUs"):
        max_concurrent(two, {"CPU": 2})



def test_local_ray_spare_cpu_is_not_filled_with_trials(tmp_path) -> None:
    # A 2-core machine: the local Ray holds 3 logical CPUs, one of them kept for Ray Data.
    one = _tune_cfg(str(tmp_path), {"space": {"train.lr": {"choice": [1e-3]}}}, "resources.num_workers=1")
    assert max_concurrent(one, {"CPU": 3}, spare_cpus=1) == 2
    assert max_concurrent(one, {"CPU": 3}) == 3  # a cluster it joined: every CPU is for trials
    two = _tune_cfg(str(tmp_path), {"space": {"train.lr": {"choice": [1e-3]}}})
    assert max_concurrent(two, {"CPU": 3}, spare_cpus=1) == 1  # one 2-worker trial still runs there
    assert max_concurrent(two, {"CPU": 7}, spare_cpus=1) == 2


# ---- Ray -------------------------------------------------------------------------------------------------------

ASHA_TUNE = {"space": {"train.lr": {"grid": [1e-2, 3e-3, 1e-8, 1e-9]}}, "metric": "valid_ic", "num_samples": 1,
             "max_concurrent_trials": 2, "resources": {"cpu": 1},
             "scheduler": {"kind": "asha", "grace_period": 1, "reduction_factor": 2, "max_t": 2}}
_RUNS: dict[str, tuple[Path, dict]] = {}
_GRIDS: dict[str, tuple[Any, Any]] = {}


def _asha_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    if "asha" not in _RUNS:
        tmp = tmp_path_factory.mktemp("asha")
        cfg = _tune_cfg(str(tmp), ASHA_TUNE, "resources.num_workers=1", "train.n_epochs=2")
        exp_dir = tmp / "exp"
        exp_dir.mkdir()
        t0 = time.perf_counter()
        grid = run_experiment(cfg, _data(cfg), exp_dir, verbose=0)
        _GRIDS["asha"] = cfg, grid
        _RUNS["asha"] = exp_dir, finish_experiment(cfg, grid, _data(cfg), exp_dir, t0=t0)
    return _RUNS["asha"]


@pytest.mark.ray
def test_asha_in_process_trials(ray_runtime, tmp_path_factory) -> None:  # noqa: F811
    exp_dir, summary = _asha_run(tmp_path_factory)
    table = pd.read_parquet(exp_dir / RESULTS_PARQUET)
    assert len(table) == 4 and (table["status"] == "TERMINATED").all()
    by_lr = table.set_index("train.lr")
    assert list(by_lr.loc[[1e-8, 1e-9], "stopped_by"]) == ["scheduler", "scheduler"]
    assert list(by_lr.loc[[1e-8, 1e-9], "epochs"]) == [1, 1]
    assert (by_lr.loc[[1e-2, 3e-3], "epochs"] == 2).any()  # the first arrival at a rung is never stopped
    assert by_lr.loc[[1e-2, 3e-3], "best_valid_ic"].min() > by_lr.loc[[1e-8, 1e-9], "best_valid_ic"].max()
    assert pd.read_csv(exp_dir / RESULTS_CSV)["trial_id"].tolist() == table["trial_id"].tolist()

    # The best trial's outputs: a config `distgru train` loads, best/ weights, TEST predictions and their IC.
    best_cfg = load_config(exp_dir / BEST_CONFIG)
    assert best_cfg.train.lr in (1e-2, 3e-3) and best_cfg.tune is None
    assert (exp_dir / "best" / "model.pt").is_file()
    preds = pd.read_parquet(exp_dir / PREDICTIONS_FILE)
    lo, hi = tiny_panel().segments["test"]
    assert preds["datetime"].min() == tiny_panel().calendar[lo] and len(preds) > 100
    saved = json.loads((exp_dir / SUMMARY_FILE).read_text())
    assert saved["best_trial"] == summary["best_trial"] and saved["test"]["IC"] > 0.1  # planted IC ≈ 0.45


@pytest.mark.ray
def test_search_with_test_scoring_off_never_scores_the_test_segment(ray_runtime, tmp_path_factory,  # noqa: F811
                                                                     monkeypatch) -> None:
    import distgru.tuning.results as results

    _, scored_summary = _asha_run(tmp_path_factory)
    cfg, grid = _GRIDS["asha"]
    blind = config_from_dict({**to_dict(cfg), "tune": {**to_dict(cfg)["tune"], "score_test": False}}, need_tune=True)
    segments: list[str] = []
    real = results.score_segment
    monkeypatch.setattr(results, "score_segment", lambda c, p, m, seg: segments.append(seg) or real(c, p, m, seg))
    out = tmp_path_factory.mktemp("blind")
    summary = finish_experiment(blind, grid, _data(cfg), out, t0=time.perf_counter())
    assert segments and set(segments) == {"valid"}  # the test segment is never scored
    assert summary["test"] is None and summary["score_test"] is False
    assert summary["best_trial"] == scored_summary["best_trial"]  # chosen on valid alone, as before
    assert "test_ic" not in pd.read_csv(out / RESULTS_CSV).columns
    assert not (out / PREDICTIONS_FILE).exists()
    assert "was not scored" in (out / REPORT_FILE).read_text()


def test_no_test_flag_turns_test_scoring_off() -> None:
    import argparse

    from distgru.commands import tune as tune_command

    parser = argparse.ArgumentParser()
    tune_command.add_arguments(parser)
    assert "tune.score_test=false" in tune_command._overrides(parser.parse_args(["cfg.yaml", "--no-test"]))
    assert not any("score_test" in o for o in tune_command._overrides(parser.parse_args(["cfg.yaml"])))


@pytest.mark.ray
def test_report_and_tensorboard(ray_runtime, tmp_path_factory) -> None:  # noqa: F811
    exp_dir, _ = _asha_run(tmp_path_factory)
    page = (exp_dir / REPORT_FILE).read_text()
    table = pd.read_parquet(exp_dir / RESULTS_PARQUET)
    for trial_id, trial_dir in zip(table["trial_id"], table["trial_dir"], strict=True):
        assert trial_id in page
        assert list(Path(trial_dir).glob("events.out.tfevents.*")), f"no TensorBoard events for trial {trial_id}"
    assert page.count("data:image/png;base64,") >= 2  # learning curves + metric by parameter
    assert "Learning curves" in page


@pytest.mark.ray
def test_two_worker_trial(ray_runtime, tmp_path) -> None:  # noqa: F811
    tune = {"space": {"train.lr": {"grid": [3e-3]}}, "num_samples": 1, "resources": {"cpu": 0.5},
            "scheduler": {"kind": "fifo"}}
    cfg = _tune_cfg(str(tmp_path), tune, "train.n_epochs=2")
    assert cfg.resources.num_workers == 2
    exp_dir = tmp_path / "exp"
    exp_dir.mkdir()
    t0 = time.perf_counter()
    grid = run_experiment(cfg, _data(cfg), exp_dir, verbose=0)
    summary = finish_experiment(cfg, grid, _data(cfg), exp_dir, t0=t0)
    hist = grid[0].metrics_dataframe
    assert hist["epoch"].tolist() == [1, 2] and hist["valid_ic"].notna().all()  # every epoch forwarded
    assert list((Path(grid[0].path) / "train").glob("checkpoint_*/state.pt"))
    assert summary["test"]["IC"] > 0.1 and (exp_dir / PREDICTIONS_FILE).is_file()


RESUME_CFG = {
    "name": "resume", "data": {"synthetic": {"n_instruments": 30, "n_days": 200}},
    "features": {"columns": ["RESI5", "KLEN", "KLOW", "STD5"]},
    "dataset": {"train": ["2020-04-01", "2020-07-31"], "valid": ["2020-08-01", "2020-09-15"],
                "test": ["2020-09-16", "2020-10-15"], "step_len": 5},
    "model": {"d_feat": 4, "hidden_size": 8, "num_layers": 1},
    "train": {"early_stop": 20, "batch_size": 256, "metric": "ic"},
    # A short trial, then a long one: the driver is killed while the long one runs, whatever the machine's speed.
    "tune": {"space": {"train.n_epochs": {"grid": [3, 20]}}, "num_samples": 1, "max_concurrent_trials": 1,
             "scheduler": {"kind": "fifo"}},
}


def _rows(path: Path) -> int:
    """Data rows of a progress.csv that Tune may be writing as it is read (a bare or half-written header: 0)."""
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
    except OSError:
        return 0
    return max(len(lines) - 1, 0)


@pytest.mark.ray
def test_resume_after_killed_driver(ray_runtime, tmp_path) -> None:  # noqa: F811
    cfg = {**RESUME_CFG, "output_dir": str(tmp_path / "out"), "data": {**RESUME_CFG["data"],
                                                                        "cache_dir": str(tmp_path / "cache")}}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # Ray's socket paths must stay under 108 bytes: pytest's tmp_path is too deep for its temp dir.
    ray_tmp = tempfile.TemporaryDirectory(prefix="dgt-")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp.name}
    env.pop("RAY_ADDRESS", None)
    finished: Path | None = None
    with ray_tmp, open(tmp_path / "driver.log", "w") as log:
        # Its own session: the driver and the local Ray it starts are killed together, as a lost head node is.
        proc = subprocess.Popen([sys.executable, "-m", "distgru.cli", "tune", str(path)], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 300  # a loaded machine takes a minute just to start this Ray
            while time.time() < deadline and proc.poll() is None:
                trials = sorted((tmp_path / "out").glob("resume-*/trial_*"))
                done = [t for t in trials if _rows(t / "progress.csv") == 3]
                running = [t for t in trials if 0 < _rows(t / "progress.csv") < 10]
                if done and running:  # the short trial ended and the long one is under way
                    finished = done[0]
                    time.sleep(1.0)
                    break
                time.sleep(0.3)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert finished is not None, (tmp_path / "driver.log").read_text()[-3000:]
    exp_dir = finished.parent
    assert not (exp_dir / RESULTS_CSV).exists(), "the driver finished before it was killed"
    before = (finished / "result.json").read_text()

    # The stopped search's trials so far, from the state Tune last saved (it may not list the long trial yet, and
    # may still call the short one running: its own loop had ended, so the table says completed); nothing runs.
    assert main(["tune", "--table", str(exp_dir)]) == 0
    so_far = pd.read_csv(exp_dir / RESULTS_CSV).set_index("trial_id")
    short = finished.name.removeprefix("trial_")
    assert so_far.loc[short, ["status", "stopped_by", "epochs"]].tolist() == ["TERMINATED", "completed", 3]
    long_trial = so_far.drop(index=short)
    assert (long_trial["status"] == "UNFINISHED").all() and (long_trial["epochs"] < 20).all()
    assert (finished / "result.json").read_text() == before

    assert main(["tune", "--resume", str(exp_dir)]) == 0  # on the test session's Ray
    table = pd.read_parquet(exp_dir / RESULTS_PARQUET)
    assert len(table) == 2 and (table["status"] == "TERMINATED").all()
    assert sorted(table["epochs"]) == [3, 20]
    assert (finished / "result.json").read_text() == before, "a finished trial was run again"
