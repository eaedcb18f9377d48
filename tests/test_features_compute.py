"""Feature-set definitions (names, order) and compute_features' contract on a small hand-built panel."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from distgru.config import ConfigError
from distgru.data.panel import BarPanel
from distgru.features import compute_features, feature_definitions, ops
from distgru.features.alpha158 import alpha158
from distgru.features.alpha360 import alpha360
from distgru.features.expr import ExpressionError

GRU20 = ["KLEN", "KLOW", "ROC60", "STD5", "RSQR5", "RSQR10", "RSQR20", "RSQR60", "RESI5", "RESI10", "CORR5",
         "CORR10", "CORR20", "CORR60", "CORD5", "CORD10", "CORD60", "VSTD5", "WVMA5", "WVMA60"]


def make_panel(n: int = 4, d: int = 90, vwap: bool = False, seed: int = 0) -> BarPanel:
    rng = np.random.default_rng(seed)
    close = 10 * np.exp(np.cumsum(rng.normal(0, 0.02, (n, d)), axis=1))
    open_ = close * np.exp(rng.normal(0, 0.01, (n, d)))
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.02, (n, d)))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.02, (n, d)))
    volume = rng.uniform(1e5, 1e6, (n, d))
    fields = {"open": open_, "high": high, "low": low, "close": close, "volume": volume}
    if vwap:
        fields["vwap"] = (high + low + close) / 3
    fields = {k: v.astype(np.float32) for k, v in fields.items()}
    for v in fields.values():
        v[1, :30] = np.nan  # listed on day 30
        v[2, -10:] = np.nan  # delisted 10 days before the end
    return BarPanel(calendar=pd.bdate_range("2020-01-01", periods=d), instruments=tuple(f"S{i}" for i in range(n)),
                    fields=fields, membership=np.ones((n, d), dtype=bool))


def test_alpha158_names_follow_qlib_order():
    names = [n for n, _ in alpha158()]
    assert len(names) == 158 == len(set(names))
    assert names[:13] == ["KMID", "KLEN", "KMID2", "KUP", "KUP2", "KLOW", "KLOW2", "KSFT", "KSFT2", "OPEN0",
                          "HIGH0", "LOW0", "VWAP0"]
    assert names[13:18] == ["ROC5", "ROC10", "ROC20", "ROC30", "ROC60"]
    assert names[88] == "CORR5" and names[98] == "CNTP5" and names[138] == "WVMA5" and names[-1] == "VSUMD60"
    assert dict(alpha158())["IMXD20"] == "(IdxMax($high, 20)-IdxMin($low, 20))/20"


def test_alpha360_names_follow_qlib_order():
    defs = alpha360()
    names = [n for n, _ in defs]
    assert len(names) == 360 == len(set(names))
    assert names[0] == "CLOSE59" and names[59] == "CLOSE0" and names[60] == "OPEN59" and names[-1] == "VOLUME0"
    assert [n[:-2] for n in names[::60]] == ["CLOSE", "OPEN", "HIGH", "LOW", "VWAP", "VOLUME"]
    assert dict(defs)["HIGH3"] == "Ref($high, 3)/$close"
    assert dict(defs)["VOLUME0"] == "$volume/($volume+1e-12)"


def test_columns_keep_native_order_and_unknown_names_are_an_error():
    assert [n for n, _ in feature_definitions("alpha158", ["RSQR5", "KLEN"])] == ["KLEN", "RSQR5"]
    with pytest.raises(ValueError, match=r"no column\(s\) \['NOPE'\]"):
        feature_definitions("alpha158", ["KLEN", "NOPE"])
    with pytest.raises(ConfigError, match=r"features\.set: 'alpha999' is not a feature set; valid choices: alpha158, "
                                          "alpha360"):
        feature_definitions("alpha999")


def test_compute_alpha158_shapes_dtypes_and_subset_consistency():
    panel = make_panel()
    full = compute_features(panel)
    assert full.values.shape == (4, 90, 158) and full.values.dtype == np.float32 and full.label.dtype == np.float32
    assert full.values.flags.c_contiguous
    sub = compute_features(panel, columns=GRU20)
    assert list(sub.names) == [n for n in full.names if n in GRU20]
    np.testing.assert_array_equal(sub.values, full.values[:, :, [full.names.index(n) for n in sub.names]])
    np.testing.assert_array_equal(sub.label, full.label)


def test_values_match_direct_formulas():
    panel = make_panel()
    table = compute_features(panel, columns=["KMID", "MA5", "ROC60", "VWAP0"])
    assert table.names == ("KMID", "VWAP0", "ROC60", "MA5")
    kmid, vwap0, roc60, ma5 = (table.values[0, :, j] for j in range(4))
    c, o = panel.fields["close"][0], panel.fields["open"][0]
    np.testing.assert_allclose(kmid, (c - o) / o, rtol=1e-6)
    mean5 = pd.Series(c.astype(np.float64)).rolling(5, min_periods=1).mean().to_numpy()
    np.testing.assert_allclose(ma5, mean5 / c, rtol=1e-6)
    assert np.isnan(roc60[:60]).all() and not np.isnan(roc60[60:]).any()
    assert np.isnan(vwap0).all() and np.isnan(table.values[:, :, 1]).all()  # no $vwap in the data
    with_vwap = compute_features(make_panel(vwap=True), columns=["VWAP0"])
    assert np.isfinite(with_vwap.values[0, :, 0]).all()
    label = c[2:] / c[1:-1] - 1
    np.testing.assert_allclose(table.label[0, :-2], label, rtol=1e-6)
    assert np.isnan(table.label[0, -2:]).all()


def test_days_outside_an_instruments_bars_are_nan_and_membership_is_carried():
    panel = make_panel()
    table = compute_features(panel, columns=["CNTP5", "IMAX5", "KLEN"])
    # CNTP and IMAX would be finite on days without bars (comparisons give 0); qlib has no rows there.
    assert np.isnan(table.values[1, :30]).all() and np.isfinite(table.values[1, 30:, 0]).all()
    assert np.isnan(table.values[2, -10:]).all() and np.isnan(table.label[2, -10:]).all()
    assert table.values[1, 30, 1] == pytest.approx(1 / 5)  # the first bar's window holds only itself
    # qlib's series starts at the first bar: CNTP5's mean covers days 30..31 only, not 27..31 with the days
    # before listing as zeros (comparisons are 0, never NaN, so they would count).
    c = panel.fields["close"][1]
    assert table.names[2] == "CNTP5" and table.values[1, 31, 2] == pytest.approx(float(c[31] > c[30]) / 2)
    np.testing.assert_array_equal(table.membership, panel.membership)


def test_alpha360_is_history_over_todays_close():
    panel = make_panel()
    table = compute_features(panel, feature_set="alpha360")
    names = list(table.names)
    assert table.values.shape == (4, 90, 360)
    c = panel.fields["close"][0]
    np.testing.assert_allclose(table.values[0, :, names.index("CLOSE0")], 1.0)
    np.testing.assert_allclose(table.values[0, 5:, names.index("CLOSE5")], c[:-5] / c[5:], rtol=1e-6)
    assert np.isnan(table.values[:, :, names.index("VWAP7")]).all()


def test_only_needed_operators_run(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("Quantile is not needed by these columns")
    monkeypatch.setattr(ops, "rolling_quantiles", forbidden)
    compute_features(make_panel(), columns=GRU20)


def test_custom_label_and_label_errors():
    panel = make_panel()
    table = compute_features(panel, columns=["KLEN"], label="Ref($close, -1)/$close - 1")
    c = panel.fields["close"][0]
    np.testing.assert_allclose(table.label[0, :-1], c[1:] / c[:-1] - 1, rtol=1e-6)
    with pytest.raises(ExpressionError, match="vwap"):
        compute_features(panel, columns=["KLEN"], label="Ref($vwap, -2)/Ref($vwap, -1) - 1")
    with pytest.raises(ExpressionError, match="unknown operator 'Mena'"):
        compute_features(panel, columns=["KLEN"], label="Mena($close, 5)")


def test_progress_logs_each_group(caplog):
    with caplog.at_level(logging.INFO, logger="distgru.features.compute"):
        compute_features(make_panel(), columns=["KLEN", "KMID", "ROC5", "ROC10", "MA5"], progress=True)
    groups = [r.getMessage().split(":")[1].split()[0] for r in caplog.records if "done in" in r.getMessage()]
    assert groups == ["KBAR", "ROC", "MA"]


def test_thread_blocks_give_identical_results():
    panel = make_panel(n=5)
    one = compute_features(panel, workers=1)
    three = compute_features(panel, workers=3)
    np.testing.assert_array_equal(one.values, three.values)
    np.testing.assert_array_equal(one.label, three.label)
