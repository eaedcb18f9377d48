"""Corruption that used to load silently: flipped bytes in a cache entry, a qlib .bin cut at a 4-byte boundary, a
blank line in place of a calendar date."""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.feather as feather
import pytest

from distgru.data.load import load_bars
from distgru.data.panel import DataError
from distgru.data.qlib_provider import load_qlib_provider
from distgru.data.validate import DataWarning
from distgru.processing import cache
from distgru.processing.pipeline import prepare_panel
from distgru.processing.processors import ProcessorState
from tests.test_data_sources import DAYS, provider  # noqa: F401
from tests.test_pipeline import engine, make_cfg  # noqa: F401

N, D, F = 12, 130, 5
CACHE_LOG = "distgru.processing.cache"


def state() -> ProcessorState:
    return ProcessorState(feature_set="alpha158", feature_names=tuple(f"F{i}" for i in range(F)), columns=None,
                          label_expression="x", infer=[], learn=[], fit_start="2020-01-01", fit_end="2020-03-31")


def save_panel(root: Path, key: str = "k") -> np.ndarray:
    rng = np.random.default_rng(0)
    features = rng.standard_normal((N, D, F)).astype(np.float32)
    label = rng.standard_normal((N, D)).astype(np.float32)
    cache.save_panel(root, key, pd.bdate_range("2020-01-01", periods=D), tuple(f"S{i}" for i in range(N)), features,
                     label, label, state(), {"x": 1})
    return features


def flip(path: Path, needle: bytes, n_bytes: int = 64) -> int:
    """Invert ``n_bytes`` bytes 256 bytes into the first occurrence of ``needle``; the size stays the same."""
    data = bytearray(path.read_bytes())
    at = data.find(needle) + 256
    assert at >= 256
    data[at:at + n_bytes] = bytes(b ^ 0xFF for b in data[at:at + n_bytes])
    path.write_bytes(bytes(data))
    return at


def test_flipped_bytes_in_a_panel_entry_are_a_miss(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    features = save_panel(tmp_path)
    arrow = tmp_path / "panels" / "k.arrow"
    size = arrow.stat().st_size
    flip(arrow, features.tobytes()[:64])
    assert arrow.stat().st_size == size
    # Arrow itself reads the damaged file without complaint: 16 float32 values are simply different.
    table = feather.read_table(str(arrow))
    damaged = table.column("__values__").chunk(0).flatten().to_numpy().reshape(features.shape)
    assert np.count_nonzero(damaged != features) == 16
    with caplog.at_level(logging.INFO, logger=CACHE_LOG):
        assert cache.load_panel(tmp_path, "k") is None
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{arrow}: content checksum mismatch" in record.getMessage()
    assert "panel cache miss" in caplog.text and "panel cache hit" not in caplog.text


def test_corrupt_panel_is_recomputed_by_the_pipeline(tmp_path: Path, engine, caplog) -> None:  # noqa: ANN001, F811
    first, _ = prepare_panel(make_cfg(tmp_path), progress=False)
    (arrow,) = (tmp_path / "cache" / "panels").glob("*.arrow")
    flip(arrow, first.features.tobytes()[:64])
    with caplog.at_level(logging.WARNING, logger=CACHE_LOG):
        again, _ = prepare_panel(make_cfg(tmp_path), progress=False)
    assert re.search(rf"{re.escape(str(arrow))}: content checksum mismatch", caplog.text)
    np.testing.assert_array_equal(again.features, first.features)
    assert engine.calls == 1  # the feature entry was intact: only processing ran again
    caplog.clear()
    prepare_panel(make_cfg(tmp_path), progress=False)  # the rewritten entry verifies
    assert "checksum" not in caplog.text


def test_feature_entry_and_manifest_checksums(tmp_path: Path, engine, caplog) -> None:  # noqa: ANN001, F811
    table = engine(load_bars(make_cfg(tmp_path).data))
    cache.save_features(tmp_path, "f", table, {"x": 1})
    assert cache.load_features(tmp_path, "f") is not None
    manifest_path = tmp_path / "features" / "f.json"
    manifest = json.loads(manifest_path.read_text())
    # A manifest that still parses but says something else (another instrument order) is caught too.
    manifest_path.write_text(json.dumps({**manifest, "instruments": manifest["instruments"][::-1]}))
    with caplog.at_level(logging.INFO, logger=CACHE_LOG):
        assert cache.load_features(tmp_path, "f") is None
    assert f"{manifest_path}: manifest checksum mismatch" in caplog.text
    # An entry written before checksums existed is recomputed once, without a corruption warning.
    caplog.clear()
    manifest_path.write_text(json.dumps({k: v for k, v in manifest.items() if k != "checksum"}))
    with caplog.at_level(logging.INFO, logger=CACHE_LOG):
        assert cache.load_features(tmp_path, "f") is None
    assert "no checksum of this kind (written by an older distgru)" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_bin_truncated_at_a_4_byte_boundary_is_named(provider: Path) -> None:  # noqa: F811
    close = provider / "features" / "sh600000" / "close.day.bin"
    close.write_bytes(close.read_bytes()[:-16])  # the last 4 values: still a whole number of float32
    with pytest.warns(DataWarning) as record:
        panel = load_qlib_provider(provider)
    (message,) = [str(w.message) for w in record if "cover fewer days" in str(w.message)]
    assert f"{close} (2020-01-02..2020-01-03, the other fields 2020-01-02..2020-01-09)" in message
    assert "1 field file(s)" in message and "dump_bin" in message
    # Loaded as qlib reads it: the days the file lacks are NaN.
    row = panel.instruments.index("SH600000")
    np.testing.assert_array_equal(panel.fields["close"][row], [10, 11, np.nan, np.nan, np.nan, np.nan])


def test_blank_calendar_line_is_named(provider: Path) -> None:  # noqa: F811
    calendar = provider / "calendars" / "day.txt"
    calendar.write_text("\n".join([*DAYS[:2], "", *DAYS[3:]]) + "\n")  # the third date blanked out
    with pytest.raises(DataError, match=r"day\.txt:3: blank line after 2020-01-03 on line 2; every line up to the "
                                        r"last must hold one trading day"):
        load_qlib_provider(provider)
    calendar.write_text("\n".join(DAYS) + "\n\n\n")  # blank lines after the last date are harmless
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # the fixture's symbol without data
        assert len(load_qlib_provider(provider).calendar) == len(DAYS)
