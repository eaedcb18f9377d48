"""Any market's bars: ``features``, ``predict`` and ``evaluate`` read a long-format Parquet or CSV market with an
equal-weighted index as benchmark, from the same file or another, through one source option set."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from distgru.cli import main
from distgru.config import SyntheticConfig, config_from_dict
from distgru.data.synthetic import generate_market
from distgru.models import build_model
from distgru.processing.pipeline import prepare_panel
from distgru.training.checkpoint import save_best

INDEX = "EQW"


def long_market() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stock bars of a small synthetic market in long format, and its equal-weighted index (close only)."""
    panel = generate_market(SyntheticConfig(n_instruments=12, n_days=160, seed=3))
    rows = []
    for i, name in enumerate(panel.instruments):
        frame = pd.DataFrame({f: panel.fields[f][i] for f in ("open", "high", "low", "close", "volume")})
        rows.append(frame.assign(datetime=panel.calendar, instrument=f"US{name}").dropna())
    bars = pd.concat(rows, ignore_index=True)
    growth = bars.pivot(index="datetime", columns="instrument", values="close").pct_change().mean(axis=1)
    index = pd.DataFrame({"datetime": growth.index, "instrument": INDEX,
                          "close": 100 * (1 + growth.fillna(0)).cumprod().to_numpy()})
    return bars, index


def write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_parquet(path) if path.suffix == ".parquet" else frame.to_csv(path, index=False)
    return path


@pytest.fixture(params=[".parquet", ".csv"])
def market(request: pytest.FixtureRequest, tmp_path: Path) -> SimpleNamespace:
    bars, index = long_market()
    suffix = request.param
    # An index with full bars, as vendors ship one (else a run without --benchmark drops its rows); its own file
    # below holds the close only.
    full = index.assign(open=index["close"], high=index["close"], low=index["close"], volume=1e6)
    with_index = pd.concat([bars, full], ignore_index=True)
    return SimpleNamespace(both=write(with_index, tmp_path / f"both{suffix}"),
                           stocks=write(bars, tmp_path / f"stocks{suffix}"),
                           index=write(index, tmp_path / f"index{suffix}"),
                           bars=bars, bench=index, tmp=tmp_path)


def instruments_in(path: Path) -> set[str]:
    return set(pd.read_parquet(path).index.get_level_values("instrument"))


def test_features_keeps_the_index_apart(market: SimpleNamespace) -> None:
    out = market.tmp / "f.parquet"
    args = ["features", "--columns", "KLEN", "--out", str(out)]
    assert main([*args, "--data", str(market.both), "--benchmark", INDEX]) == 0
    assert instruments_in(out) == set(market.bars["instrument"])
    assert main([*args, "--data", str(market.stocks), "--benchmark", INDEX,
                 "--benchmark-data", str(market.index)]) == 0
    assert instruments_in(out) == set(market.bars["instrument"])
    assert main([*args, "--data", str(market.both)]) == 0  # without it the index is read as a stock
    assert INDEX in instruments_in(out)
    assert main([*args, "--data", str(market.stocks), "--benchmark", "NOPE"]) == 2  # named, not in the file


def predictions(bars: pd.DataFrame, days: int = 30) -> pd.DataFrame:
    last = sorted(bars["datetime"].unique())[-days - 3:-3]
    frame = bars[bars["datetime"].isin(last)][["datetime", "instrument", "close"]]
    rng = np.random.default_rng(0)
    return frame.assign(score=rng.normal(size=len(frame)), label=rng.normal(0, 0.01, len(frame))).drop(
        columns="close")


@pytest.mark.parametrize("separate", [False, True])
def test_evaluate_a_file_market_with_its_benchmark(market: SimpleNamespace, separate: bool) -> None:
    preds = market.tmp / "preds.parquet"
    predictions(market.bars).to_parquet(preds)
    source = (["--data", str(market.stocks), "--benchmark-data", str(market.index)] if separate
              else ["--data", str(market.both)])
    assert main(["evaluate", str(preds), *source, "--benchmark", INDEX, "--profile", "us"]) == 0
    block = json.loads((market.tmp / "evaluation.json").read_text())
    assert block["trading_days"] == 252
    report = pd.read_parquet(market.tmp / "backtest_report.parquet")
    expected = market.bench.set_index("datetime")["close"].pct_change().reindex(report.index)
    np.testing.assert_allclose(report["bench"], expected, rtol=1e-5, atol=1e-6)  # the index's own returns
    assert (report["bench"] != 0).all()


def test_predict_with_new_bars_from_a_file(market: SimpleNamespace, capsys: pytest.CaptureFixture[str]) -> None:
    days = sorted(market.bars["datetime"].unique())
    cfg = config_from_dict({
        "market": {"profile": "us"},
        "data": {"source": "parquet", "path": str(write(market.bars, market.tmp / "train.parquet")),
                 "cache_dir": str(market.tmp / "cache")},
        "features": {"set": "alpha158", "columns": ["KLEN", "ROC5"]},
        "dataset": {"train": [str(days[70])[:10], str(days[110])[:10]],
                    "valid": [str(days[111])[:10], str(days[130])[:10]],
                    "test": [str(days[131])[:10], str(days[150])[:10]], "step_len": 5},
        "model": {"d_feat": 2, "hidden_size": 4, "num_layers": 1},
    })
    _, state = prepare_panel(cfg, progress=False)
    model = build_model(cfg.model, cfg.window_len)
    run = market.tmp / "run"
    save_best(run, cfg, SimpleNamespace(best_model=model.state_dict(), best_epoch=1, best_score=0.0), state)
    out = market.tmp / "scores.parquet"
    start, end = str(days[140])[:10], str(days[150])[:10]
    assert main(["predict", "--run", str(run), "--start", start, "--end", end, "--data", str(market.both),
                 "--benchmark", INDEX, "--out", str(out)]) == 0
    scores = pd.read_parquet(out)
    assert INDEX not in set(scores["instrument"])  # the index is no stock to score
    listed = market.bars[market.bars["datetime"].between(days[140], days[150])]
    assert set(scores["instrument"]) == set(listed["instrument"])
    assert scores["score"].notna().all() and scores["datetime"].nunique() == 11
