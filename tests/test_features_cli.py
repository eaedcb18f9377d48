"""``distgru features`` end to end on a tiny qlib provider written here, and on the shared CSI300 data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from distgru.cli import main

DAYS = pd.bdate_range("2020-01-01", periods=100)


def write_bin(path: Path, start: int, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.concatenate([[start], values]).astype("<f4").tofile(path)


@pytest.fixture(scope="module")
def provider(tmp_path_factory) -> Path:
    """3 stocks on 100 days: AAA all along, BBB listed on day 10, CCC delisted after day 80."""
    root = tmp_path_factory.mktemp("provider")
    (root / "calendars").mkdir()
    (root / "calendars" / "day.txt").write_text("\n".join(f"{d:%Y-%m-%d}" for d in DAYS) + "\n")
    rng = np.random.default_rng(0)
    extents = {"SH600000": (0, 99), "SZ000001": (10, 99), "SH600519": (0, 80)}
    for symbol, (first, last) in extents.items():
        n = last - first + 1
        close = 10 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
        open_ = close * (1 + rng.normal(0, 0.005, n))
        bars = {"close": close, "open": open_, "high": np.maximum(close, open_) * 1.01,
                "low": np.minimum(close, open_) * 0.99, "volume": rng.uniform(1e5, 1e6, n), "factor": np.ones(n)}
        for field, values in bars.items():
            write_bin(root / "features" / symbol.lower() / f"{field}.day.bin", first, values)
    (root / "instruments").mkdir()
    day = [f"{d:%Y-%m-%d}" for d in DAYS]
    (root / "instruments" / "csi300.txt").write_text(
        f"SH600000\t{day[0]}\t{day[40]}\nSH600000\t{day[60]}\t{day[99]}\n"
        f"SZ000001\t{day[10]}\t{day[99]}\nSH600519\t{day[0]}\t{day[99]}\n")
    (root / "instruments" / "all.txt").write_text(
        "".join(f"{s}\t{day[a]}\t{day[b]}\n" for s, (a, b) in extents.items()))
    return root


def features(provider: Path, out: Path, *extra: str) -> pd.DataFrame:
    assert main(["features", "--provider", str(provider), "--out", str(out), *extra]) == 0
    return pd.read_parquet(out)


def test_market_rows_are_members_only(provider, tmp_path, capsys):
    frame = features(provider, tmp_path / "f.parquet", "--start", "2020-03-02", "--end", "2020-05-15")
    assert "wrote" in capsys.readouterr().out
    assert frame.index.names == ["datetime", "instrument"] and frame.index.is_monotonic_increasing
    assert frame.shape[1] == 159 and list(frame.columns[:2]) == ["KMID", "KLEN"] and frame.columns[-1] == "LABEL0"
    assert set(frame.dtypes) == {np.dtype("float32")}
    rows = {(d, s) for d, s in frame.index}
    day = DAYS.get_loc
    for d in DAYS[(DAYS >= "2020-03-02") & (DAYS <= "2020-05-15")]:
        assert ((d, "SH600000") in rows) == (day(d) <= 40 or day(d) >= 60)
        assert (d, "SZ000001") in rows
        assert ((d, "SH600519") in rows) == (day(d) <= 80)  # no bar after delisting, whatever the span says
    # History before --start feeds the look-back: ROC30 exists on the first day, equal to a full-range run.
    full = features(provider, tmp_path / "full.parquet")
    first = frame.xs(pd.Timestamp("2020-03-02"), level="datetime")
    assert first["ROC30"].notna().all()
    pd.testing.assert_frame_equal(frame, full.loc[frame.index])
    # Labels read past --end.
    assert frame.xs(pd.Timestamp("2020-05-15"), level="datetime")["LABEL0"].notna().all()


def test_named_instruments_are_not_masked(provider, tmp_path):
    frame = features(provider, tmp_path / "f.parquet", "--instruments", "SH600000,SZ000001",
                     "--columns", "ROC60,KLEN", "--label", "Ref($close, -1) / $close - 1")
    assert list(frame.columns) == ["KLEN", "ROC60", "LABEL0"]  # Alpha158's native order, as FilterCol
    per_stock = frame.groupby(level="instrument").size()
    assert per_stock.to_dict() == {"SH600000": 100, "SZ000001": 90}  # every day with data, spans ignored
    close = np.fromfile(provider / "features" / "sh600000" / "close.day.bin", dtype="<f4")[1:]
    np.testing.assert_allclose(frame.xs("SH600000", level="instrument")["LABEL0"].to_numpy()[:-1],
                               (close[1:] / close[:-1] - 1), rtol=1e-5)


def test_cached_second_run_and_errors(provider, tmp_path, capsys):
    out, cache = tmp_path / "f.parquet", tmp_path / "cache"
    first = features(provider, out, "--columns", "KLEN", "--cache-dir", str(cache))
    assert "computing alpha158 features" in capsys.readouterr().err
    second = features(provider, out, "--columns", "KLEN", "--cache-dir", str(cache))
    assert "computing" not in capsys.readouterr().err
    pd.testing.assert_frame_equal(first, second)
    # The cached path goes through the dense table: the same frame as the direct one.
    pd.testing.assert_frame_equal(first, features(provider, tmp_path / "direct.parquet", "--columns", "KLEN"))
    assert main(["features", "--provider", str(provider), "--out", str(out), "--columns", "NOPE"]) == 2
    assert "NOPE" in capsys.readouterr().err
    assert main(["features", "--provider", str(tmp_path / "missing"), "--out", str(out)]) == 2


@pytest.mark.shared_data
def test_shared_data_matches_qlib(csi300_dir, shared_dir, tmp_path):
    symbols = ["SH600000", "SZ000001"]
    frame = features(csi300_dir, tmp_path / "f.parquet", "--instruments", ",".join(symbols),
                     "--start", "2014-06-01", "--end", "2014-12-31")
    ref = pd.read_parquet(shared_dir / "reference" / "qlib_alpha158_values.parquet")
    ref = ref[ref.index.get_level_values("instrument").isin(symbols)]
    ref = ref[ref.index.get_level_values("datetime") <= "2014-12-31"].sort_index()
    assert frame.index.equals(ref.index) and list(frame.columns) == list(ref.columns)
    a, b = frame.to_numpy(np.float64), ref.to_numpy(np.float64)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    both = ~np.isnan(a)
    np.testing.assert_allclose(a[both], b[both], rtol=1e-3, atol=1e-5)
