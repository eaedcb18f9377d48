"""``distgru evaluate``: run directory and bare predictions end to end, qlib's pickles, multi-seed aggregation."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from distgru.cli import main
from distgru.config import config_from_dict
from distgru.data.load import load_bars
from distgru.evaluation.evaluate import (
    BACKTEST_PARQUET,
    EVALUATION_JSON,
    LABEL_PKL,
    PRED_PKL,
    REPORT_HTML,
    TABLE_KEYS,
    evaluate_predictions,
)
from distgru.metrics import signal_metrics
from distgru.training.rundir import CONFIG_FILE, PREDICTIONS_FILE, RunDir, read_result, write_config
from distgru.tuning.seeds import aggregate, mean_std_table, parse_seeds, seed_config, write_seeds
from tests.ray_fixtures import ray_runtime, sample_result  # noqa: F401

SYNTH = {"n_instruments": 40, "n_days": 160, "seed": 5}
TEST_DAYS = 60


def _config(tmp_path: Path):  # noqa: ANN202
    return config_from_dict({"name": "evaltest", "output_dir": str(tmp_path),
                             "data": {"synthetic": SYNTH, "cache_dir": str(tmp_path)}})


def _predictions(cfg) -> pd.DataFrame:  # noqa: ANN001
    """Planted expected return plus noise on member days of the last TEST_DAYS days, qlib's raw label."""
    bars = load_bars(cfg.data)
    close = bars.field("close").astype(np.float64)
    label = np.full_like(close, np.nan)
    label[:, :-2] = close[:, 2:] / close[:, 1:-1] - 1
    expected = np.asarray(bars.extras["expected_label_return"], dtype=np.float64)
    noise = np.random.default_rng(0).normal(0, expected[np.isfinite(expected)].std(), expected.shape)
    days = np.zeros(len(bars.calendar), dtype=bool)
    days[-TEST_DAYS - 2:-2] = True
    inst, day = np.nonzero(bars.membership & days[None, :])
    return pd.DataFrame({"datetime": bars.calendar[day], "instrument": np.asarray(bars.instruments)[inst],
                         "score": (expected + noise)[inst, day], "label": label[inst, day]}
                        ).sort_values(["datetime", "instrument"]).reset_index(drop=True)


def _images(path: Path) -> int:
    return path.read_text().count('src="data:image/png;base64,')


