"""qlib operator semantics on hand-made series, and rolling operators against pandas on random data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from distgru.features import ops
from distgru.features.expr import Evaluator, evaluate, parse

nan = np.nan


def row(*values: float) -> np.ndarray:
    return np.array([values], dtype=np.float32)


def ev(text: str, x: np.ndarray, **more: np.ndarray) -> np.ndarray:
    return evaluate(text, {"close": x, **more})[0]


def close(actual: np.ndarray, expected: list[float]) -> None:
    np.testing.assert_allclose(actual, np.array(expected, dtype=np.float64), rtol=1e-6, atol=1e-9)


def test_ref_shifts_both_ways_with_nan_fill():
    x = row(1, 2, 3, 4, 5)
    close(ev("Ref($close, 1)", x), [nan, 1, 2, 3, 4])
    close(ev("Ref($close, -2)", x), [3, 4, 5, nan, nan])
    close(ev("Ref($close, 9)", x), [nan] * 5)


def test_default_label_is_the_return_from_t_plus_1_to_t_plus_2():
    close(ev("Ref($close, -2) / Ref($close, -1) - 1", row(1, 2, 4, 5)), [1.0, 0.25, nan, nan])


def test_mean_sum_skip_nan_and_use_partial_start_windows():
    x = row(1, nan, 3, 4)
    close(ev("Mean($close, 2)", x), [1, 1, 3, 3.5])
    close(ev("Sum($close, 2)", x), [1, 1, 3, 7])
    close(ev("Sum($close, 2)", row(nan, nan, 2)), [nan, nan, 2])


def test_std_is_sample_std_nan_on_one_value_and_exactly_zero_when_constant():
    close(ev("Std($close, 3)", row(1, 2, 4, nan, 7)),
          [nan, np.sqrt(0.5), np.std([1, 2, 4], ddof=1), np.sqrt(2), np.std([4, 7], ddof=1)])
    # A zero-volume suspension after large volumes: pandas' online variance leaves drift here, we give 0.
    vol = row(4e6, 1.2e7, 9e6, 0, 0, 0, 0)
    assert ev("Std($close, 3)", vol)[-2:].tolist() == [0.0, 0.0]


def test_max_min_skip_nan():
    x = row(3, nan, 1, 2, 5)
    close(ev("Max($close, 2)", x), [3, 3, 1, 2, 5])
    close(ev("Min($close, 2)", x), [3, 3, 1, 1, 2])
    close(ev("Min($close, 3)", x), [3, 3, 1, 1, 1])


def test_quantile_interpolates_linearly_over_the_window_values():
    close(ev("Quantile($close, 5, 0.8)", row(1, 2, 3, 4, 10)), [1, 1.8, 2.6, 3.4, 5.2])
    close(ev("Quantile($close, 3, 0.2)", row(1, nan, 3, 5)), [1, 1, 1.4, 3.4])


def test_rank_is_pct_with_average_ties():
    close(ev("Rank($close, 4)", row(2, 1, 2, 2)), [1.0, 0.5, 2.5 / 3, 0.75])
    close(ev("Rank($close, 3)", row(1, nan, 3, 2)), [1.0, nan, 1.0, 0.5])


def test_idxmax_is_one_based_from_the_oldest_first_max_and_nan_wins():
    close(ev("IdxMax($close, 3)", row(1, 3, 3, 2)), [1, 2, 2, 1])
    close(ev("IdxMin($close, 3)", row(1, 3, 3, 2)), [1, 1, 1, 3])
    close(ev("IdxMax($close, 3)", row(1, nan, 5, 2, 0)), [1, 2, 2, 1, 1])
    close(ev("IdxMin($close, 2)", row(4, nan, 5, 2)), [1, 2, 1, 2])


def test_idxmax_windows_do_not_reach_before_the_first_bar():
    x = row(nan, nan, 4, 6, 5, 1)
    close(ev("IdxMax($close, 3)", x), [nan, nan, 1, 2, 2, 1])
    # With start 0 the leading days are NaN bars: they win once the window holds a value (min_periods=1).
    node = parse("IdxMax($close, 3)")
    close(Evaluator({"close": x}, [node], np.array([0])).value(node)[0], [nan, nan, 1, 1, 2, 1])


def test_slope_resi_rsquare_on_known_lines():
    line = row(1, 3, 5, 7, 9)
    close(ev("Slope($close, 4)", line), [nan, 2, 2, 2, 2])
    close(ev("Resi($close, 4)", line)[1:], [0, 0, 0, 0])
    close(ev("Rsquare($close, 4)", line), [nan, 1, 1, 1, 1])
    # NaN skipped, positions kept: 3, 7, 9 at positions 1, 3, 4 lie on the same line.
    close(ev("Slope($close, 4)", row(1, 3, nan, 7, 9))[-1:], [2])
    bent = row(0, 0, 1)
    close(ev("Slope($close, 3)", bent)[-1:], [0.5])
    close(ev("Resi($close, 3)", bent)[-1:], [1 / 6])
    close(ev("Rsquare($close, 3)", bent)[-1:], [0.75])


def test_rsquare_and_corr_are_nan_where_a_rolling_std_is_near_zero():
    flat = row(5, 5, 5, 5)
    close(ev("Rsquare($close, 3)", flat), [nan] * 4)
    close(ev("Slope($close, 3)", flat)[1:], [0, 0, 0])
    x, y = row(1, 2, 3, 4), row(1, 2, 4, 4)
    corr = ev("Corr($close, $volume, 3)", x, volume=y)
    assert np.isnan(corr[0])  # one pair: pandas' variance is NaN
    close(corr[2:3], [3 / np.sqrt(2 * 42 / 9)])
    close(ev("Corr($close, $volume, 3)", x, volume=flat), [nan] * 4)


def test_elementwise_nan_rules():
    x, y = row(1, nan, 3), row(0, 0, nan)
    close(ev("Greater($close, $volume)", x, volume=y), [1, nan, nan])
    close(ev("Less($close, $volume)", x, volume=y), [0, nan, nan])
    close(ev("$close > Ref($close, 1)", row(1, 2, nan, 3)), [0, 1, 0, 0])
    close(ev("Mean($close < Ref($close, 1), 2)", row(3, 2, 2)), [0, 0.5, 0.5])
    close(ev("Abs(-$close) + Log($close)", row(1, 2)), [1, 2 + np.log(2)])


def test_parser_precedence_and_constants():
    x = row(2, 4)
    close(ev("1 + 2 * $close - 6 / 2", x), [2, 6])
    close(ev("-$close * 2 + (1 - -1)", x), [-2, -6])
    close(ev("2 * $close > 5", x), [0, 1])
    assert parse("Ref( $close ,1 )").key == parse("Ref($close, 1)").key


def test_float32_arithmetic_is_kept_like_qlib():
    x = row(3, 7)
    assert evaluate("($close + 1e-12) / 3", {"close": x}).dtype == np.float32
    assert evaluate("Mean($close, 2) / $close", {"close": x}).dtype == np.float64  # pandas returns float64


@pytest.mark.parametrize("text, message", [
    ("Foo($close, 3)", "unknown operator 'Foo'; valid operators: Abs, Corr"),
    ("$nope + 1", "unknown field(s) $nope; available: $close"),
    ("Mean($close)", "Mean takes 2 arguments, got 1"),
    ("Mean($close, $close)", "must be numbers"),
    ("Ref($close, 1", "expected )"),
    ("$close $close", "unexpected"),
    ("Mean($close, 0)", "window must be an integer >= 1"),
])
def test_errors_name_the_problem(text, message):
    with pytest.raises(ValueError) as err:
        evaluate(text, {"close": row(1, 2)})
    assert message in str(err.value)


def test_shared_subexpressions_are_computed_once_and_freed(monkeypatch):
    calls = []
    real = ops.ref
    monkeypatch.setattr(ops, "ref", lambda x, n: calls.append(n) or real(x, n))
    texts = ["$close/Ref($close, 1)", "Mean($close>Ref($close,1), 2)", "Ref($close, 1) - 1"]
    nodes = [parse(t) for t in texts]
    evaluator = Evaluator({"close": row(1, 2, 3)}, nodes, np.array([0]))
    for node in nodes:
        evaluator.value(node)
    assert calls == [1]
    assert evaluator.cache == {}


# ---------------------------------------------------------------- against pandas on random data

values = arrays(np.float32, st.integers(1, 40), elements=st.one_of(
    st.just(np.float32(np.nan)), st.sampled_from([1.0, 2.0, 2.5]), st.floats(-1e3, 1e3, width=32)))


def pandas_rolling(x: np.ndarray, w: int) -> pd.core.window.rolling.Rolling:
    return pd.Series(x.astype(np.float64)).rolling(w, min_periods=1)


@settings(max_examples=60, deadline=None)
@given(x=values, w=st.integers(1, 8))
def test_rolling_ops_match_pandas(x, w):
    r = pandas_rolling(x, w)
    xs = x[None, :]
    # pandas' own kernels, bit for bit (compiled replicas in distgru.features.moments).
    np.testing.assert_array_equal(ops.rolling_mean(xs, w)[0], r.mean())
    np.testing.assert_array_equal(ops.rolling_sum(xs, w)[0], r.sum())
    np.testing.assert_allclose(ops.rolling_max(xs, w)[0], r.max())
    np.testing.assert_allclose(ops.rolling_min(xs, w)[0], r.min())
    # pandas' own kernel, bit for bit, drift on constant windows included (qlib's values carry it too).
    np.testing.assert_array_equal(ops.rolling_std(xs, w)[0], r.std())
    np.testing.assert_allclose(ops.rolling_rank(xs, w)[0], r.rank(pct=True), rtol=1e-12)
    q80, q20 = ops.rolling_quantiles(xs, w, [0.8, 0.2])
    np.testing.assert_allclose(q80[0], r.quantile(0.8), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(q20[0], r.quantile(0.2), rtol=1e-9, atol=1e-9)
    (s80, s20), rank = ops.rolling_order_stats(xs, w, [0.8, 0.2], rank=True)  # one sorted window for all three
    for shared, alone in ((s80, q80), (s20, q20), (rank, ops.rolling_rank(xs, w))):
        np.testing.assert_array_equal(shared, alone)


# Offsets and outliers that make pandas' variance and correlation kernels re-anchor or recompute a window.
wild = arrays(np.float64, st.integers(1, 60), elements=st.one_of(
    st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, 1e8, 1e8 + 1, -3e12, 1e-9]),
    st.floats(-1e6, 1e6)))


@settings(max_examples=80, deadline=None)
@given(x=wild, y=wild, w=st.integers(1, 12))
def test_compiled_moments_are_pandas_bit_for_bit(x, y, w):
    y = np.resize(y, len(x))
    r = pd.Series(np.where(np.isinf(x), np.nan, x)).rolling(w, min_periods=1)
    ry = pd.Series(np.where(np.isinf(y), np.nan, y)).rolling(w, min_periods=1)
    xs = x[None, :]
    np.testing.assert_array_equal(ops.rolling_sum(xs, w)[0], r.sum())
    np.testing.assert_array_equal(ops.rolling_mean(xs, w)[0], r.mean())
    np.testing.assert_array_equal(ops.rolling_std(xs, w)[0], r.std())
    unmasked = ops.rolling_corr(xs, y[None, :], w, std_a=np.ones_like(xs), std_b=np.ones_like(xs))[0]
    expected = r.corr(ry._selected_obj).to_numpy()
    # sqrt where pandas' C code calls pow(x, 0.5): 1 ulp of float64 at most, the same float32 (what features keep)
    np.testing.assert_array_max_ulp(unmasked, expected, maxulp=1)
    np.testing.assert_array_equal(unmasked.astype(np.float32), expected.astype(np.float32))


def _argext_reference(x: np.ndarray, w: int, start: int, largest: bool) -> np.ndarray:
    """qlib's IdxMax/IdxMin window by window: ``rolling.apply(np.argmax)`` on the series from ``start`` (pandas
    reads ±inf as NaN, and numpy's argmax returns the first NaN)."""
    out = np.full(len(x), np.nan)
    for t in range(start, len(x)):
        lo = max(0, t - w + 1, start)
        win = x[lo:t + 1]
        bad = ~np.isfinite(win)
        if not bad.all():
            out[t] = (np.argmax(bad) if bad.any() else np.argmax(win) if largest else np.argmin(win)) + 1
    return out


