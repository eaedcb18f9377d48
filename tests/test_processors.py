"""qlib's processors on tiny hand-made arrays: statistics by hand, fit window, infer/learn split, saved state."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from distgru.config import ConfigError
from distgru.processing.processors import (
    CSRankNorm,
    CSZScoreNorm,
    DropnaLabel,
    Fillna,
    ProcessorState,
    RobustZScoreNorm,
    fit_processors,
)

ROBUST = RobustZScoreNorm(clip_outlier=True)
FILL = Fillna()
DROP = DropnaLabel(fields_group="label")
RANK = CSRankNorm(fields_group="label")
ZSCORE = CSZScoreNorm(fields_group="label")


def run(features, label, membership, fit_days, infer=(ROBUST, FILL), learn=(DROP, RANK)):
    features = np.asarray(features, dtype=np.float32)
    return fit_processors(
        features.copy(), np.asarray(label, dtype=np.float32), np.asarray(membership, dtype=bool),
        np.asarray(fit_days, dtype=bool), infer=list(infer), learn=list(learn), feature_set="test",
        feature_names=tuple(f"F{i}" for i in range(features.shape[-1])), columns=None,
        label_expression="Ref($close, -2) / Ref($close, -1) - 1", fit_start="d0", fit_end="d1")


def panel_5x2():
    """5 instruments × 2 days × 1 feature; day 0 is the fit window, instrument 4 is not a member on day 0."""
    f = np.array([[[1.0], [7.0]], [[2.0], [7.0]], [[3.0], [7.0]], [[100.0], [7.0]], [[-50.0], [7.0]]])
    label = np.array([[0.1, 0.2], [0.3, np.nan], [0.3, 0.0], [-0.2, 0.5], [0.9, 0.9]])
    member = np.ones((5, 2), dtype=bool)
    member[4, 0] = False
    return f, label, member, np.array([True, False])


def test_robust_zscore_by_hand():
    f, label, member, fit_days = panel_5x2()
    state, out = run(f, label, member, fit_days)
    # Fit rows: day 0 members only → [1, 2, 3, 100]: median 2.5, |x − 2.5| = [1.5, .5, .5, 97.5] → MAD 1.0.
    median, scale = state.infer_stats[0]["median"], state.infer_stats[0]["scale"]
    assert median.dtype == np.float32 and median[0] == 2.5
    assert scale[0] == np.float32((np.float32(1.0) + np.float32(1e-12)) * np.float32(1.4826))
    expected = np.clip((f[..., 0] - 2.5) / scale[0], -3, 3)
    np.testing.assert_allclose(out.features[..., 0], expected, rtol=1e-6)
    assert out.features[3, 0, 0] == 3.0 and out.features[4, 0, 0] == -3.0  # clipped outliers
    assert out.features.dtype == np.float32


def test_robust_zscore_without_clip_and_fillna_value():
    f, label, member, fit_days = panel_5x2()
    f[0, 1, 0] = np.nan
    state, out = run(f, label, member, fit_days,
                     infer=[RobustZScoreNorm(clip_outlier=False), Fillna(fill_value=-9.0)])
    assert out.features[3, 0, 0] == pytest.approx(97.5 / 1.4826, rel=1e-6)
    assert out.features[0, 1, 0] == -9.0
    assert not np.isnan(out.features).any()


def test_fit_window_and_membership_exclude_other_rows():
    f, label, member, fit_days = panel_5x2()
    state, _ = run(f, label, member, fit_days)
    changed = f.copy()
    changed[:, 1, 0] = [1e6, -1e6, 5, 5, 5]  # outside the fit window
    changed[4, 0, 0] = 1e9  # inside the window but not a member
    state2, _ = run(changed, label, member, fit_days)
    assert state2.infer_stats[0]["median"][0] == state.infer_stats[0]["median"][0]
    assert state2.infer_stats[0]["scale"][0] == state.infer_stats[0]["scale"][0]
    # Widening the window does change them.
    state3, _ = run(changed, label, member, np.array([True, True]))
    assert state3.infer_stats[0]["median"][0] != state.infer_stats[0]["median"][0]


def test_each_processor_is_fitted_on_the_previous_output():
    f, label, member, fit_days = panel_5x2()
    f[1, 0, 0] = np.nan
    fill_first = [Fillna(fill_value=100.0), ROBUST]
    state, _ = run(f, label, member, fit_days, infer=fill_first)
    # Fitted after Fillna: [1, 100, 3, 100] → median 51.5, |x − 51.5| = [50.5, 48.5, 48.5, 48.5] → MAD 48.5.
    assert state.infer_stats[1]["median"][0] == 51.5
    assert state.infer_stats[1]["scale"][0] == pytest.approx(48.5 * 1.4826, rel=1e-6)


def test_cs_rank_norm_ties_and_dropna_label():
    f, label, member, fit_days = panel_5x2()
    _, out = run(f, label, member, fit_days)
    # Day 0 members' labels [.1, .3, .3, -.2] (instrument 4 absent): ranks 2, 3.5, 3.5, 1 of 4.
    pct = np.array([2, 3.5, 3.5, 1]) / 4
    np.testing.assert_allclose(out.label_learn[:4, 0], (pct - 0.5) * 3.46, rtol=1e-6)
    assert np.isnan(out.label_learn[4, 0])
    # Day 1: instrument 1's NaN label is dropped (DK_L) → 4 rows [.2, 0, .5, .9].
    assert np.isnan(out.label_learn[1, 1])
    np.testing.assert_allclose(out.label_learn[[0, 2, 3, 4], 1], (np.array([2, 1, 3, 4]) / 4 - 0.5) * 3.46,
                               rtol=1e-6)
    # DK_I keeps the row DropnaLabel removed: its features are processed and its infer label is raw.
    assert not np.isnan(out.features[1, 1]).any() and np.isnan(out.label_infer[1, 1])
    np.testing.assert_array_equal(out.label_infer[:, 0], label[:, 0].astype(np.float32))


def frame_of(values: np.ndarray, rows: np.ndarray) -> pd.Series:
    n, d = values.shape
    idx = pd.MultiIndex.from_product([range(n), range(d)], names=["instrument", "datetime"])
    return pd.Series(values.ravel(), index=idx)[rows.ravel()]


def test_cross_sectional_processors_match_pandas():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 6, size=(40, 7)).astype(np.float64)  # many ties
    label[rng.random(label.shape) < 0.2] = np.nan
    member = rng.random(label.shape) < 0.8
    feats = np.zeros((40, 7, 1))
    fit_days = np.ones(7, dtype=bool)
    present = member & ~np.isnan(label)

    _, out = run(feats, label, member, fit_days, learn=[DROP, RANK])
    series = frame_of(label, present)
    expected = (series.groupby("datetime").rank(pct=True) - 0.5) * 3.46
    np.testing.assert_allclose(frame_of(out.label_learn, present), expected.to_numpy(), rtol=1e-6)
    assert np.isnan(out.label_learn[~present]).all()

    _, out = run(feats, label, member, fit_days, learn=[DROP, ZSCORE])
    grouped = series.groupby("datetime")
    # qlib's zscore is (x − x.mean()) / x.std(): pandas std, ddof=1.
    expected = (series - grouped.transform("mean")) / grouped.transform("std")
    np.testing.assert_allclose(frame_of(out.label_learn, present), expected.to_numpy(), rtol=1e-5)


def test_learn_chain_sees_infer_output():
    f, label, member, fit_days = panel_5x2()
    infer = [ROBUST, FILL, Fillna(fields_group="label", fill_value=0.0)]
    _, out = run(f, label, member, fit_days, infer=infer, learn=[DROP])
    # The label NaN was filled in DK_I, so DropnaLabel on top of it keeps the row.
    assert out.label_infer[1, 1] == 0.0 and out.label_learn[1, 1] == 0.0


def test_invalid_chains_are_config_errors():
    f, label, member, fit_days = panel_5x2()
    with pytest.raises(ConfigError, match="learn-only"):
        run(f, label, member, fit_days, infer=[DROP])
    with pytest.raises(ConfigError, match="on features is not supported"):
        run(f, label, member, fit_days, learn=[CSZScoreNorm()])


def test_saved_state_round_trip_gives_identical_output(tmp_path):
    rng = np.random.default_rng(1)
    f = rng.normal(size=(30, 12, 3)).astype(np.float32)
    f[rng.random(f.shape) < 0.1] = np.nan
    f[:, :, 2] = np.nan  # an all-NaN column: NaN statistics must survive the JSON round trip
    label = rng.normal(size=(30, 12)).astype(np.float32)
    label[:, -2:] = np.nan
    member = rng.random((30, 12)) < 0.9
    fit_days = np.arange(12) < 6
    state, out = run(f, label, member, fit_days)
    state.save(tmp_path / "state.json")
    loaded = ProcessorState.load(tmp_path / "state.json")
    again = loaded.transform(f.copy(), label, member)
    for name in ("features", "label_infer", "label_learn"):
        np.testing.assert_array_equal(getattr(again, name), getattr(out, name))
    assert loaded.feature_names == state.feature_names and loaded.infer == state.infer
    assert np.isnan(loaded.infer_stats[0]["median"][2])
