"""``distgru train`` / ``distgru predict``: flags → config, the metric table, and one real end-to-end run."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from distgru.cli import main
from distgru.commands.train import metric_table, overrides
from distgru.config import load_config
from distgru.config.presets import ALPHA158_20
from distgru.training.rundir import PREDICTIONS_FILE, RunDir, read_result
from tests.ray_fixtures import ray_runtime, sample_result  # noqa: F401


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    from distgru.commands.train import add_arguments

    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_flags_override_config_and_set() -> None:
    args = _args("cfg.yaml", "--set", "resources.num_workers=3", "--set", "train.lr=0.01", "--num-workers", "2",
                 "--gpu", "--output", "/tmp/out", "--address", "ray://head:10001")
    assert overrides(args) == ["resources.num_workers=3", "train.lr=0.01", "output_dir=/tmp/out",
                               "resources.address=ray://head:10001", "resources.num_workers=2",
                               "resources.use_gpu=true"]
    several = _args("--set", "train.lr=0.01", "dataset.step_len=5", "--set", "train.seed=3")
    assert overrides(several)[-3:] == ["train.lr=0.01", "dataset.step_len=5", "train.seed=3"]
    default = load_config(None, overrides(_args("--set", "train.n_epochs=7")))
    assert default.features.columns == ALPHA158_20 and len(ALPHA158_20) == default.model.d_feat
    assert default.train.n_epochs == 7 and default.train.lr == 1e-3
    assert default.train.batch_size == 800 and default.train.early_stop == 10  # the rest stays qlib's YAML


def test_metric_table_lists_both_segments_and_the_oracle(tmp_path) -> None:
    text = metric_table(sample_result(tmp_path, restarts=1))
    lines = text.splitlines()
    assert lines[0].split() == ["segment", "IC", "ICIR", "RankIC", "RankICIR", "long_short", "hit_rate"]
    assert lines[1].startswith("valid") and "0.1000" in lines[1]
    assert lines[2].startswith("test") and "nan" in lines[2]
    assert "oracle IC" in text and "0.1100" in text and "best epoch 3 of 9 (early stop" in text
    assert "1 worker restart(s)" in text


TINY_RUN = {
    "name": "cli", "data": {"synthetic": {"n_instruments": 30, "n_days": 200, "seed": 3}},
    "features": {"columns": list(ALPHA158_20)},
    "dataset": {"train": ["2020-04-01", "2020-06-30"], "valid": ["2020-07-01", "2020-08-14"],
                "test": ["2020-08-17", "2020-09-30"]},
    "model": {"hidden_size": 16, "num_layers": 1},
    "train": {"n_epochs": 2, "batch_size": 256, "lr": 1e-3},
}


@pytest.mark.ray
def test_train_then_predict_end_to_end(ray_runtime, tmp_path, capsys) -> None:  # noqa: F811
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump({**TINY_RUN, "data": {**TINY_RUN["data"], "cache_dir": str(tmp_path)}}))
    assert main(["train", str(cfg_path), "--output", str(tmp_path / "runs"), "--num-workers", "2"]) == 0
    out = capsys.readouterr().out
    run_dir = Path(out.strip().splitlines()[-1].removeprefix("run directory: "))
    assert out.count(f"run directory: {run_dir}") == 2
    assert "epoch   2/2" in out and "oracle IC on test" in out
    result = read_result(run_dir)
    assert result.oracle_ic is not None and result.provenance.num_workers == 2
    assert [r["epoch"] for r in RunDir(run_dir).read_metrics()] == [1, 2]

    # Scoring part of the test segment again from best/ gives the same scores as training's predictions.
    pred_path = tmp_path / "new.parquet"
    assert main(["predict", "--run", str(run_dir), "--start", "2020-09-01", "--end", "2020-09-30",
                 "--out", str(pred_path)]) == 0
    new = pd.read_parquet(pred_path)
    old = pd.read_parquet(run_dir / PREDICTIONS_FILE)
    old = old[old["datetime"] >= "2020-09-01"].reset_index(drop=True)
    assert len(new) == len(old) > 0
    pd.testing.assert_frame_equal(new[["datetime", "instrument"]], old[["datetime", "instrument"]])
    np.testing.assert_allclose(new["score"], old["score"], rtol=1e-4, atol=1e-5)


def test_train_reports_config_errors_without_starting_ray(tmp_path, capsys) -> None:
    assert main(["train", "--set", "train.batch_size=10000000", "--set", f"data.cache_dir={tmp_path}",
                 "--output", str(tmp_path)]) == 2
    assert "train.batch_size: 10000000 is larger than" in capsys.readouterr().err
    assert not list(tmp_path.glob("distgru-*"))


@pytest.mark.ray
def test_train_refuses_more_workers_than_the_cluster_has(ray_runtime, tmp_path, capsys) -> None:  # noqa: F811
    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump({**TINY_RUN, "data": {**TINY_RUN["data"], "cache_dir": str(tmp_path)}}))
    assert main(["train", str(cfg_path), "--output", str(tmp_path / "runs"), "--num-workers", "5"]) == 2
    assert "resources.num_workers: 5 workers" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())