def test_evaluate_run_dir_end_to_end(tmp_path, capsys) -> None:
    cfg = _config(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_config(run_dir / CONFIG_FILE, cfg)
    pred = _predictions(cfg)
    pred.to_parquet(run_dir / PREDICTIONS_FILE, index=False)
    RunDir(run_dir).write_result(sample_result(run_dir))

    assert main(["evaluate", str(run_dir)]) == 0
    out = capsys.readouterr().out
    for key in TABLE_KEYS:
        assert key in out
    assert "report: " in out

    result = read_result(run_dir)  # the schema still reads, with the new block
    assert result.best_epoch == 3 and result.evaluation is not None
    metrics = result.evaluation["metrics"]
    assert set(TABLE_KEYS) <= set(metrics)
    assert metrics["IC"] == pytest.approx(signal_metrics(pred)["IC"], abs=1e-12)
    assert metrics["IC"] > 0.05  # the planted signal is there
    assert result.evaluation["window"][1] == f"{pred['datetime'].max():%Y-%m-%d}"

    assert _images(run_dir / REPORT_HTML) == 4  # cumulative IC, heat map, excess return + drawdown, turnover
    report = pd.read_parquet(run_dir / BACKTEST_PARQUET)
    assert {"return", "bench", "cost", "turnover", "excess_return_with_cost"} <= set(report.columns)
    assert len(report) == pred["datetime"].nunique()
    assert metrics["turnover"] == pytest.approx(report["turnover"].mean())

    scores, labels = pd.read_pickle(run_dir / PRED_PKL), pd.read_pickle(run_dir / LABEL_PKL)
    assert list(scores.columns) == ["score"] and list(labels.columns) == ["LABEL0"]
    assert scores.index.names == ["datetime", "instrument"] and scores.index.is_monotonic_increasing
    assert isinstance(scores.index.get_level_values("datetime"), pd.DatetimeIndex)
    assert len(scores) == len(pred)
    np.testing.assert_array_equal(scores["score"].to_numpy(), pred["score"].to_numpy())
    assert labels.index.equals(scores.index)


def test_evaluate_bare_predictions_file(tmp_path, capsys) -> None:
    pred = _predictions(_config(tmp_path))
    path = tmp_path / "preds.parquet"
    pred.to_parquet(path, index=False)
    # Without bars: signal metrics only, two plots.
    assert main(["evaluate", str(path), "--out", str(tmp_path / "signal")]) == 0
    assert "annualized_return" not in capsys.readouterr().out
    assert _images(tmp_path / "signal" / REPORT_HTML) == 2
    block = json.loads((tmp_path / "signal" / EVALUATION_JSON).read_text())
    assert block["window"] is None and "IC" in block["metrics"]
    # --synthetic: bars from the default synthetic market (predictions made on it), files beside the input.
    market = _predictions(config_from_dict({"data": {"cache_dir": str(tmp_path)}}))
    market.to_parquet(path, index=False)
    assert main(["evaluate", str(path), "--synthetic"]) == 0
    assert "information_ratio" in capsys.readouterr().out
    assert _images(tmp_path / REPORT_HTML) == 4 and (tmp_path / PRED_PKL).is_file()
    block = json.loads((tmp_path / EVALUATION_JSON).read_text())
    assert block["window"][0] == f"{market['datetime'].min():%Y-%m-%d}"


def test_evaluate_predictions_matches_the_backtest_module(tmp_path) -> None:
    from distgru.evaluation.backtest import portfolio_metrics, run_backtest

    cfg = _config(tmp_path)
    pred = _predictions(cfg)
    bars = load_bars(cfg.data)
    ev = evaluate_predictions(pred, bars, cfg.backtest, tmp_path / "ev")
    direct = run_backtest(pred[["datetime", "instrument", "score"]], bars, cfg.backtest,
                          pred["datetime"].min(), pred["datetime"].max()).report
    pm = portfolio_metrics(direct)["excess_return_with_cost"]
    assert ev.metrics["annualized_return"] == pytest.approx(pm["annualized_return"], abs=1e-15)
    assert ev.metrics["information_ratio"] == pytest.approx(pm["information_ratio"], abs=1e-12)
    assert ev.metrics["max_drawdown"] == pytest.approx(pm["max_drawdown"], abs=1e-15)


def test_aggregate_is_mean_and_sample_std(tmp_path) -> None:
    per_seed = {0: {"IC": 0.01, "annualized_return": 0.10}, 1: {"IC": 0.03, "annualized_return": -0.02},
                2: {"IC": 0.05, "annualized_return": float("nan")}}
    table = aggregate(per_seed)
    assert list(table.index) == ["0", "1", "2", "mean", "std"]
    assert table.loc["mean", "IC"] == pytest.approx(0.03)
    assert table.loc["std", "IC"] == pytest.approx(0.02)  # sqrt(((-0.02)^2 + 0 + 0.02^2) / 2)
    assert table.loc["std", "IC"] == pytest.approx(statistics.stdev([0.01, 0.03, 0.05]))
    assert table.loc["mean", "annualized_return"] == pytest.approx(0.04)  # NaN skipped
    assert table.loc["std", "annualized_return"] == pytest.approx(statistics.stdev([0.10, -0.02]))
    one = aggregate({7: {"IC": 0.02}})
    assert one.loc["std", "IC"] == 0.0 and one.loc["mean", "IC"] == 0.02  # qlib: std 0 for one run
    assert "0.0300±0.0200" in mean_std_table(table)
    csv, js = write_seeds(tmp_path, table, [0, 1, 2])
    assert pd.read_csv(csv, index_col="seed").loc["mean", "IC"] == pytest.approx(0.03)
    data = json.loads(js.read_text())
    assert data["std"]["IC"] == pytest.approx(0.02) and data["per_seed"]["2"]["annualized_return"] is None


def test_seed_list_and_the_generated_tune_section(tmp_path) -> None:
    from distgru.config import ConfigError

    assert parse_seeds("0,1,2", None, 9) == [0, 1, 2]
    assert parse_seeds(None, 3, 9) == [9, 10, 11]
    for bad in (("0,0", None), ("a", None), (None, 0), (None, None)):
        with pytest.raises(ConfigError):
            parse_seeds(*bad, 0)
    tc = seed_config(_config(tmp_path), [0, 1]).tune
    assert tc is not None and tc.search == "grid" and tc.num_samples == 1 and tc.scheduler.kind == "fifo"
    assert tc.space == {"train.seed": {"grid": [0, 1]}}


@pytest.mark.ray
def test_train_two_seeds(ray_runtime, tmp_path, capsys) -> None:  # noqa: F811
    from tests.test_train_cli import TINY_RUN

    cfg_path = tmp_path / "tiny.yaml"
    run = {**TINY_RUN, "train": {**TINY_RUN["train"], "n_epochs": 1}}
    cfg_path.write_text(yaml.safe_dump({**run, "data": {**run["data"], "cache_dir": str(tmp_path)}}))
    assert main(["train", str(cfg_path), "--output", str(tmp_path / "runs"), "--seeds", "0,1",
                 "--num-workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "mean ± std" in out and "seed 0" in out and "seed 1" in out
    exp_dir = next((tmp_path / "runs").iterdir())
    table = pd.read_csv(exp_dir / "seeds.csv", index_col="seed")
    assert list(table.index) == ["0", "1", "mean", "std"]
    assert table.loc["mean", "IC"] == pytest.approx(table.loc[["0", "1"], "IC"].mean())
    assert table.loc["0", "IC"] != table.loc["1", "IC"]  # different seeds, different models
    for seed in (0, 1):
        assert _images(exp_dir / f"seed_{seed}" / REPORT_HTML) == 4
        assert (exp_dir / f"seed_{seed}" / PRED_PKL).is_file()
