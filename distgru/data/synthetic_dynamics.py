"""The day-by-day simulation behind the synthetic market (see ``distgru.data.synthetic`` for the model).

One loop over days, vectorised over instruments: every planted expected return must be a function of bars already
generated, so prices, candles and the signal are built together, causally.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LIMIT = 0.10
"""Daily price limit (A-share main board): |close/prev_close − 1| ≤ 10%, and high/low stay inside the band too."""

# Resi($close, 5) at the last point is a fixed linear combination of the 5 closes (OLS on t = 1..5).
RESI5_WEIGHTS = np.array([0.2, 0.0, -0.2, -0.4, 0.4])

SHADOW_SCALE = 0.0085
"""Mean upper/lower shadow as a fraction of price, the same for every stock: shadows proportional to each stock's
vol would make the pooled KLEN/KLOW distribution so skewed that normal bars often reach RobustZScoreNorm's clip,
where they look exactly like event bars."""

REVERSAL_COEF = 0.10
"""Expected label return per unit of RESI5 (minus sign: short-term reversal)."""
REVERSAL_CAP = 0.024
"""|RESI5| beyond this adds nothing (≈ where RobustZScoreNorm clips at 3): keeps the component linear in the
processed feature a model sees."""
CANDLE_COEF = 0.24
"""Expected label return per unit of KLOW (a long lower shadow: buyers absorbed the sell-off)."""
CANDLE_CAP = 0.017
"""KLOW beyond this adds nothing (≈ RobustZScoreNorm's clip)."""
CANDLE_CENTER = 0.0085
"""Subtracted so the candle component averages ≈ 0 instead of drifting every price up."""
EVENT_DRIFT = 0.004
"""Expected label return while an event bar is in one of the bands below (per band; the bands add)."""
EVENT_BANDS = {"event_mid": (5, 14), "event": (15, 19)}
"""Event age ranges (trading days between the event bar and the feature day T) with an effect on T's label:
``event`` (15–19 days back) needs a window of ≥ 16 days; ``event_mid`` (5–14) one of ≥ 6. Both are beyond a 5-day
window. The mid band is there for learnability: a freshly initialised GRU forgets within a few steps, and at lr 1e-3
it does not discover a 15-day memory from the 15–19 band alone (0 IC after 14 epochs); with the effect starting at
5 days it first learns a short memory, then stretches it to the whole band (both learned in 3–5 epochs of the
preset's 400-instrument market)."""
EVENT_LAGS = (EVENT_BANDS["event"][0], EVENT_BANDS["event"][1])
"""Age range of the long-lag ``event`` component."""
EVENT_RATE = 0.025
"""Per instrument-day probability of a range-expansion event."""


def event_center(band: tuple[int, int]) -> float:
    """Subtracted so an event component averages ≈ 0: drift × P(some event bar in the band)."""
    return EVENT_DRIFT * (1.0 - (1.0 - EVENT_RATE) ** (band[1] - band[0] + 1))


@dataclass(frozen=True)
class Draws:
    """All random inputs, drawn up front in a fixed order so the loop itself is deterministic arithmetic."""

    market_eps: np.ndarray  # [D] unit-variance Student-t
    idio_eps: np.ndarray  # [N, D] unit-variance Student-t
    jumps: np.ndarray  # [N, D] news jumps (mostly 0)
    gap_noise: np.ndarray  # [N, D] standard normal
    upper: np.ndarray  # [N, D] Gamma, mean 1: upper shadow in units of SHADOW_SCALE
    lower: np.ndarray  # [N, D] Gamma, mean 1: lower shadow
    event_shadow: np.ndarray  # [2, N, D] extra shadow fraction on event days
    volume_noise: np.ndarray  # [N, D] standard normal


@dataclass(frozen=True)
class Params:
    """Per-instrument constants."""

    beta: np.ndarray  # [N] market beta
    vol: np.ndarray  # [N] long-run idiosyncratic daily vol
    first_close: np.ndarray  # [N] adjusted close level before the first bar
    base_volume: np.ndarray  # [N] typical adjusted volume (shares / factor)


@dataclass(frozen=True)
class Paths:
    """Simulated adjusted bars and the planted expected returns, all float64 [N, D] (NaN = no bar)."""

    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray
    market_return: np.ndarray  # [D]
    expected: dict[str, np.ndarray]
    """Component name → expected return of day t (set at t − 2 from information up to t − 2)."""
    event: np.ndarray  # bool [N, D]: range-expansion event bars


def student_t(rng: np.random.Generator, df: float, size: tuple[int, ...] | int) -> np.ndarray:
    """Student-t scaled to unit variance (fat tails without changing the vol the GARCH sets)."""
    return rng.standard_t(df, size) / np.sqrt(df / (df - 2.0))


def simulate(draws: Draws, params: Params, listed: np.ndarray, suspended: np.ndarray, events: np.ndarray) -> Paths:
    """Run the market forward. ``listed``/``suspended``/``events`` are bool [N, D] fixed beforehand (events only on
    trading days: a suspended bar cannot show one).

    Suspended days are flat zero-volume bars; the return the stock would have made accumulates and is realised,
    within the limit, on the day it resumes.
    """
    n, d = listed.shape
    nan = np.full((n, d), np.nan)
    open_, high, low, close, volume = nan.copy(), nan.copy(), nan.copy(), nan.copy(), nan.copy()
    names = ("reversal", "candle", *EVENT_BANDS)
    expected = {k: np.zeros((n, d + 2)) for k in names}
    market = np.zeros(d)

    # Market GARCH(1,1) around 1.2%/day; idiosyncratic GARCH(1,1) around each stock's own vol.
    m_var, m_alpha, m_beta = 0.012**2, 0.10, 0.87
    i_alpha, i_beta = 0.08, 0.90
    hm = m_var
    h = params.vol**2
    prev_close = params.first_close.copy()
    pending = np.zeros(n)
    log_vol_state = np.zeros(n)
    closes = np.full((n, 5), np.nan)  # last five closes, oldest first, for RESI5

    for t in range(d):
        m = np.sqrt(hm) * draws.market_eps[t]
        hm = m_var * (1 - m_alpha - m_beta) + m_alpha * m * m + m_beta * hm
        market[t] = m
        sigma = np.sqrt(h)
        eps = draws.idio_eps[:, t]
        # Clip the shock feeding the variance so one t-tail draw cannot blow the GARCH up.
        h = params.vol**2 * (1 - i_alpha - i_beta) + h * (i_alpha * np.minimum(eps * eps, 25.0) + i_beta)

        mu = sum(expected[k][:, t] for k in names)
        latent = params.beta * m + mu + sigma * eps + draws.jumps[:, t] + pending
        live = listed[:, t]
        trading = live & ~suspended[:, t]
        ret = np.where(trading, np.clip(latent, -LIMIT, LIMIT), 0.0)
        # The move a suspended stock misses is owed on resumption; what the limit cuts off is lost.
        pending = np.where(live & suspended[:, t], latent, 0.0)
        c = prev_close * (1 + ret)

        gap = np.clip(0.85 * ret + 0.25 * sigma * draws.gap_noise[:, t], -LIMIT, LIMIT)
        o = np.where(trading, prev_close * (1 + gap), c)
        up = SHADOW_SCALE * draws.upper[:, t] + events[:, t] * draws.event_shadow[0, :, t]
        dn = SHADOW_SCALE * draws.lower[:, t] + events[:, t] * draws.event_shadow[1, :, t]
        hi = np.minimum(np.maximum(o, c) * (1 + up), prev_close * (1 + LIMIT))
        lo = np.maximum(np.minimum(o, c) * (1 - dn), prev_close * (1 - LIMIT))
        hi = np.where(trading, hi, c)
        lo = np.where(trading, lo, c)

        # Log volume: persistent AR(1) liquidity state plus a reaction to the size of the move.
        log_vol_state = 0.85 * log_vol_state + 0.25 * draws.volume_noise[:, t]
        v = params.base_volume * np.exp(log_vol_state + 0.6 * np.abs(ret) / params.vol)
        v = np.where(trading, v, 0.0)

        open_[:, t] = np.where(live, o, np.nan)
        high[:, t] = np.where(live, hi, np.nan)
        low[:, t] = np.where(live, lo, np.nan)
        close[:, t] = np.where(live, c, np.nan)
        volume[:, t] = np.where(live, v, np.nan)
        prev_close = np.where(live, c, prev_close)

        # Plant the expected return of day t + 2 (the label of day t) from what day t shows.
        closes = np.concatenate([closes[:, 1:], np.where(live, c, np.nan)[:, None]], axis=1)
        resi5 = np.nan_to_num(closes @ RESI5_WEIGHTS / closes[:, -1])  # NaN until 5 bars exist → no signal
        klow = np.where(live, (np.minimum(o, c) - lo) / o, 0.0)
        expected["reversal"][:, t + 2] = -REVERSAL_COEF * np.clip(resi5, -REVERSAL_CAP, REVERSAL_CAP)
        expected["candle"][:, t + 2] = np.where(live, CANDLE_COEF * (np.minimum(klow, CANDLE_CAP) - CANDLE_CENTER), 0)
        for name, (lo_lag, hi_lag) in EVENT_BANDS.items():
            if t >= lo_lag:
                window = events[:, max(t - hi_lag, 0): t - lo_lag + 1]
                expected[name][:, t + 2] = np.where(
                    live, EVENT_DRIFT * window.any(axis=1) - event_center((lo_lag, hi_lag)), 0.0)

    return Paths(open=open_, high=high, low=low, close=close, volume=volume, market_return=market,
                 expected={k: v[:, :d] for k, v in expected.items()}, event=events)
