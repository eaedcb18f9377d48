"""IC-family metrics against hand computations and against pandas' own per-day corr (the qlib reference)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distgru.metrics import (
    as_frame,
    daily_ic,
    daily_long_short,
    daily_table,
    heatmap_frame,
    monthly_table,
    signal_metrics,
)

NAN = np.nan
# (day, scores, labels); worked out by hand below.
HAND = [
    # x = y up to a swap of the middle pair: dx = (-1.5,-.5,.5,1.5), dy = (-1.5,.5,-.5,1.5) → 4/√(5·5) = 0.8.
    ("2024-01-02", [1, 2, 3, 4], [1, 3, 2, 4]),
    # Pearson: dx = (-1.5,-.5,-.5,2.5), dy = (-.15,-.05,.15,.05) → 0.3/√(9·0.05) = √0.2.
    # Ranks with a tie: x → (1, 2.5, 2.5, 4), y → (1, 2, 4, 3): 3/√(4.5·5) = √0.4.
    ("2024-01-03", [1, 2, 2, 5], [0.1, 0.2, 0.4, 0.3]),
    # The NaN-score row is dropped before ranking: y ranks over (1, 3, 4) are (1, 2, 3) → RankIC 1
    # (ranking the label first would give ranks 1, 3, 4 and 0.98). Pearson: dx = (-1,0,1), dy = (-5/3,1/3,4/3)
    # → 3/√(2·14/3) = 3√(3/28).
    ("2024-02-01", [1, 2, 3, NAN], [1, 3, 4, 2]),
    # One valid pair: undefined, left out of the means.
    ("2024-02-02", [1, 2], [0.5, NAN]),
    # Perfectly reversed.
    ("2024-02-05", [1, 2, 3], [3, 2, 1]),
]
IC = [0.8, math.sqrt(0.2), 3 * math.sqrt(3 / 28), NAN, -1.0]
RANK_IC = [0.8, math.sqrt(0.4), 1.0, NAN, -1.0]


def hand_frame() -> pd.DataFrame:
    rows = [(pd.Timestamp(d), f"S{i}", s, lab) for d, scores, labels in HAND
            for i, (s, lab) in enumerate(zip(scores, labels, strict=True))]
    return pd.DataFrame(rows, columns=["datetime", "instrument", "score", "label"])


def mean_std(values: list[float]) -> tuple[float, float]:
    v = [x for x in values if not math.isnan(x)]
    m = sum(v) / len(v)
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def test_daily_ic_by_hand() -> None:
    daily = daily_table(hand_frame())
    np.testing.assert_allclose(daily["IC"], IC, rtol=0, atol=1e-12)
    np.testing.assert_allclose(daily["RankIC"], RANK_IC, rtol=0, atol=1e-12)
    assert daily["n"].tolist() == [4, 4, 3, 1, 3]


def test_signal_metrics_by_hand() -> None:
    m = signal_metrics(hand_frame())
    ic_mean, ic_std = mean_std(IC)
    ric_mean, ric_std = mean_std(RANK_IC)
    assert m["IC"] == pytest.approx(ic_mean, abs=1e-12)
    assert m["ICIR"] == pytest.approx(ic_mean / ic_std, abs=1e-12)  # ddof=1, not annualised
    assert m["RankIC"] == pytest.approx(ric_mean, abs=1e-12)
    assert m["RankICIR"] == pytest.approx(ric_mean / ric_std, abs=1e-12)
    assert m["hit_rate"] == 0.75  # 3 of the 4 defined days have IC > 0
    assert m["n_days"] == 4 and m["n_pairs"] == 15


def test_series_pair_input_and_numpy_fast_path_agree() -> None:
    frame = hand_frame()
    indexed = frame.set_index(["datetime", "instrument"])
    from_series = daily_table(indexed["score"], indexed["label"])
    pd.testing.assert_frame_equal(from_series, daily_table(frame))
    day = frame["datetime"].to_numpy()
    np.testing.assert_allclose(daily_ic(frame["score"], frame["label"], day), IC, atol=1e-12)
    np.testing.assert_allclose(daily_ic(frame["score"], frame["label"], day, "spearman"), RANK_IC, atol=1e-12)
    with pytest.raises(ValueError, match="label"):
        as_frame(indexed["score"])


def test_long_short_decile_by_hand() -> None:
    # Day 0: 20 names, label = score/100: top decile = 2 names (0.19, 0.18), bottom = (0.00, 0.01) → 0.18.
    # Day 1: 9 valid pairs → floor(0.9) = 0 names per decile → undefined.
    score = np.r_[np.arange(20.0), np.arange(9.0), 5.0]
    label = np.r_[np.arange(20.0) / 100, np.arange(9.0), NAN]
    day = np.r_[np.zeros(20), np.ones(10)]
    spread = daily_long_short(score, label, day)
    assert spread[0] == pytest.approx(0.18) and math.isnan(spread[1])


def test_monthly_table_and_heatmap() -> None:
    monthly = monthly_table(daily_table(hand_frame()))
    assert monthly.loc[(2024, 1), "IC"] == pytest.approx((0.8 + math.sqrt(0.2)) / 2)
    assert monthly.loc[(2024, 2), "IC"] == pytest.approx((3 * math.sqrt(3 / 28) - 1) / 2)
    assert monthly.loc[(2024, 2), "n_days"] == 2
    grid = heatmap_frame(monthly)
    assert grid.shape == (1, 12) and grid.loc[2024, 3:].isna().all()


def pandas_reference(frame: pd.DataFrame) -> pd.DataFrame:
    """qlib's calc_ic: per-datetime pandas corr (NaN pairs dropped); Spearman via DataFrame.corr (no scipy)."""
    g = frame.groupby("datetime")
    return pd.DataFrame({
        "IC": g.apply(lambda x: x["score"].corr(x["label"])),
        "RankIC": g.apply(lambda x: x[["score", "label"]].corr(method="spearman").iloc[0, 1]),
    })