@settings(max_examples=60, deadline=None)
@given(x=wild, w=st.integers(1, 12), start=st.integers(0, 10), largest=st.booleans())
def test_compiled_idxmax_idxmin_match_a_window_by_window_reference(x, w, start, largest):
    got = ops.rolling_argext(x[None, :], w, np.array([start]), largest)[0]
    np.testing.assert_array_equal(got, _argext_reference(x, w, start, largest))


def _argmax1(a: np.ndarray) -> float:
    return float(np.argmax(a) + 1)


@settings(max_examples=40, deadline=None)
@given(x=values, w=st.integers(1, 8))
def test_idxmax_matches_pandas_apply(x, w):
    start = np.array([0])
    got = ops.rolling_argext(x[None, :], w, start, largest=True)[0]
    np.testing.assert_array_equal(got, pandas_rolling(x, w).apply(_argmax1, raw=True))


@settings(max_examples=40, deadline=None)
@given(x=values, w=st.integers(2, 8))
def test_slope_matches_least_squares_per_window(x, w):
    got = ops.rolling_regression(x[None, :], w, ["slope", "resi"])
    for t in range(len(x)):
        win = x[max(0, t - w + 1):t + 1].astype(np.float64)
        pos = np.arange(len(win), dtype=np.float64)
        ok = ~np.isnan(win)
        if ok.sum() < 2:
            continue
        slope, icpt = np.polyfit(pos[ok], win[ok], 1)
        scale = max(1.0, float(np.nanmax(np.abs(win))))
        assert got["slope"][0, t] == pytest.approx(slope, abs=1e-8 * scale)
        if not np.isnan(x[t]):
            assert got["resi"][0, t] == pytest.approx(win[-1] - (slope * pos[-1] + icpt), abs=1e-8 * scale)


