"""The synthetic market: realistic bars, deterministic, and a planted signal of the promised size and shape."""

from __future__ import annotations

import time

import numpy as np
import pytest

from distgru.config.presets import synthetic_default
from distgru.config.schema import DatasetConfig, SyntheticConfig
from distgru.data.synthetic import BENCHMARK, daily_ic, generate_market, oracle_ic, qlib_label
from distgru.data.synthetic_dynamics import EVENT_BANDS, RESI5_WEIGHTS, REVERSAL_CAP, REVERSAL_COEF


@pytest.fixture(scope="module")
def panel():
    return generate_market(SyntheticConfig())


def test_deterministic_and_seeded() -> None:
    cfg = SyntheticConfig(n_instruments=30, n_days=150, seed=7)
    a, b = generate_market(cfg), generate_market(cfg)
    assert a.fingerprint() == b.fingerprint()
    assert np.array_equal(a.extras["expected_label_return"], b.extras["expected_label_return"], equal_nan=True)
    assert generate_market(SyntheticConfig(n_instruments=30, n_days=150, seed=8)).fingerprint() != a.fingerprint()


def test_default_size_is_fast() -> None:
    # CPU time, not wall time: the bound is about the generator, not about how busy the machine is.
    t0 = time.process_time()
    generate_market(SyntheticConfig(seed=3))
    assert time.process_time() - t0 < 2.0


def test_shapes_and_calendar(panel) -> None:
    cfg, ds = SyntheticConfig(), DatasetConfig()
    assert panel.shape == (cfg.n_instruments, cfg.n_days)
    assert panel.calendar[0].strftime("%Y-%m-%d") == cfg.start
    # The default dataset segments must lie inside the calendar, with 60 days of history before train.
    assert panel.calendar.searchsorted(ds.train[0]) >= 60
    assert panel.calendar[-1] >= panel.calendar[panel.calendar.searchsorted(ds.test[1]) - 1]
    for arr in panel.fields.values():
        assert arr.dtype == np.float32
    assert set(panel.fields) >= {"open", "high", "low", "close", "volume", "factor", "change"}
    assert panel.benchmark_name == BENCHMARK and np.all(panel.benchmark["close"] > 0)


def test_bars_are_consistent(panel) -> None:
    f = panel.fields
    bar = np.isfinite(f["close"])
    for name in ("open", "high", "low", "volume", "factor"):
        assert np.array_equal(np.isfinite(f[name]), bar), name
    o, h, l, c = (f[k][bar] for k in ("open", "high", "low", "close"))
    assert np.all(l > 0)
    assert np.all(h >= np.maximum(o, c)) and np.all(l <= np.minimum(o, c))
    assert np.all(f["volume"][bar] >= 0)
    prev = np.concatenate([np.full((panel.shape[0], 1), np.nan), f["close"][:, :-1]], axis=1)
    with np.errstate(invalid="ignore"):
        assert np.allclose(f["change"], f["close"] / prev - 1, atol=1e-5, equal_nan=True)
    # factor: 1 at the start, only ever steps up (dividends, bonus shares).
    fac = f["factor"]
    assert np.nanmin(fac) == 1.0 and np.all(np.nan_to_num(np.diff(fac, axis=1)) >= 0)


def test_suspensions_are_flat_zero_volume_runs(panel) -> None:
    f = panel.fields
    bar = np.isfinite(f["close"])
    susp = bar & (f["volume"] == 0)
    assert 0.01 <= susp.sum() / bar.sum() <= 0.03
    assert np.all(f["high"][susp] == f["low"][susp]) and np.all(f["change"][susp] == 0)
    # In runs: most suspended days have a suspended neighbour.
    neighbour = np.zeros_like(susp)
    neighbour[:, 1:] |= susp[:, :-1]
    neighbour[:, :-1] |= susp[:, 1:]
    assert (susp & neighbour).sum() / susp.sum() > 0.6


def test_price_limits(panel) -> None:
    ch = panel.fields["change"]
    bar = np.isfinite(ch)
    assert np.nanmax(np.abs(ch)) <= 0.1 + 1e-6
    at_limit = np.abs(ch[bar]) >= 0.0995
    assert 0.001 <= at_limit.mean() <= 0.02
    assert (ch[bar] >= 0.0995).any() and (ch[bar] <= -0.0995).any()


