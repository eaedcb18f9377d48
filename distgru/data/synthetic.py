"""The embedded synthetic market: a default data set with realistic bars and a planted, known signal.

Bars (adjusted prices, qlib convention: price = raw × factor, volume = shares / factor):

- Daily return ``r = beta_i · m_t + mu_i,t + sigma_i,t · eps_i,t + jump``, clipped to the ±10% price limit (the
  ``change`` field then records ±0.10). ``m_t`` is a market factor (GARCH(1,1), ≈1.2%/day), ``sigma_i,t`` an
  idiosyncratic GARCH(1,1) around each stock's own vol (1–3.5%/day), ``eps`` Student-t (4 d.o.f.) scaled to unit
  variance, jumps rare ±5–15% news moves. Betas ≈ N(1, 0.25).
- Open = prev close × (1 + 0.85·r + noise), so most of a move is overnight; shadows ≈ 0.85% × Gamma(9)/9 each,
  the same scale for every stock, so that normal candles rarely reach where RobustZScoreNorm clips KLEN and KLOW
  and an event bar stands out in the processed features. High/low stay inside the limit band.
- Volume: AR(1) log liquidity plus a reaction to |r|. Suspensions are runs of flat zero-volume bars (≈2.5% of bars);
  the move a suspended stock misses is realised, within the limit, when it resumes.
- Universe churn: ≈20% of instruments list late, a few delist; index membership (``membership``) has joins,
  removals and re-entries, ≈85% of instruments are members on a given day.
- ``factor`` starts at 1 and steps up at yearly ex-dividend dates (and the odd bonus-share issue).
- Benchmark ``SYN_INDEX``: cap-weighted (static random caps) return of the members, close and change.

Planted expected return of the label ``Ref($close,-2)/Ref($close,-1)-1`` of day T (the return from close T+1 to
close T+2), a function of bars up to T only; ``extras["expected_label_return"]`` holds its sum, aligned with the label,
and ``extras["expected_label_components"]`` each part:

- ``reversal``: −0.10 · clip(RESI5_T, ±0.024). Short-term reversal of the 5-day residual (Alpha158 RESI5).
- ``candle``: 0.24 · (min(KLOW_T, 0.017) − 0.0085). A long lower shadow (Alpha158 KLOW) predicts a rebound.
- ``event_mid``: 0.004 · 1[an event bar in T−14 … T−5] − const.
- ``event``: 0.004 · 1[an event bar in T−19 … T−15] − const: the long-lag component, invisible to any window
  shorter than 16 days (step_len 5 or 15 sees none of it, step_len 20 all of it).

Event bars (2.5% of trading bars) are range expansions with both shadows 4–7% long, visible only in that day's
KLEN/KLOW (volume is unaffected, so no rolling feature carries them). Neither event component is visible to a 5-day
window. ``event_mid`` exists for learnability: at qlib's init and lr 1e-3 a GRU does not discover a 15-day memory from
the 15–19-day band alone (test IC never moved past the two short components in 14 epochs, even with the drift tripled;
a toy GRU with a clean 0.4σ effect at ages 15–19 still had zero correlation after 500 steps), while an effect that
starts 5 days back is picked up after ~200–300 steps and the memory then stretches over the whole 5–19-day band.

The caps sit near where RobustZScoreNorm clips at 3, so each component is linear in a processed Alpha158-20
feature (or, for the events, in spike indicators of KLEN/KLOW over the last 20 days: an OLS of the total on them has
R² > 0.9). Measured on the default test segment (DatasetConfig().test), seed 0:

    market (instruments × days)   oracle IC   reversal   candle   event_mid   event
    200 × 600 (schema default)      0.131       0.034     0.037     0.098     0.067
    400 × 600 (the preset)          0.133       0.039     0.044     0.094     0.072

(seed 1: 0.140 and 0.124). The qlib GRU of ``presets.synthetic_default()`` (400 instruments) reaches 0.82–0.84 × the
oracle IC in 4 epochs and 0.84–0.85 × in 5 with step_len 20, and 0.42 × with step_len 5 (which learns only
``reversal`` and ``candle``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from distgru.config.schema import SyntheticConfig
from distgru.data.panel import BarPanel
from distgru.data.synthetic_dynamics import (
    CANDLE_CAP,
    CANDLE_CENTER,
    CANDLE_COEF,
    EVENT_BANDS,
    EVENT_DRIFT,
    EVENT_RATE,
    REVERSAL_CAP,
    REVERSAL_COEF,
    Draws,
    Params,
    simulate,
    student_t,
)
from distgru.metrics import daily_ic as metrics_daily_ic

BENCHMARK = "SYN_INDEX"
PLANTED_LABEL = "Ref($close, -2) / Ref($close, -1) - 1"
"""The label whose expected value the market plants (qlib's default label, the close-to-close return T+1→T+2)."""
COMPONENTS = {
    "reversal": (f"-{REVERSAL_COEF} * clip(RESI5_T, ±{REVERSAL_CAP}): short-term reversal of the 5-day residual"),
    "candle": (f"{CANDLE_COEF} * (min(KLOW_T, {CANDLE_CAP}) - {CANDLE_CENTER}): a long lower shadow predicts a "
               "rebound"),
    **{name: (f"{EVENT_DRIFT} * [range-expansion bar (KLEN and KLOW spike) {lo}-{hi} days before T] - const: "
              f"needs a window of >= {lo + 1} days") for name, (lo, hi) in EVENT_BANDS.items()},
}


def generate_market(cfg: SyntheticConfig) -> BarPanel:
    """A deterministic synthetic market of ``cfg.n_instruments`` × ``cfg.n_days`` business days.

    Bit-identical for the same config. ``extras`` holds ``expected_label_return`` (float32 [N, D], the planted
    expected value of the default label given bars up to each day, NaN where there is no bar or no label day),
    ``expected_label_components`` (the same per component), ``event`` (bool [N, D], the event bars),
    ``components`` (name → formula) and ``label`` (the label expression it is aligned with).
    """
    rng = np.random.default_rng(np.random.PCG64(cfg.seed))
    n, d = cfg.n_instruments, cfg.n_days
    calendar = pd.bdate_range(cfg.start, periods=d)
    listed, membership = _universe(rng, n, d)
    suspended = _suspensions(rng, listed)
    events = (rng.random((n, d)) < EVENT_RATE) & listed & ~suspended
    params = Params(
        beta=np.clip(rng.normal(1.0, 0.25, n), 0.3, 1.8),
        vol=np.clip(np.exp(rng.normal(np.log(0.019), 0.2, n)), 0.01, 0.035),
        first_close=np.exp(rng.normal(np.log(15.0), 0.6, n)),
        base_volume=np.exp(rng.normal(np.log(2e7), 0.8, n)),
    )
    jump_on = rng.random((n, d)) < 0.005
    draws = Draws(
        market_eps=student_t(rng, 5.0, d),
        idio_eps=student_t(rng, 4.0, (n, d)),
        jumps=jump_on * rng.choice([-1.0, 1.0], (n, d)) * rng.uniform(0.05, 0.15, (n, d)),
        gap_noise=rng.standard_normal((n, d)),
        upper=rng.gamma(9.0, 1 / 9, (n, d)),
        lower=rng.gamma(9.0, 1 / 9, (n, d)),
        event_shadow=rng.uniform(0.04, 0.07, (2, n, d)),
        volume_noise=rng.standard_normal((n, d)),
    )
    paths = simulate(draws, params, listed, suspended, events)
    factor = _factors(rng, listed)
    caps = np.exp(rng.normal(0.0, 1.0, n))

    close = paths.close
    prev = np.concatenate([np.full((n, 1), np.nan), close[:, :-1]], axis=1)
    change = close / prev - 1
    f32 = {k: v.astype(np.float32) for k, v in {
        "open": paths.open, "high": paths.high, "low": paths.low, "close": close,
        # qlib keeps volume in adjusted units: shares / factor.
        "volume": paths.volume, "factor": np.where(listed, factor, np.nan), "change": change,
    }.items()}

    components = {k: _align_to_label(v, close) for k, v in paths.expected.items()}
    expected = sum(components.values())
    extras: dict[str, object] = {
        "expected_label_return": expected.astype(np.float32),
        "expected_label_components": {k: v.astype(np.float32) for k, v in components.items()},
        "event": paths.event,
        "components": dict(COMPONENTS),
        "label": PLANTED_LABEL,
        "market_return": paths.market_return.astype(np.float32),
    }
    return BarPanel(
        calendar=calendar,
        instruments=tuple(f"SYN{i:04d}" for i in range(n)),
        fields=f32,
        membership=membership & listed,
        benchmark=_benchmark(change, membership & listed, caps),
        benchmark_name=BENCHMARK,
        source=f"synthetic(n_instruments={n}, n_days={d}, start={cfg.start}, seed={cfg.seed})",
        extras=extras,
    )


def qlib_label(panel: BarPanel) -> np.ndarray:
    """The default label ``Ref($close,-2)/Ref($close,-1)-1``, float64 [N, D] (NaN at the end of the data)."""
    close = panel.field("close").astype(np.float64)
    label = np.full_like(close, np.nan)
    label[:, :-2] = close[:, 2:] / close[:, 1:-1] - 1
    return label


def daily_ic(score: np.ndarray, label: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-day Pearson IC [D] of dense [N, D] arrays over the cells where ``mask`` holds (the evaluation's
    ``daily_ic``, so the oracle IC is computed exactly as a model's IC is)."""
    day = np.broadcast_to(np.arange(mask.shape[1]), mask.shape)
    return metrics_daily_ic(np.where(mask, score, np.nan), label, day)


def oracle_ic(panel: BarPanel, start: str | None = None, end: str | None = None,
              score: np.ndarray | None = None) -> float:
    """Mean daily IC of ``score`` (default: the planted expected label return) against the realised default label,
    over member rows of days in [start, end] (inclusive), as qlib's ``calc_ic`` averages it."""
    if score is None:
        score = np.asarray(panel.extras["expected_label_return"], dtype=np.float64)
    lo = 0 if start is None else int(panel.calendar.searchsorted(pd.Timestamp(start), "left"))
    hi = len(panel.calendar) if end is None else int(panel.calendar.searchsorted(pd.Timestamp(end), "right"))
    ic = daily_ic(score, qlib_label(panel), panel.membership)[lo:hi]
    return float(np.nanmean(ic))


def _align_to_label(expected_return: np.ndarray, close: np.ndarray) -> np.ndarray:
    """Day t's expected return → the label slot of day t − 2 (whose label is that return); NaN without a bar."""
    out = np.full_like(expected_return, np.nan)
    out[:, :-2] = expected_return[:, 2:]
    return np.where(np.isfinite(close), out, np.nan)


def _universe(rng: np.random.Generator, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Listing spans and index membership spans, bool [N, D] each."""
    days = np.arange(d)
    late = rng.random(n) < 0.2
    first = np.where(late, rng.integers(20, int(d * 0.75), n), 0)
    delist = (rng.random(n) < 0.05) & ~late
    last = np.where(delist, rng.integers(int(d * 0.35), d - 10, n), d - 1)
    listed = (days >= first[:, None]) & (days <= last[:, None])

    # Stocks join the index at the start or some months after listing, some are removed, some come back.
    initial = ~late & (rng.random(n) < 0.97)
    join = np.where(initial, 0, first + rng.integers(20, 160, n))
    removed = rng.random(n) < 0.15
    out = np.where(removed, rng.integers(0, d, n), d)
    out = np.maximum(out, join + 60)
    back = np.where(removed & (rng.random(n) < 0.5), out + rng.integers(40, 160, n), d)
    member = (days >= join[:, None]) & ((days < out[:, None]) | (days >= back[:, None]))
    # Delisting is announced: the stock leaves the index some days before its last bar.
    member &= days <= (last - np.where(delist, rng.integers(0, 10, n), 0))[:, None]
    return listed, member & listed


def _suspensions(rng: np.random.Generator, listed: np.ndarray) -> np.ndarray:
    """Runs of suspended days: starts at 0.5% of bars, lengths 1 + geometric (mean ≈4, a tail of long halts)."""
    n, d = listed.shape
    starts = (rng.random((n, d)) < 0.005) & listed
    lengths = 1 + rng.geometric(0.3, (n, d)) + (rng.random((n, d)) < 0.05) * rng.integers(5, 30, (n, d))
    out = np.zeros((n, d), dtype=bool)
    for i, t in zip(*np.nonzero(starts), strict=True):
        out[i, t: t + lengths[i, t]] = True
    # A stock never starts life suspended, so its first bar has a price-discovering open.
    first = listed.argmax(axis=1)
    out[np.arange(n), first] = False
    return out & listed


def _factors(rng: np.random.Generator, listed: np.ndarray) -> np.ndarray:
    """Adjustment factor, float64 [N, D]: 1 at the start, ×(1 + yield) at each yearly ex-dividend date, and a
    one-off bonus-share step for some stocks."""
    n, d = listed.shape
    steps = np.ones((n, d))
    ex_day = rng.integers(0, 250, n)
    for year_start in range(0, d, 250):
        day = year_start + ex_day
        ok = day < d
        steps[np.nonzero(ok)[0], day[ok]] *= 1 + rng.uniform(0.005, 0.03, ok.sum())
    bonus = rng.random(n) < 0.08
    bonus_day = rng.integers(1, d, n)
    steps[np.nonzero(bonus)[0], bonus_day[bonus]] *= rng.choice([1.2, 1.5, 2.0], bonus.sum())
    return np.cumprod(steps, axis=1)


def _benchmark(change: np.ndarray, member: np.ndarray, caps: np.ndarray) -> dict[str, np.ndarray]:
    """Cap-weighted index of the members' daily changes, starting at 3000."""
    ok = member & np.isfinite(change)
    w = np.where(ok, caps[:, None], 0.0)
    idx_change = (np.where(ok, change, 0.0) * w).sum(0) / np.maximum(w.sum(0), 1e-12)
    idx_change[0] = np.nan
    close = 3000.0 * np.cumprod(1 + np.nan_to_num(idx_change))
    return {"close": close.astype(np.float32), "change": idx_change.astype(np.float32)}