small = arrays(np.float32, 12, elements=st.one_of(st.just(np.float32(np.nan)), st.integers(0, 6).map(float)))


@settings(max_examples=40, deadline=None)
@given(x=small, y=small, w=st.integers(2, 6))
def test_corr_matches_per_window_corrcoef_with_qlib_masks(x, y, w):
    got = ops.rolling_corr(x[None, :], y[None, :], w)[0]
    for t in range(len(x)):
        a, b = x[max(0, t - w + 1):t + 1].astype(np.float64), y[max(0, t - w + 1):t + 1].astype(np.float64)
        pair = ~np.isnan(a) & ~np.isnan(b)
        stds = [np.nanstd(v, ddof=1) if (~np.isnan(v)).sum() > 1 else np.nan for v in (a, b)]
        if pair.sum() < 2 or any(s <= 2e-5 for s in stds) or np.ptp(a[pair]) == 0 or np.ptp(b[pair]) == 0:
            if any(s <= 2e-5 for s in stds):
                assert np.isnan(got[t])
            continue
        assert got[t] == pytest.approx(np.corrcoef(a[pair], b[pair])[0, 1], abs=1e-9)


# ---------------------------------------------------------------- qlib's query rule and running sums


def test_extended_window_follows_qlib():
    from distgru.features.expr import extended_window
    cases = {"Std($volume, 10)/($volume+1e-12)": (9, 0), "Ref($close, 60)/$close": (60, 0),
             "Corr($close/Ref($close,1), Log($volume/Ref($volume, 1)+1), 10)": (10, 0),
             "Mean($close>Ref($close, 1), 5)": (5, 0), "Ref($close, -2)/Ref($close, -1) - 1": (0, 2),
             "Std(Abs($close/Ref($close, 1)-1)*$volume, 30)": (30, 0), "$close": (0, 0)}
    for text, expected in cases.items():
        assert extended_window(parse(text)) == expected, text


