"""Inputs that used to pass silently or end in a traceback: ``distgru evaluate`` on broken predictions, and the
pre-flight ``check_panel`` (window vs segments, segments vs data, topk vs universe, features without information).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from distgru.cli import main
from distgru.config import Config, ConfigError, config_from_dict
from distgru.evaluation.evaluate import check_predictions
from distgru.processing.checks import check_panel, log_warnings
from distgru.processing.panel import ProcessedPanel
from distgru.processing.pipeline import prepare_panel

N_INST, N_DAYS = 30, 20


def predictions(nan_share: float = 0.0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    days = pd.bdate_range("2021-03-01", periods=N_DAYS)
    frame = pd.DataFrame({"datetime": np.repeat(days, N_INST), "instrument": np.tile(
        [f"SH6{i:05d}" for i in range(N_INST)], N_DAYS)})
    frame["label"] = rng.normal(0, 0.02, len(frame))
    frame["score"] = frame["label"] + rng.normal(0, 0.02, len(frame))
    frame.loc[rng.random(len(frame)) < nan_share, "score"] = np.nan
    return frame


def evaluate_file(tmp_path: Path, frame: pd.DataFrame, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "preds.parquet"
    frame.to_parquet(path, index=False)
    rc = main(["evaluate", str(path), "--out", str(tmp_path / "out")])
    return rc, capsys.readouterr().err


def test_evaluate_without_label_column_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = evaluate_file(tmp_path, predictions().drop(columns="label"), capsys)
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "preds.parquet: no column(s) label" in err and "label (the raw label" in err


def test_evaluate_all_nan_scores_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = evaluate_file(tmp_path, predictions(nan_share=1.0), capsys)
    assert rc == 2 and "all 600 scores are NaN" in err and not (tmp_path / "out").exists()


def test_evaluate_warns_about_a_third_nan_scores(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="distgru.evaluation.evaluate"):
        rc, _ = evaluate_file(tmp_path, predictions(nan_share=1 / 3), capsys)
    assert rc == 0
    (message,) = [r.getMessage() for r in caplog.records if "of the scores" in r.getMessage()]
    share = float(message.split("% of the scores")[0].split()[-1])
    assert 28 < share < 39 and "preds.parquet" in message


def test_days_without_scores_are_counted() -> None:
    frame = predictions()
    days = frame["datetime"].unique()
    frame.loc[frame["datetime"].isin(days[[3, 4, 5]]), "score"] = np.nan  # three days with no score at all
    frame = frame[frame["datetime"] != days[10]]  # and one day missing from the file
    _, warnings = check_predictions(frame, "p.parquet")
    assert [w for w in warnings if "3 of 19 days" in w and "2021-03-04" in w]  # no calendar: the gap is unseen
    _, warnings = check_predictions(frame, "p.parquet", calendar=pd.DatetimeIndex(days))
    assert [w for w in warnings if "4 of 20 days between 2021-03-01 and 2021-03-26 have no score" in w]
    assert check_predictions(predictions(), "p.parquet")[1] == []


# --- check_panel -----------------------------------------------------------------------------------------------

SEGMENTS = {"train": (10, 70), "valid": (70, 90), "test": (90, 110)}
CALENDAR = pd.bdate_range("2021-01-04", periods=110)
DATES = {name: [f"{CALENDAR[lo]:%Y-%m-%d}", f"{CALENDAR[hi - 1]:%Y-%m-%d}"] for name, (lo, hi) in SEGMENTS.items()}


def panel(n_inst: int = 120, n_feat: int = 3, seed: int = 0) -> ProcessedPanel:
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((n_inst, len(CALENDAR), n_feat)).astype(np.float32)
    label = rng.standard_normal((n_inst, len(CALENDAR))).astype(np.float32)
    return ProcessedPanel(calendar=CALENDAR, instruments=tuple(f"S{i:03d}" for i in range(n_inst)),
                          feature_names=tuple(f"F{i}" for i in range(n_feat)), features=features, label_raw=label,
                          label_learn=label.copy(), membership=rng.random(label.shape) > 0.1,
                          segments=dict(SEGMENTS))


def config(**dataset: object) -> Config:
    return config_from_dict({"model": {"d_feat": 3}, "dataset": {**DATES, "step_len": 5, **dataset}})


def test_clean_panel_has_no_warnings(caplog: pytest.LogCaptureFixture) -> None:
    assert check_panel(config(), panel()) == [] and not caplog.records


def test_step_len_longer_than_the_train_segment_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"dataset.step_len: 400 trading days is longer than the whole train "
                                          r"segment \(segments: train 60, valid 20, test 20"):
        check_panel(config(step_len=400), panel())
    (warning,) = check_panel(config(step_len=30), panel())
    assert warning.startswith("dataset.step_len: 30") and "valid and test segment(s)" in warning


def test_segments_partly_outside_the_data_warn(caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(train=["2015-01-01", DATES["train"][1]], test=[DATES["test"][0], "2023-06-30"])
    warnings = check_panel(cfg, panel())
    with caplog.at_level(logging.WARNING, logger="distgru.processing.checks"):
        log_warnings([*warnings, *warnings])  # said once each
    covers = "the data, which covers 2021-01-04 .. 2021-06-04"
    assert [w for w in warnings if w.startswith("dataset.train:") and "starts 2015-01-01" in w and covers in w]
    assert [w for w in warnings if w.startswith("dataset.test:") and "ends 2023-06-30" in w]
    assert [r.getMessage() for r in caplog.records] == warnings
    # A round date a few days before the first trading day is not worth a word.
    assert check_panel(config(train=["2021-01-01", DATES["train"][1]]), panel()) == []


def test_topk_against_the_universe() -> None:
    (warning,) = check_panel(config(), panel(n_inst=30))
    assert warning.startswith("backtest.topk: 50 is not below the universe size (30 instruments")
    cfg = config_from_dict({"model": {"d_feat": 3}, "dataset": {**DATES, "step_len": 5},
                            "backtest": {"topk": 20, "n_drop": 10}})
    (warning,) = check_panel(cfg, panel(n_inst=30))
    assert warning.startswith("backtest.topk + backtest.n_drop: 20 + 10 exceeds the 27 instruments")


def test_features_without_information_warn() -> None:
    p = panel(n_feat=4)
    p.features[..., 1] = 0.0  # what Fillna leaves of an all-NaN raw column
    p.features[..., 3] = np.nan  # the same without Fillna
    p.features[~p.membership, 2] = 0.0
    p.features[p.membership, 2] = 1.5  # constant on every member row, whatever the other rows hold
    (warning,) = check_panel(config(), p)
    assert warning.startswith("features: 3 of 4 feature column(s) hold one value on every member row (F1, F2, F3)")


def test_all_nan_raw_feature_from_the_pipeline(tmp_path: Path) -> None:
    """End to end: the synthetic market has no vwap field, so qlib's VWAP0 is NaN throughout."""
    cfg = config_from_dict({
        "data": {"cache_dir": str(tmp_path), "synthetic": {"n_instruments": 60, "n_days": 200}},
        "features": {"columns": ["KLEN", "VWAP0", "ROC5"]}, "model": {"d_feat": 3},
        "dataset": {"train": ["2020-03-02", "2020-06-30"], "valid": ["2020-07-01", "2020-07-31"],
                    "test": ["2020-08-03", "2020-10-07"]},
        "backtest": {"topk": 10, "n_drop": 2}})
    processed, _ = prepare_panel(cfg, progress=False)
    (warning,) = check_panel(cfg, processed)
    assert warning.startswith("features: 1 of 3 feature column(s) hold one value on every member row (VWAP0)")