def test_universe_churn(panel) -> None:
    bar = np.isfinite(panel.fields["close"])
    member = panel.membership
    assert not np.any(member & ~bar)
    assert 0.8 <= member.mean(axis=0).mean() <= 0.9
    assert (~bar[:, 0]).sum() >= 0.1 * panel.shape[0]  # listed late
    assert (~bar[:, -1] & bar.any(axis=1)).sum() >= 1  # delisted
    joins = (member[:, 1:] & ~member[:, :-1]).sum()
    leaves = (~member[:, 1:] & member[:, :-1]).sum()
    assert joins >= 20 and leaves >= 10


def test_oracle_ic_on_default_test_segment(panel) -> None:
    ds = DatasetConfig()
    ic = oracle_ic(panel, *ds.test)
    assert 0.05 <= ic <= 0.15
    for seed in (1,):
        assert 0.05 <= oracle_ic(generate_market(SyntheticConfig(seed=seed)), *ds.test) <= 0.15
    # The default run's market (the preset's size) too.
    preset = synthetic_default()
    assert 0.05 <= oracle_ic(generate_market(preset.data.synthetic), *preset.dataset.test) <= 0.15
    # Every component carries signal on its own.
    for name, comp in panel.extras["expected_label_components"].items():
        assert oracle_ic(panel, *ds.test, score=comp.astype(np.float64)) > 0.02, name


