"""Signal metrics of predictions against the raw label: the IC family as qlib's ``calc_ic`` and ``SigAnaRecord``.

Definitions (per datetime t, over the rows where both score and label are non-NaN, as pandas ``corr`` drops
NaN pairs):

- ``IC_t``: Pearson correlation of score and label. ``RankIC_t``: Spearman, i.e. Pearson of the average ranks
  (ties share the mean of their positions) computed on those pairs only. Fewer than 2 pairs or a constant side
  gives NaN for that day.
- ``IC = mean(IC_t)``, ``ICIR = mean(IC_t) / std(IC_t, ddof=1)`` over days with a defined IC; likewise RankIC and
  RankICIR. Not annualised, exactly as qlib reports them.
- ``long_short_t``: mean label of the top decile by score minus mean label of the bottom decile, each decile being
  ``floor(0.1 * n_t)`` rows of the n_t valid pairs (NaN when that is 0; ties at the cut are broken by row order).
  ``long_short`` is its mean over days: a daily, non-annualised return spread of an equal-weight long/short book.
  qlib's own ``calc_long_short_return`` uses quintiles and halves the spread; this one does neither.
- ``hit_rate``: the fraction of days with a defined IC on which ``IC_t > 0``.

``daily_ic`` is the numpy fast path the trainer calls every epoch; every frame-level function goes through it, and
the tests hold it to pandas' ``groupby(...).corr`` within 1e-9.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd

LONG_SHORT_QUANTILE = 0.1


def as_frame(pred: pd.DataFrame | pd.Series, label: pd.Series | None = None) -> pd.DataFrame:
    """Predictions as a frame with columns ``datetime, instrument, score, label``.

    Accepts a frame with those columns, a frame indexed ``(datetime, instrument)`` with ``score`` and ``label``
    columns, or a score Series and a label Series on a ``(datetime, instrument)`` MultiIndex (qlib's pred.pkl and
    label.pkl); the label is aligned to the score's index.
    """
    if isinstance(pred, pd.Series):
        if label is None:
            raise ValueError("a score Series needs its label Series (same (datetime, instrument) index)")
        frame = pd.DataFrame({"score": pred, "label": label.reindex(pred.index)})
    else:
        frame = pred if label is None else pred.assign(label=label.reindex(pred.index))
    if "datetime" not in frame.columns:
        frame = frame.reset_index()
    missing = [c for c in ("datetime", "instrument", "score", "label") if c not in frame.columns]
    if missing:
        raise ValueError(f"predictions lack columns {missing}; have {list(frame.columns)}")
    return frame[["datetime", "instrument", "score", "label"]]


def _grouped_rank(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """1-based average ranks of ``values`` within each group (pandas ``rank(method="average")``)."""
    n = len(values)
    order = np.lexsort((values, group))
    v, g = values[order], group[order]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = g[1:] != g[:-1]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    new_tie = new_group.copy()
    new_tie[1:] |= v[1:] != v[:-1]
    tie_first = np.flatnonzero(new_tie)
    tie_last = np.append(tie_first[1:], n) - 1
    tie_mid = (tie_first + tie_last) / 2.0
    ranks = np.empty(n)
    ranks[order] = tie_mid[np.cumsum(new_tie) - 1] - group_start + 1.0
    return ranks


def _grouped_pearson(x: np.ndarray, y: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    count = np.bincount(group, minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        # Two-pass (demeaned) sums: the one-pass sum-of-products formula loses the 1e-9 agreement with pandas.
        dx = x - (np.bincount(group, x, n_groups) / count)[group]
        dy = y - (np.bincount(group, y, n_groups) / count)[group]
        r = np.bincount(group, dx * dy, n_groups) / np.sqrt(
            np.bincount(group, dx * dx, n_groups) * np.bincount(group, dy * dy, n_groups))
    # np.corrcoef (behind pandas' corr) clips rounding overshoot the same way.
    return np.clip(r, -1.0, 1.0)


def _valid_pairs(score: np.ndarray, label: np.ndarray, day_index: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    score = np.asarray(score, dtype=np.float64).ravel()
    label = np.asarray(label, dtype=np.float64).ravel()
    day = np.asarray(day_index).ravel()
    if not len(score) == len(label) == len(day):
        raise ValueError(f"score, label and day_index differ in length: {len(score)}, {len(label)}, {len(day)}")
    _, group = np.unique(day, return_inverse=True)
    n_groups = int(group.max()) + 1 if len(group) else 0
    ok = ~(np.isnan(score) | np.isnan(label))
    return score[ok], label[ok], group[ok], n_groups


def daily_ic(score: np.ndarray, label: np.ndarray, day_index: np.ndarray,
             method: Literal["pearson", "spearman"] = "pearson") -> np.ndarray:
    """Per-day IC (Pearson) or Rank IC (Spearman), one value per distinct ``day_index`` in sorted order.

    Pure numpy (no frames), for early stopping on ~10^5–10^6 predictions. ``day_index`` is any sortable key
    (day numbers, datetime64). Rows with a NaN score or label are dropped per pair; days left with fewer than
    two pairs or a constant side are NaN.
    """
    x, y, group, n_groups = _valid_pairs(score, label, day_index)
    if method == "spearman":
        x, y = _grouped_rank(x, group), _grouped_rank(y, group)
    elif method != "pearson":
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
    return _grouped_pearson(x, y, group, n_groups)


def daily_long_short(score: np.ndarray, label: np.ndarray, day_index: np.ndarray,
                     quantile: float = LONG_SHORT_QUANTILE) -> np.ndarray:
    """Per-day mean label of the top ``quantile`` by score minus that of the bottom one (module docstring)."""
    x, y, group, n_groups = _valid_pairs(score, label, day_index)
    order = np.lexsort((x, group))
    g, ys = group[order], y[order]
    count = np.bincount(g, minlength=n_groups)
    start = np.concatenate(([0], np.cumsum(count)[:-1]))
    position = np.arange(len(g)) - start[g]
    k = np.floor(count * quantile).astype(np.int64)
    bottom = position < k[g]
    top = position >= (count - k)[g]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.bincount(g[top], ys[top], n_groups) - np.bincount(g[bottom], ys[bottom], n_groups)) / k


def daily_table(pred: pd.DataFrame | pd.Series, label: pd.Series | None = None) -> pd.DataFrame:
    """Per-datetime ``IC``, ``RankIC``, ``long_short`` and ``n`` (valid pairs), indexed by sorted datetime."""
    frame = as_frame(pred, label)
    codes, days = pd.factorize(frame["datetime"], sort=True)
    score, lab = frame["score"].to_numpy(np.float64), frame["label"].to_numpy(np.float64)
    valid = ~(np.isnan(score) | np.isnan(lab))
    return pd.DataFrame({
        "IC": daily_ic(score, lab, codes, "pearson"),
        "RankIC": daily_ic(score, lab, codes, "spearman"),
        "long_short": daily_long_short(score, lab, codes),
        "n": np.bincount(codes[valid], minlength=len(days)),
    }, index=pd.DatetimeIndex(days, name="datetime"))


def _mean_ir(series: pd.Series) -> tuple[float, float]:
    mean, std = float(series.mean()), float(series.std(ddof=1))
    return mean, mean / std if std else float("nan")


def summarise(daily: pd.DataFrame) -> dict[str, float]:
    """The headline numbers from a ``daily_table`` (see the module docstring for each definition)."""
    ic, icir = _mean_ir(daily["IC"])
    ric, ricir = _mean_ir(daily["RankIC"])
    defined = daily["IC"].notna()
    return {
        "IC": ic, "ICIR": icir, "RankIC": ric, "RankICIR": ricir,
        "long_short": float(daily["long_short"].mean()),
        "hit_rate": float((daily["IC"][defined] > 0).mean()) if defined.any() else float("nan"),
        "n_days": int(defined.sum()),
        "n_pairs": int(daily["n"].sum()),
    }


def signal_metrics(pred: pd.DataFrame | pd.Series, label: pd.Series | None = None) -> dict[str, float]:
    """IC, ICIR, RankIC, RankICIR (qlib's definitions), long_short, hit_rate, n_days, n_pairs."""
    return summarise(daily_table(pred, label))


def monthly_table(daily: pd.DataFrame) -> pd.DataFrame:
    """Means of the daily ``IC``, ``RankIC``, ``long_short`` per calendar month, indexed (year, month), with the
    month's ICIR (mean/std of its daily ICs) and its number of days with a defined IC."""
    keys = [daily.index.year.rename("year"), daily.index.month.rename("month")]
    grouped = daily.groupby(keys)
    table = grouped[["IC", "RankIC", "long_short"]].mean()
    table["ICIR"] = table["IC"] / grouped["IC"].std(ddof=1)
    table["n_days"] = grouped["IC"].count()
    return table


def heatmap_frame(monthly: pd.DataFrame, column: str = "IC") -> pd.DataFrame:
    """``monthly_table`` column pivoted to a year × month grid (NaN where a month has no data)."""
    grid = monthly[column].unstack("month")
    return grid.reindex(columns=range(1, 13))