def random_frame(rng: np.random.Generator, days: int, names: int) -> pd.DataFrame:
    idx = pd.MultiIndex.from_product([pd.bdate_range("2020-01-01", periods=days), range(names)],
                                     names=["datetime", "instrument"])
    score = rng.normal(size=len(idx)).round(1)  # rounding makes plenty of ties
    label = 0.1 * score + rng.normal(size=len(idx))
    label[rng.random(len(idx)) < 0.1] = NAN
    score[rng.random(len(idx)) < 0.02] = NAN
    return pd.DataFrame({"score": score.astype(np.float32), "label": label.astype(np.float32)},
                        index=idx).reset_index()


def test_matches_pandas_reference_on_random_data() -> None:
    frame = random_frame(np.random.default_rng(0), days=60, names=150)
    ours, ref = daily_table(frame), pandas_reference(frame)
    np.testing.assert_allclose(ours["IC"], ref["IC"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours["RankIC"], ref["RankIC"], rtol=0, atol=1e-9)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.one_of(st.none(), st.integers(-3, 3)),
                          st.one_of(st.none(), st.integers(-3, 3))), min_size=1, max_size=40))
def test_matches_pandas_on_small_tied_cases(rows: list[tuple[int, int | None, int | None]]) -> None:
    frame = pd.DataFrame({
        "datetime": pd.to_datetime("2021-01-01") + pd.to_timedelta([r[0] for r in rows], unit="D"),
        "instrument": [f"S{i}" for i in range(len(rows))],
        "score": [NAN if r[1] is None else float(r[1]) for r in rows],
        "label": [NAN if r[2] is None else float(r[2]) for r in rows],
    })
    ours, ref = daily_table(frame), pandas_reference(frame)
    np.testing.assert_allclose(ours["IC"], ref["IC"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(ours["RankIC"], ref["RankIC"], rtol=0, atol=1e-9)
