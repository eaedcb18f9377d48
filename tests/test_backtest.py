"""TopK-Dropout backtest on a hand-made market; every expected number is worked out in the comments."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from distgru.config.schema import BacktestConfig
from distgru.data.panel import BarPanel
from distgru.evaluation.backtest import excess_returns, portfolio_metrics, risk_analysis, run_backtest

NAMES = ("A", "B", "C", "D", "E", "F")
DAYS = pd.bdate_range("2024-01-01", periods=5)  # d0..d4
NAN = np.nan
# Adjusted closes. C jumps 10% on d2 (limit-up); B has no bar on d3 (suspended). All values are exact in float32.
CLOSE = [
    [9.5, 10.0, 10.5, 11.0, 11.0],   # A
    [19.0, 20.0, 21.0, NAN, 22.0],   # B (factor 2: raw price is half, raw shares double)
    [11.5, 12.0, 13.2, 13.5, 13.75],  # C
    [30.0, 30.0, 30.0, 30.0, 30.0],  # D
    [49.0, 50.0, 50.0, 50.0, 52.0],  # E
    [5.0, 5.0, 5.0, 5.0, 5.0],       # F
]
# Scores dated d0..d3; the scores of day t are traded on day t+1.
SCORES = {
    0: [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
    1: [0.1, 0.8, 0.9, 0.7, 0.5, 0.4],
    2: [0.2, 0.3, 0.9, 0.8, 0.85, 0.1],
    3: [0.5, 0.95, 0.6, 0.7, 0.1, 0.2],
}
CFG = BacktestConfig(topk=2, n_drop=1, account=100_000.0)


def make_panel(close: list[list[float]] = CLOSE, factor: np.ndarray | None = None) -> BarPanel:
    c = np.array(close, dtype=np.float32)
    change = np.full_like(c, np.nan)
    change[:, 1:] = c[:, 1:] / c[:, :-1] - 1
    fields = {"open": c, "high": c, "low": c, "close": c, "change": change,
              "volume": np.where(np.isnan(c), np.nan, 1e6).astype(np.float32)}
    if factor is None:
        factor = np.ones_like(c)
        factor[1] = 2.0
    fields["factor"] = factor.astype(np.float32)
    bench = np.array([1000.0, 1010.0, 990.0, 1020.0, 1020.0], dtype=np.float32)
    return BarPanel(calendar=DAYS, instruments=NAMES, fields=fields, membership=~np.isnan(c),
                    benchmark={"close": bench}, benchmark_name="IDX")


def make_scores(table: dict[int, list[float]] = SCORES) -> pd.Series:
    idx = pd.MultiIndex.from_product([DAYS[list(table)], NAMES], names=["datetime", "instrument"])
    return pd.Series(np.concatenate([table[d] for d in table]), index=idx)


def test_hand_made_market() -> None:
    res = run_backtest(make_scores(), make_panel(), CFG, end=DAYS[-1])
    rep, pos, tr = res.report, res.positions, res.trades
    assert list(rep.index) == list(DAYS)  # start defaults to the first scored day; end given past the last one

    # d0: no signal from the day before → no trades.
    assert rep.loc[DAYS[0], "account"] == 100_000 and rep.loc[DAYS[0], "return"] == 0 and pos[DAYS[0]] == {}

    # d1 (d0 scores): nothing held → today = top 1+2-0 = 3, buy the first 2: A, B, each 100000*0.95/2 = 47500.
    # A: 47500/10 = 4750 → 4700 shares, 47000, fee 23.5.  B: 47500/20 = 2375 adj = 4750 raw → 4700 raw = 2350 adj,
    # 47000, fee 23.5 (without the factor it would have been 2300 adj).  cash = 100000 - 2*47023.5 = 5953.
    assert pos[DAYS[1]] == {"A": 4700.0, "B": 2350.0}
    d1 = rep.loc[DAYS[1]]
    assert d1["cash"] == pytest.approx(5953.0) and d1["account"] == pytest.approx(99_953.0)
    assert d1["return"] == pytest.approx(0.0, abs=1e-15)  # bought at close, valued at close: 0 before costs
    assert d1["cost"] == pytest.approx(47 / 100_000) and d1["turnover"] == pytest.approx(94_000 / 100_000)
    assert d1["bench"] == pytest.approx(0.01)

    # d2 (d1 scores): last = [B .8, A .1]; today = top 1 not held = [C]; union ranked C, B, A → sell A.
    # buy = today[:1+2-2] = [C], but C is limit-up (change 0.1 >= 0.095) → not bought, its cash stays.
    # Sell A: 4700*10.5 = 49350, fee 74.025 → cash 55228.975.  B: 2350*21 = 49350.  Account 104578.975.
    # return = (104578.975 - 99953 + 74.025)/99953 = 4700/99953 (A +2350, B +2350 before costs).
    assert pos[DAYS[2]] == {"B": 2350.0}
    d2 = rep.loc[DAYS[2]]
    assert d2["cash"] == pytest.approx(55_228.975) and d2["account"] == pytest.approx(104_578.975)
    assert d2["return"] == pytest.approx(4700 / 99_953)
    assert d2["cost"] == pytest.approx(74.025 / 99_953) and d2["turnover"] == pytest.approx(49_350 / 99_953)
    assert d2["bench"] == pytest.approx(990 / 1010 - 1)

    # d3 (d2 scores): last = [B]; today = top 2 not held = [C .9, E .85]; ranked C, E, B → sell B, but B is
    # suspended (no bar) → kept at its last price 21. buy = today[:1+2-1] = [C, E], each 55228.975*0.95/2
    # = 26233.763125: C /13.5 = 1943.2 → 1900 shares, 25650, fee 12.825; E /50 = 524.7 → 500, 25000, fee 12.5.
    # cash = 55228.975 - 25662.825 - 25012.5 = 4553.65; account = 49350 + 25650 + 25000 + 4553.65.
    # Three holdings > topk: the blocked sell still counted in the buy count.
    assert pos[DAYS[3]] == {"B": 2350.0, "C": 1900.0, "E": 500.0}
    d3 = rep.loc[DAYS[3]]
    assert d3["cash"] == pytest.approx(4553.65) and d3["account"] == pytest.approx(104_553.65)
    assert d3["return"] == pytest.approx(0.0, abs=1e-15) and d3["n_holdings"] == 3
    assert d3["cost"] == pytest.approx(25.325 / 104_578.975)
    assert d3["turnover"] == pytest.approx(50_650 / 104_578.975)

    # d4 (d3 scores): last = [B .95, C .6, E .1]; today = top 1+2-3 = 0 names; bottom 1 of [B, C, E] = E → sell
    # E at 52: 26000, fee 39 → cash 30514.65.  buy = [][:0].  B 2350*22 = 51700, C 1900*13.75 = 26125.
    # return = (108339.65 - 104553.65 + 39)/104553.65 = 3825/104553.65 (B +2350, C +475, E +1000).
    assert pos[DAYS[4]] == {"B": 2350.0, "C": 1900.0}
    d4 = rep.loc[DAYS[4]]
    assert d4["account"] == pytest.approx(108_339.65) and d4["value"] == pytest.approx(77_825.0)
    assert d4["return"] == pytest.approx(3825 / 104_553.65) and d4["cost"] == pytest.approx(39 / 104_553.65)
    assert d4["bench"] == 0.0

    assert list(zip(tr["instrument"], tr["side"], strict=True)) == [
        ("A", "buy"), ("B", "buy"), ("A", "sell"), ("C", "buy"), ("E", "buy"), ("E", "sell")]
    assert tr["cost"].sum() == pytest.approx(23.5 + 23.5 + 74.025 + 12.825 + 12.5 + 39)
    # The account path is the compounded net return: V_T = V_{T-1} (1 + return - cost).
    assert rep["account"].iloc[-1] == pytest.approx(100_000 * float(np.prod(1 + rep["return"] - rep["cost"])))


def test_holding_at_limit_up_is_not_sold_and_limit_down_is_not_bought() -> None:
    # qlib's forbid_all_trade_at_limit: either limit blocks both directions.
    close = [row[:] for row in CLOSE]
    close[0][2] = 11.0  # A +10% on d2 (limit-up): it is the planned sell on d2 and must stay.
    close[2][2] = 10.8  # C -10% on d2 (limit-down): the planned buy on d2 must not happen.
    res = run_backtest(make_scores(), make_panel(close), CFG)
    assert set(res.positions[DAYS[2]]) == {"A", "B"}
    assert res.trades[res.trades["date"] == DAYS[2]].empty


def test_missing_factor_disables_lot_rounding() -> None:
    factor = np.ones((6, 5))
    factor[3, 2] = np.nan  # one bar with a close but no factor switches rounding off for the whole run (qlib)
    res = run_backtest(make_scores(), make_panel(factor=factor), CFG)
    assert res.positions[DAYS[1]] == pytest.approx({"A": 4750.0, "B": 2375.0})


def test_block_zero_volume() -> None:
    panel = make_panel()
    panel.fields["volume"][0, 1] = 0.0  # A has a flat zero-volume bar on d1
    assert "A" in run_backtest(make_scores(), panel, CFG).positions[DAYS[1]]
    cfg = BacktestConfig(topk=2, n_drop=1, account=100_000.0, block_zero_volume=True)
    assert "A" not in run_backtest(make_scores(), panel, cfg).positions[DAYS[1]]


def test_risk_analysis_by_hand() -> None:
    r = pd.Series([0.01, -0.02, 0.03])
    out = risk_analysis(r)
    # mean = 0.02/3; deviations 1/300, -8/300, 7/300 → var = (1+64+49)/90000/2 = 114/180000.
    mean, std = 0.02 / 3, math.sqrt(114 / 180_000)
    assert out["mean"] == pytest.approx(mean) and out["std"] == pytest.approx(std)
    assert out["annualized_return"] == pytest.approx(mean * 238)
    assert out["information_ratio"] == pytest.approx(mean / std * math.sqrt(238))
    # cumsum 0.01, -0.01, 0.02; running max 0.01, 0.01, 0.02 → drawdowns 0, -0.02, 0.
    assert out["max_drawdown"] == pytest.approx(-0.02)


def test_excess_returns_and_portfolio_metrics() -> None:
    rep = pd.DataFrame({"return": [0.01, 0.02], "bench": [0.005, 0.03], "cost": [0.001, 0.0]})
    ex = excess_returns(rep)
    assert ex["excess_return_with_cost"].tolist() == pytest.approx([0.004, -0.01])
    assert ex["excess_return_without_cost"].tolist() == pytest.approx([0.005, -0.01])
    assert portfolio_metrics(rep)["excess_return_with_cost"]["mean"] == pytest.approx(-0.003)


def test_scores_as_frame_and_unknown_instrument() -> None:
    frame = make_scores().rename("score").reset_index()
    # A name the panel lacks is ranked first on d0 and takes a buy slot, but can never trade.
    extra = pd.DataFrame({"datetime": [DAYS[0]], "instrument": ["ZZZ"], "score": [5.0]})
    res = run_backtest(pd.concat([frame, extra]), make_panel(), CFG)
    # buy list = [ZZZ, A]: cash split in two, only A trades: 47500/10 → 4700.
    assert res.positions[DAYS[1]] == {"A": 4700.0}


def test_invariants_on_a_random_market() -> None:
    """Accounting identities and trading rules on 30 names × 120 days with limits and suspensions sprinkled in."""
    rng = np.random.default_rng(1)
    n, days = 30, 120
    cal = pd.bdate_range("2023-01-02", periods=days)
    close = 10 * np.exp(np.cumsum(rng.normal(0, 0.03, (n, days)), axis=1))
    close[rng.random((n, days)) < 0.03] = np.nan
    close = close.astype(np.float32)
    change = np.full_like(close, np.nan)
    change[:, 1:] = close[:, 1:] / close[:, :-1] - 1
    change[rng.random((n, days)) < 0.03] = 0.1  # limit-up
    change[rng.random((n, days)) < 0.03] = -0.1  # limit-down
    factor = rng.choice([0.5, 1.0, 3.7], size=(n, 1)) * np.ones((1, days))
    names = tuple(f"S{i:02d}" for i in range(n))
    fields = {"open": close, "high": close, "low": close, "close": close, "change": change,
              "volume": np.ones_like(close), "factor": factor.astype(np.float32)}
    panel = BarPanel(calendar=cal, instruments=names, fields=fields, membership=np.ones((n, days), bool))
    idx = pd.MultiIndex.from_product([cal, names], names=["datetime", "instrument"])
    scores = pd.Series(rng.normal(size=len(idx)), index=idx)
    cfg = BacktestConfig(topk=8, n_drop=2, account=1e6)
    res = run_backtest(scores, panel, cfg)
    rep, tr = res.report, res.trades

    prev = np.r_[cfg.account, rep["account"].to_numpy()[:-1]]
    np.testing.assert_allclose(rep["account"], prev * (1 + rep["return"] - rep["cost"]), rtol=1e-12)
    np.testing.assert_allclose(rep["account"], rep["value"] + rep["cash"], rtol=1e-12)
    assert (rep["cash"] >= 0).all() and (rep["bench"] == 0).all()  # no benchmark in this panel
    assert rep["n_holdings"].iloc[-1] >= cfg.topk - cfg.n_drop
    day = cal.get_indexer(tr["date"])
    col = pd.Index(names).get_indexer(tr["instrument"])
    assert not np.isnan(close[col, day]).any()
    traded_change = change[col, day]
    assert ((np.abs(traded_change) < cfg.limit_threshold) | np.isnan(traded_change)).all()
    buys = tr[tr["side"] == "buy"]
    raw = buys["amount"].to_numpy() * factor[col[tr["side"] == "buy"], 0]
    np.testing.assert_allclose(raw, np.round(raw / 100) * 100, atol=1e-6)
    np.testing.assert_allclose(tr["cost"], np.maximum(
        tr["value"] * np.where(tr["side"] == "buy", cfg.open_cost, cfg.close_cost), cfg.min_cost))
    # Daily cost and turnover in the report are the day's trades over the previous account value.
    by_day = tr.groupby("date")[["cost", "value"]].sum().reindex(rep.index, fill_value=0.0)
    np.testing.assert_allclose(rep["cost"], by_day["cost"] / prev, rtol=1e-12)
    np.testing.assert_allclose(rep["turnover"], by_day["value"] / prev, rtol=1e-12)