def _qlib_regression(x: np.ndarray, w: int) -> np.ndarray:
    """qlib's Cython Slope, Rsquare (r·r, unmasked) and Resi, transcribed: each day's update of the running sums
    in its order, then its closed forms. Returns [3, D]."""
    out = np.full((3, len(x)), np.nan)
    window = [np.nan] * w
    i_sum = x_sum = x2_sum = y_sum = y2_sum = xy_sum = np.float64(0.0)
    with np.errstate(all="ignore"):
        for t, val in enumerate(x.astype(np.float64)):
            window.append(val)
            xy_sum = xy_sum - y_sum
            x2_sum = x2_sum + i_sum - 2 * x_sum
            x_sum = x_sum - i_sum
            old = window.pop(0)
            if not np.isnan(old):
                i_sum -= 1
                y_sum -= old
                y2_sum -= old * old
            if not np.isnan(val):
                i_sum += 1
                x_sum += w
                x2_sum += w * w
                y_sum += val
                y2_sum += val * val
                xy_sum += w * val
            n = np.float64(sum(not np.isnan(v) for v in window))
            num = n * xy_sum - x_sum * y_sum
            sxx = n * x2_sum - x_sum * x_sum
            slope = num / sxx
            r = num / np.sqrt(sxx * (n * y2_sum - y_sum * y_sum))
            out[:, t] = slope, r * r, val - (slope * w + (y_sum / n - slope * (x_sum / n)))
    return out


@settings(max_examples=40, deadline=None)
@given(x=values, w=st.integers(1, 8))
def test_compiled_regression_replays_qlibs_rounding(x, w):
    got = ops.rolling_regression(x[None, :], w, ["slope", "rsquare", "resi"], std=np.ones((1, len(x))))
    expected = _qlib_regression(x, w)
    for k, name in enumerate(("slope", "rsquare", "resi")):
        np.testing.assert_array_equal(got[name][0], expected[k], err_msg=name)