def _lagged(x: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros_like(x)
    out[:, k:] = x[:, : x.shape[1] - k]
    return out


def _r2(columns: list[np.ndarray], target: np.ndarray) -> float:
    """In-sample R² of an OLS of target on the columns (plus a constant)."""
    x = np.column_stack([np.ones_like(target), *columns])
    coef, *_ = np.linalg.lstsq(x, target, rcond=None)
    return 1.0 - np.var(target - x @ coef) / np.var(target)


def _candles(panel) -> tuple[np.ndarray, np.ndarray]:
    """Alpha158 KLEN and KLOW of every bar, float64 (0 without a bar)."""
    f = {k: panel.fields[k].astype(np.float64) for k in ("open", "high", "low", "close")}
    klen = np.nan_to_num((f["high"] - f["low"]) / f["open"])
    klow = np.nan_to_num((np.minimum(f["open"], f["close"]) - f["low"]) / f["open"])
    return klen, klow


def test_signal_is_recoverable_from_a_20_day_window_of_alpha158(panel) -> None:
    """The whole planted return is (nearly) linear in Alpha158 quantities of the last 20 days: RESI5 and KLOW of
    day T, and a range-expansion indicator (KLOW > 3%) on each of the 20 days."""
    exp = panel.extras["expected_label_return"].astype(np.float64)
    c = panel.fields["close"].astype(np.float64)
    ok = panel.membership & np.isfinite(exp)
    ok[:, :25] = False
    resi5 = sum(w * _lagged(np.nan_to_num(c), 4 - k) for k, w in enumerate(RESI5_WEIGHTS)) / np.where(
        np.isfinite(c), c, 1.0)
    klen, klow = _candles(panel)
    spike = (klow > 0.03).astype(np.float64)
    cols = [np.clip(resi5, -REVERSAL_CAP, REVERSAL_CAP)[ok], np.minimum(klow, 0.017)[ok]]
    cols += [_lagged(spike, k)[ok] for k in range(20)]
    assert _r2(cols, exp[ok]) > 0.9


@pytest.mark.parametrize("name", list(EVENT_BANDS))
def test_event_components_need_a_long_window(panel, name: str) -> None:
    """An event component is invisible in the candles of the days inside its band's start (a window of
    ``lo`` days sees nothing of it) and read off the candles ``lo``–``hi`` days back. The long-lag ``event``
    component needs a window of at least 16 days: a tuner choosing step_len 5 vs 20 has a right answer."""
    lo, hi = EVENT_BANDS[name]
    if name == "event":
        assert lo >= 15
    assert lo >= 5  # neither is visible to a 5-day window
    comp = panel.extras["expected_label_components"][name].astype(np.float64)
    ok = panel.membership & np.isfinite(comp)
    ok[:, :25] = False
    klen, klow = _candles(panel)
    spike = ((klow > 0.03) & (klen > 0.08)).astype(np.float64)  # an observable stand-in for the event bar
    short = [_lagged(x, k)[ok] for x in (klen, klow, spike) for k in range(lo)]
    assert _r2(short, comp[ok]) < 0.01
    assert _r2([_lagged(spike, k)[ok] for k in range(lo, hi + 1)], comp[ok]) > 0.8


def test_realistic_returns(panel) -> None:
    """Fat tails, volatility clustering and a market factor."""
    ch = panel.fields["change"].astype(np.float64)
    trading = np.isfinite(ch) & (panel.fields["volume"] > 0)
    trading[:, 0] = False
    r = np.where(trading, ch, np.nan)
    z = (r - np.nanmean(r, axis=1, keepdims=True)) / np.nanstd(r, axis=1, keepdims=True)
    assert np.nanmean(z**4) - 3 > 1.0  # excess kurtosis
    a = np.abs(np.nan_to_num(z))
    both = trading[:, 1:] & trading[:, :-1]
    assert np.corrcoef(a[:, 1:][both], a[:, :-1][both])[0, 1] > 0.05  # |r| clusters
    # The index explains a good part of every stock's move: mean correlation with the benchmark.
    bench = panel.benchmark["change"].astype(np.float64)
    corr = [np.corrcoef(r[i][trading[i] & np.isfinite(bench)], bench[trading[i] & np.isfinite(bench)])[0, 1]
            for i in range(0, panel.shape[0], 10) if trading[i].sum() > 100]
    assert np.mean(corr) > 0.3


def test_expected_return_uses_only_past_bars(panel) -> None:
    """The reversal component is an exact function of day T's five closes (RESI5), and NaN without a bar."""
    exp = panel.extras["expected_label_components"]["reversal"]
    c = panel.fields["close"].astype(np.float64)
    i = np.flatnonzero(np.isfinite(c[:, 0]))[0]
    t = 100
    resi5 = c[i, t - 4: t + 1] @ np.array([0.2, 0.0, -0.2, -0.4, 0.4]) / c[i, t]
    assert exp[i, t] == pytest.approx(-REVERSAL_COEF * np.clip(resi5, -REVERSAL_CAP, REVERSAL_CAP), rel=1e-4,
                                      abs=1e-7)
    assert np.all(np.isnan(panel.extras["expected_label_return"][~np.isfinite(c)]))
    assert np.all(np.isnan(panel.extras["expected_label_return"][:, -2:]))


def test_daily_ic_matches_pandas() -> None:
    rng = np.random.default_rng(0)
    s, y = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
    y[3, 1] = np.nan
    mask = np.ones((50, 4), dtype=bool)
    mask[:10, 2] = False
    ic = daily_ic(s, y, mask)
    for t in range(4):
        ok = mask[:, t] & np.isfinite(y[:, t])
        assert ic[t] == pytest.approx(np.corrcoef(s[ok, t], y[ok, t])[0, 1])


def test_label_is_qlib_default(panel) -> None:
    c = panel.fields["close"].astype(np.float64)
    lab = qlib_label(panel)
    assert lab[5, 10] == pytest.approx(c[5, 12] / c[5, 11] - 1, nan_ok=True)
    assert np.all(np.isnan(lab[:, -2:]))


def test_default_config_is_the_synthetic_preset() -> None:
    """``load_config(None)`` (``distgru train`` without CONFIG) is the preset: the synthetic market with qlib's GRU
    on Alpha158-20, the column list of configs/gru_alpha158.yaml."""
    from pathlib import Path

    from distgru.config import load_config
    from distgru.config.presets import ALPHA158_20

    cfg = load_config(None)
    assert cfg == synthetic_default()
    qlib = load_config(Path(__file__).resolve().parents[1] / "configs" / "gru_alpha158.yaml")
    assert cfg.data.source == "synthetic" and cfg.features.columns == qlib.features.columns == ALPHA158_20
    assert cfg.model == qlib.model and cfg.processors.infer == qlib.processors.infer
    assert cfg.processors.learn == qlib.processors.learn and cfg.dataset.step_len == qlib.dataset.step_len == 20
    same = ("batch_size", "early_stop", "metric", "loss", "optimizer", "clip", "clip_value")
    assert all(getattr(cfg.train, k) == getattr(qlib.train, k) for k in same)
    assert cfg.train.lr == 1e-3 and cfg.train.n_epochs == 4
