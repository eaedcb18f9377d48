"""Market profiles: the cn profile is qlib's defaults, the us profile trades without limits in single shares
and annualises over 252 days; hand-computed on test_backtest.py's market."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from distgru.config import ConfigError, config_from_dict, load_config, to_dict
from distgru.evaluation.backtest import portfolio_metrics, run_backtest
from distgru.evaluation.evaluate import evaluate_predictions
from tests.test_backtest import DAYS, make_panel, make_scores


def test_cn_profile_is_qlibs_defaults() -> None:
    bt = config_from_dict({}).backtest
    assert (bt.trading_days, bt.limit_threshold, bt.trade_unit) == (238, 0.095, 100)
    assert (bt.open_cost, bt.close_cost, bt.min_cost) == (0.0005, 0.0015, 5.0)
    assert config_from_dict({}).data.benchmark == "SH000300"
    assert load_config(None).data.benchmark == "SYN_INDEX"  # an explicit benchmark is kept


def test_us_profile_and_overrides() -> None:
    cfg = config_from_dict({"market": {"profile": "us", "close_cost": 0.0002}, "backtest": {"trade_unit": 10},
                            "data": {"benchmark": "EQW"}})
    bt = cfg.backtest
    assert (bt.trading_days, bt.limit_threshold, bt.trade_unit) == (252, math.inf, 10)  # backtest.* wins
    assert (bt.open_cost, bt.close_cost, bt.min_cost) == (0.0001, 0.0002, 0.0)
    assert cfg.data.benchmark == "EQW" and config_from_dict({"market": {"profile": "us"}}).data.benchmark is None
    again = config_from_dict(to_dict(cfg))
    assert again == cfg  # the resolved config saved with a run reloads to the same settings


def test_custom_profile_needs_every_field() -> None:
    with pytest.raises(ConfigError, match=r"market\.limit_threshold: required when market\.profile is 'custom'"):
        config_from_dict({"market": {"profile": "custom", "trading_days": 250}})
    with pytest.raises(ConfigError, match=r"market\.profile: 'hk' is not allowed; valid choices: 'cn', 'us'"):
        config_from_dict({"market": {"profile": "hk"}})
    with pytest.raises(ConfigError, match=r"market\.trading_days: 400 must be in 1\.\.366"):
        config_from_dict({"market": {"trading_days": 400}})
    custom = config_from_dict({"market": {"profile": "custom", "trading_days": 250, "limit_threshold": 0.3,
                                          "trade_unit": 1000, "open_cost": 0.001, "close_cost": 0.001,
                                          "min_cost": 0.0, "benchmark": "HSI"}})
    assert (custom.backtest.trade_unit, custom.backtest.trading_days, custom.data.benchmark) == (1000, 250, "HSI")


def test_us_backtest_by_hand() -> None:
    cfg = config_from_dict({"market": {"profile": "us"}, "backtest": {"topk": 2, "n_drop": 1,
                                                                      "account": 100_000.0}}).backtest
    res = run_backtest(make_scores(), make_panel(), cfg, end=DAYS[-1])
    rep, pos = res.report, res.positions
    # d1: buy A, B with 100000*0.95/2 = 47500 each; trade unit 1 → A 4750 shares, B 2375 adj (4750 raw, factor 2)
    # where cn's 100-share lots leave 4700 / 2350. Fee 47500 × 1 bp = 4.75, no minimum: cash 100000 − 95009.5.
    assert pos[DAYS[1]] == {"A": 4750.0, "B": 2375.0}
    assert rep.loc[DAYS[1], "cash"] == pytest.approx(4990.5)
    # d2: sell A 4750 × 10.5 = 49875, fee 6.48375 (1.3 bp) → cash 54859.01625. C is up 10 % (limit-up in cn,
    # blocked there) and is bought: 54859.01625 × 0.95 / 13.2 = 3948.19 → 3948 shares = 52113.6, fee 5.21136.
    assert pos[DAYS[2]] == {"B": 2375.0, "C": 3948.0}
    assert rep.loc[DAYS[2], "cash"] == pytest.approx(54859.01625 - 52113.6 - 5.21136)
    assert rep.loc[DAYS[2], "cost"] == pytest.approx((6.48375 + 5.21136) / rep.loc[DAYS[1], "account"])


def test_us_annualisation_is_named(tmp_path) -> None:
    cfg = config_from_dict({"market": {"profile": "us"}, "backtest": {"topk": 2, "n_drop": 1,
                                                                      "account": 100_000.0}}).backtest
    scores = make_scores()
    pred = scores.rename("score").reset_index().assign(label=0.01)
    ev = evaluate_predictions(pred, make_panel(), cfg, tmp_path)
    r = ev.report["return"] - ev.report["bench"] - ev.report["cost"]
    assert ev.metrics["annualized_return"] == pytest.approx(r.mean() * 252)
    assert ev.metrics["information_ratio"] == pytest.approx(r.mean() / r.std() * math.sqrt(252))
    assert ev.block()["trading_days"] == 252
    assert portfolio_metrics(ev.report)["excess_return_with_cost"]["annualized_return"] == pytest.approx(
        r.mean() * 238)  # the default stays qlib's
    assert "annualised over 252 days" in (tmp_path / "report.html").read_text()
    assert isinstance(ev.report.index, pd.DatetimeIndex)
