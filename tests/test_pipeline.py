"""Segments and embargo, the feature/panel cache, and prepare_panel/prepare_inference on a small synthetic market.

The feature engine is replaced by a two-column stand-in with a call counter: these tests are about what gets
computed, cached and processed, not about Alpha158 (tests/test_features_cli.py runs the real engine).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import distgru.features
from distgru.config import ConfigError, DatasetConfig, config_from_dict
from distgru.features.table import FeatureTable
from distgru.processing import cache, pipeline
from distgru.processing.pipeline import prepare_inference, prepare_panel
from distgru.processing.segments import label_horizon, segment_bounds


@pytest.fixture
def engine(monkeypatch):
    """A stand-in ``compute_features``; ``engine.calls`` counts its runs."""

    def compute(panel, feature_set="alpha158", columns=None, label="", progress=False):
        compute.calls += 1
        close, open_ = panel.field("close"), panel.field("open")
        values = np.stack([close / open_ - 1, np.log1p(panel.field("volume"))], axis=-1).astype(np.float32)
        shifted = np.full_like(close, np.nan)
        shifted[:, :-2] = close[:, 2:] / close[:, 1:-1] - 1
        return FeatureTable(calendar=panel.calendar, instruments=panel.instruments, names=("A", "B"),
                            values=values, label=shifted, membership=panel.membership)

    compute.calls = 0
    monkeypatch.setattr(distgru.features, "compute_features", compute)
    return compute


def make_cfg(tmp_path, **overrides):
    data = {
        "data": {"source": "synthetic", "cache_dir": str(tmp_path / "cache"),
                 "synthetic": {"n_instruments": 12, "n_days": 130, "start": "2020-01-01"}},
        "dataset": {"train": ["2020-01-01", "2020-03-31"], "valid": ["2020-04-01", "2020-04-30"],
                    "test": ["2020-05-01", "2020-06-30"]},
    }
    return config_from_dict(data, [f"{k}={v}" for k, v in overrides.items()])


def test_label_horizon():
    assert label_horizon("Ref($close, -2) / Ref($close, -1) - 1") == 2
    assert label_horizon("Ref($close, -6)/Ref($close, -1) - 1") == 6
    assert label_horizon("Ref(Ref($close, -3), 1) / $close") == 2
    assert label_horizon("Mean(Ref($close, -4), 5) / Ref($close, 1)") == 4
    assert label_horizon("$close / Ref($close, 1) - 1") == 0


def test_segments_embargo_and_empty_segments():
    cal = pd.bdate_range("2020-01-01", periods=30)
    ds = DatasetConfig(train=("2020-01-01", "2020-01-14"), valid=("2020-01-15", "2020-01-28"),
                       test=("2020-01-29", "2020-02-11"))
    assert segment_bounds(cal, ds, horizon=2) == {"train": (0, 10), "valid": (10, 20), "test": (20, 30)}
    ds.embargo = True
    assert segment_bounds(cal, ds, horizon=2) == {"train": (0, 8), "valid": (10, 18), "test": (20, 30)}

    late = DatasetConfig(train=("2020-01-01", "2020-01-14"), valid=("2020-01-15", "2020-01-28"),
                         test=("2021-01-01", "2021-02-01"))
    with pytest.raises(ConfigError, match=r"dataset.test \[2021-01-01 .. 2021-02-01\] holds no trading day; "
                                          r"the data covers 2020-01-01 .. 2020-02-11"):
        segment_bounds(cal, late, horizon=2)
    samples = np.ones((3, 30), dtype=bool)
    samples[:, 10:20] = False
    with pytest.raises(ConfigError, match=r"dataset.valid .* no member rows with a label \(days 2020-01-15"):
        segment_bounds(cal, ds, horizon=2, samples=samples)
    tiny = DatasetConfig(train=("2020-01-01", "2020-01-02"), valid=("2020-01-15", "2020-01-28"),
                         test=("2020-01-29", "2020-02-11"), embargo=True)
    with pytest.raises(ConfigError, match="after the 2-day embargo"):
        segment_bounds(cal, tiny, horizon=2)


def test_prepare_panel_processes_on_the_train_window(tmp_path, engine):
    cfg = make_cfg(tmp_path)
    panel, state = prepare_panel(cfg, progress=False)
    assert panel.features.shape == (12, 130, 2) and panel.features.dtype == np.float32
    lo, hi = panel.segments["train"]
    assert panel.calendar[lo] == pd.Timestamp("2020-01-01") and panel.calendar[hi - 1] == pd.Timestamp("2020-03-31")
    assert (state.fit_start, state.fit_end) == ("2020-01-01", "2020-03-31")
    # Recompute the robust statistics by hand from the raw stand-in features on train member rows.
    raw = engine(pipeline.load_bars(cfg.data))
    x = raw.values[:, lo:hi][panel.membership[:, lo:hi]]
    median = np.nanmedian(x, axis=0)
    np.testing.assert_array_equal(state.infer_stats[0]["median"], median)
    member = panel.membership
    expected = np.clip((raw.values - median) / state.infer_stats[0]["scale"], -3, 3)
    np.testing.assert_allclose(panel.features[member], np.nan_to_num(expected[member]), rtol=1e-6, atol=1e-6)
    assert not np.isnan(panel.features[member]).any()
    np.testing.assert_array_equal(panel.label_raw, raw.label)
    assert np.isnan(panel.label_learn[~member | np.isnan(raw.label)]).all()
    assert np.nanmax(np.abs(panel.label_learn)) <= 0.5 * 3.46
    assert panel.weight is None


def test_data_range_cuts_the_panel_after_features(tmp_path, engine):
    cfg = make_cfg(tmp_path, **{"data.start": "2020-01-15", "data.end": "2020-06-15"})
    panel, _ = prepare_panel(cfg, progress=False)
    assert panel.calendar[0] == pd.Timestamp("2020-01-15") and panel.calendar[-1] == pd.Timestamp("2020-06-15")
    # The label of the last day reads two days past data.end, as qlib's label look-ahead does.
    full = engine(pipeline.load_bars(cfg.data))
    d = full.calendar.get_loc(pd.Timestamp("2020-06-15"))
    np.testing.assert_array_equal(panel.label_raw[:, -1], full.label[:, d])


def test_cache_hits_and_invalidation(tmp_path, engine, monkeypatch):
    fits = []
    real_fit = pipeline.fit_processors
    monkeypatch.setattr(pipeline, "fit_processors", lambda *a, **k: fits.append(1) or real_fit(*a, **k))

    def prepare(**overrides):
        return prepare_panel(make_cfg(tmp_path, **overrides), progress=False)

    first, state = prepare()
    assert (engine.calls, len(fits)) == (1, 1)
    again, state2 = prepare()
    assert (engine.calls, len(fits)) == (1, 1)  # both caches hit
    for name in ("features", "label_raw", "label_learn", "membership"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
    assert state2.to_dict() == state.to_dict() and again.segments == first.segments

    prepare(**{"dataset.test": '["2020-05-04", "2020-06-20"]'})
    assert (engine.calls, len(fits)) == (1, 1)  # segments outside the fit window: nothing to recompute
    prepare(**{"processors.infer": '[{"name": "RobustZScoreNorm"}, {"name": "Fillna", "fill_value": 1.0}]'})
    assert (engine.calls, len(fits)) == (1, 2)  # new processing, same features
    prepare(**{"dataset.train": '["2020-01-01", "2020-03-20"]'})
    assert (engine.calls, len(fits)) == (1, 3)  # the default fit window moved
    prepare(**{"features.label_horizon": 3})
    assert (engine.calls, len(fits)) == (2, 4)
    prepare(**{"data.synthetic.seed": 1})
    assert (engine.calls, len(fits)) == (3, 5)
    monkeypatch.setattr(pipeline, "feature_code_version", lambda: "edited")
    prepare()
    assert (engine.calls, len(fits)) == (4, 6)
    monkeypatch.setattr(pipeline, "processing_code_version", lambda processors: "edited")
    prepare()
    assert (engine.calls, len(fits)) == (4, 7)  # processors' code changed: refit, features reused
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_unreadable_cache_entry_is_recomputed(tmp_path, engine):
    prepare_panel(make_cfg(tmp_path), progress=False)
    for path in (tmp_path / "cache").rglob("*.arrow"):
        path.write_bytes(b"not arrow")
    panel, _ = prepare_panel(make_cfg(tmp_path), progress=False)
    assert engine.calls == 2 and panel.features.shape == (12, 130, 2)


def test_segment_without_labels_is_an_error(tmp_path, engine):
    cfg = make_cfg(tmp_path, **{"dataset.test": '["2020-06-29", "2020-06-30"]'})  # the last 2 days: no label
    with pytest.raises(ConfigError, match=r"dataset.test \[2020-06-29 .. 2020-06-30\] has no member rows with a "
                                          r"label .* the data covers 2020-01-01 .. 2020-06-30"):
        prepare_panel(cfg, progress=False)


def test_prepare_inference_applies_the_saved_state(tmp_path, engine, capsys):
    cfg = make_cfg(tmp_path)
    panel, state = prepare_panel(cfg, progress=True)
    assert "fitting and applying processors: done in" in capsys.readouterr().err
    state.save(tmp_path / "state.json")
    loaded = type(state).load(tmp_path / "state.json")
    new = prepare_inference(loaded, make_cfg(tmp_path, **{"dataset.step_len": 5}), "2020-05-01", "2020-06-30",
                            progress=False)
    lo, hi = new.segments["test"]
    assert lo == 5 and new.calendar[lo] == pd.Timestamp("2020-05-01")
    first = panel.calendar.get_loc(new.calendar[0])
    np.testing.assert_array_equal(new.features, panel.features[:, first:])
    np.testing.assert_array_equal(new.label_raw, panel.label_raw[:, first:])
    with pytest.raises(ConfigError, match="holds no trading day"):
        prepare_inference(loaded, cfg, "2030-01-01", "2030-02-01", progress=False)


def test_cache_round_trip_of_feature_table(tmp_path, engine):
    cfg = make_cfg(tmp_path)
    table = engine(pipeline.load_bars(cfg.data))
    cache.save_features(tmp_path, "k", table, {"x": 1})
    back = cache.load_features(tmp_path, "k")
    assert back is not None and back.names == table.names and back.instruments == table.instruments
    assert back.calendar.equals(table.calendar)
    for name in ("values", "label", "membership"):
        np.testing.assert_array_equal(getattr(back, name), getattr(table, name))
    assert cache.load_features(tmp_path, "other") is None
