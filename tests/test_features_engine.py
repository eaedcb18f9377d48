"""Block evaluation: packing instruments by their days, and feature_frame against the dense table."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_features_compute import GRU20, make_panel

from distgru.features.compute import compute_features, feature_frame
from distgru.features.engine import pack


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(-3, 50), min_size=1, max_size=30), elements=st.integers(1, 200))
def test_pack_covers_each_instrument_once_longest_first(lengths, elements):
    begin = np.arange(len(lengths), dtype=np.int64) * 7
    end = begin + np.array(lengths) - 1
    blocks = pack(begin, end, elements)
    rows = np.concatenate([b.rows for b in blocks]) if blocks else np.zeros(0, dtype=np.int64)
    assert sorted(rows) == [i for i, n in enumerate(lengths) if n > 0]
    widths = [b.width for b in blocks]
    assert widths == sorted(widths, reverse=True)
    for b in blocks:
        assert b.width == b.length.max() and (b.begin == begin[b.rows]).all()
        assert len(b.rows) == 1 or len(b.rows) * b.width <= elements


def test_gather_left_aligns_each_row_and_pads_with_nan():
    series = np.arange(20, dtype=np.float32).reshape(2, 10)
    block = pack(np.array([2, 5]), np.array([6, 7]))[0]
    np.testing.assert_array_equal(block.gather(series),
                                  [[2, 3, 4, 5, 6], [15, 16, 17, np.nan, np.nan]])


def gappy_panel() -> tuple:
    """Listing, delisting, a membership gap, a member span reaching past the data, and a non-member."""
    panel = make_panel(n=5, d=120)
    m = np.zeros((5, 120), dtype=bool)
    m[0, 10:50] = m[0, 70:120] = True  # leaves and re-enters the index
    m[1, 40:120] = True  # listed on day 30 (make_panel), joins on day 40
    m[2, 100:120] = True  # delisted 10 days before the end: its last member rows have no bars
    m[3, 0:60] = True  # leaves early: its later days are never wanted
    return panel.__class__(**{**panel.__dict__, "membership": m})


@pytest.mark.parametrize("start,end", [(None, None), ("2020-02-14", "2020-05-29")])
def test_feature_frame_equals_the_dense_table_bit_for_bit(start, end):
    panel = gappy_panel()
    table = compute_features(panel, start=start).to_frame(start, end, masked=True)
    by_day = feature_frame(panel, start=start, end=end)
    pd.testing.assert_frame_equal(by_day, table, check_exact=True)
    assert by_day.index.is_monotonic_increasing and by_day.dtypes.eq(np.float32).all()
    by_inst = feature_frame(panel, start=start, end=end, order="instrument", workers=2)
    assert list(by_inst.index.names) == ["instrument", "datetime"] and by_inst.index.is_monotonic_increasing
    pd.testing.assert_frame_equal(by_inst.swaplevel().sort_index(), table, check_exact=True)
    s2 = by_day.xs("S2", level="instrument")["KLEN"]
    assert np.isnan(s2.loc[panel.calendar[110]:]).all() and not np.isnan(s2.loc[:panel.calendar[109]]).any()


def test_feature_frame_columns_label_and_order_errors():
    panel = gappy_panel()
    frame = feature_frame(panel, columns=GRU20, label="Ref($close, -1)/$close - 1", label_name="RET1")
    assert list(frame.columns) == [n for n in compute_features(panel, columns=GRU20).names] + ["RET1"]
    with pytest.raises(ValueError, match="order must be"):
        feature_frame(panel, order="random")


def test_block_progress_is_logged(caplog):
    with caplog.at_level(logging.INFO, logger="distgru.features.compute"):
        feature_frame(make_panel(n=6), columns=["KLEN", "MA5"], progress=True)
    messages = [r.getMessage() for r in caplog.records]
    assert any("blocks" in m and "ETA" in m for m in messages)
    assert any("instrument blocks in" in m for m in messages)
