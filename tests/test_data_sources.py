"""Real data sources: qlib provider directories and long-format Parquet/CSV tables, and their input checks."""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from distgru.data.panel import BarPanel, DataError
from distgru.data.qlib_provider import load_qlib_provider, symbol_dirname, write_qlib_provider
from distgru.data.tabular import load_long_table
from distgru.data.validate import DataWarning

DAYS = ["2020-01-02", "2020-01-03", "2020-01-06", "2020-01-07", "2020-01-08", "2020-01-09"]


def write_bin(root: Path, symbol: str, field: str, start: int, values: list[float]) -> Path:
    directory = root / "features" / symbol_dirname(symbol)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{field}.day.bin"
    np.array([start, *values], dtype="<f4").tofile(path)
    return path


def write_bars(root: Path, symbol: str, start: int, close: list[float], fields: tuple[str, ...] = ()) -> None:
    for name in ("open", "high", "low", "close", *fields):
        write_bin(root, symbol, name, start, close)
    write_bin(root, symbol, "volume", start, [c * 0 + 1000.0 for c in close])  # NaN where close is NaN


@pytest.fixture
def provider(tmp_path: Path) -> Path:
    """Hand-made: SH600000 all days, SZ000001 from day 2 with a NaN gap and two csi300 spans, CON (a
    Windows-reserved name), SH600999 listed without data, and the SH000300 benchmark."""
    root = tmp_path / "qlib"
    (root / "calendars").mkdir(parents=True)
    (root / "calendars" / "day.txt").write_text("\n".join(DAYS) + "\n")
    (root / "instruments").mkdir()
    (root / "instruments" / "csi300.txt").write_text(
        "SH600000\t2020-01-02\t2020-01-09\n"
        "SZ000001\t2020-01-03\t2020-01-06\n"
        "SZ000001\t2020-01-08\t2020-01-31\n"
        "CON\t2020-01-01\t2020-01-03\n"
        "SH600999\t2020-01-02\t2020-01-09\n"
    )
    write_bars(root, "SH600000", 0, [10, 11, 12, 13, 14, 15], fields=("factor",))
    write_bars(root, "SZ000001", 1, [5, 6, np.nan, 7])
    write_bars(root, "CON", 0, [2, 2])
    write_bin(root, "SH000300", "close", 0, [4000, 4010, 4020, 4030, 4040, 4050])
    write_bin(root, "SH000300", "change", 0, [0, 0.0025, 0.0025, 0.0025, 0.0025, 0.0025])
    return root


def load(root: Path, **kwargs: object) -> BarPanel:
    with pytest.warns(DataWarning) as record:
        panel = load_qlib_provider(root, **kwargs)  # type: ignore[arg-type]
    assert any("SH600999" in str(w.message) for w in record)
    return panel


def test_provider_values_spans_and_benchmark(provider: Path) -> None:
    with pytest.warns(DataWarning) as record:
        panel = load_qlib_provider(provider)
    skipped = [str(w.message) for w in record if "without data" in str(w.message)]
    assert len(skipped) == 1 and "1 listed symbol" in skipped[0] and "SH600999" in skipped[0]
    assert panel.instruments == ("CON", "SH600000", "SZ000001")
    assert panel.calendar.equals(pd.DatetimeIndex(DAYS))
    sz = panel.instruments.index("SZ000001")
    np.testing.assert_array_equal(panel.fields["close"][sz], [np.nan, 5, 6, np.nan, 7, np.nan])
    # Two spans: Jan 3..6 and Jan 8.. (the second clipped to the calendar).
    np.testing.assert_array_equal(panel.membership[sz], [0, 1, 1, 0, 1, 1])
    np.testing.assert_array_equal(panel.membership[panel.instruments.index("CON")], [1, 1, 0, 0, 0, 0])
    # factor exists for SH600000 only: kept, NaN elsewhere (with a warning naming the others).
    assert "factor" in panel.fields and np.isnan(panel.fields["factor"][sz]).all()
    assert any("factor for 2" in str(w.message) for w in record)
    assert panel.benchmark_name == "SH000300" and set(panel.benchmark or {}) == {"close", "change"}
    assert panel.benchmark["close"][-1] == 4050  # type: ignore[index]


def test_provider_instruments_start_end_and_zero_volume(provider: Path) -> None:
    panel = load_qlib_provider(provider, instruments=["sz000001"], benchmark=None, fields=())
    assert panel.instruments == ("SZ000001",) and panel.membership.all() and panel.benchmark is None
    assert sorted(panel.fields) == ["close", "high", "low", "open", "volume"]
    with pytest.raises(DataError, match="SH600999"):
        load_qlib_provider(provider, instruments=["SH600999"])
    # CON is a member only before Jan 6: dropped from a window after that.
    late = load(provider, start="2020-01-06", end="2020-01-08")
    assert late.instruments == ("SH600000", "SZ000001") and len(late.calendar) == 3
    # market "all": the benchmark listed there is still the benchmark, not an instrument.
    (provider / "instruments" / "all.txt").write_text("SH000300\t2020-01-02\t2020-01-09\n"
                                                      "SH600000\t2020-01-02\t2020-01-09\n")
    everything = load_qlib_provider(provider, market="all")
    assert everything.instruments == ("SH600000",) and everything.benchmark_name == "SH000300"
    write_bin(provider, "SH600000", "volume", 0, [1000, 0, 1000, 1000, 1000, 1000])
    masked = load(provider, zero_volume_as_missing=True)
    row = masked.instruments.index("SH600000")
    assert np.isnan(masked.fields["close"][row, 1]) and masked.fields["close"][row, 2] == 12
    assert load(provider).fields["close"][row, 1] == 11


def test_provider_round_trip(provider: Path, tmp_path: Path) -> None:
    panel = load(provider)
    out = write_qlib_provider(panel, tmp_path / "copy", market="csi300")
    again = load_qlib_provider(out, market="csi300")
    assert again.fingerprint() == panel.fingerprint()
    spans = (out / "instruments" / "csi300.txt").read_text().splitlines()
    assert [s for s in spans if s.startswith("SZ000001")] == [
        "SZ000001\t2020-01-03\t2020-01-06", "SZ000001\t2020-01-08\t2020-01-09"]


def _mutate(root: Path, case: str) -> str:
    """Break the provider in one way; returns a regex the error must match."""
    cal = root / "calendars" / "day.txt"
    if case == "no calendar":
        cal.unlink()
        return r"calendars/day\.txt: calendar file missing"
    if case == "bad date":
        cal.write_text("2020-01-02\n2020-13-01\n")
        return r"day\.txt:2: '2020-13-01'"
    if case == "unsorted":
        cal.write_text("2020-01-02\n2020-01-06\n2020-01-03\n")
        return r"day\.txt:3: 2020-01-03 is a out of order \(after 2020-01-06\)"
    if case == "duplicate":
        cal.write_text("2020-01-02\n2020-01-02\n\n")  # a trailing blank line is harmless
        return r"day\.txt:2: 2020-01-02 is a duplicate"
    if case == "past calendar":
        write_bin(root, "SH600000", "close", 3, [1, 2, 3, 4])
        return r"sh600000/close\.day\.bin: 4 values from calendar index 3 run to index 6.*has 6 days"
    if case == "truncated":
        (root / "features" / "sh600000" / "open.day.bin").write_bytes(b"\0\0")
        return r"sh600000/open\.day\.bin: 2 bytes"
    if case == "no data":
        (root / "instruments" / "csi300.txt").write_text("SH600999\t2020-01-02\t2020-01-09\n")
        return r"csi300\.txt: names no instrument with data"
    if case == "bad span":
        (root / "instruments" / "csi300.txt").write_text("SH600000\t2020-01-02\n")
        return r"csi300\.txt:1: expected"
    if case == "negative":
        write_bin(root, "SZ000001", "low", 1, [5, -1, np.nan, 7])
        return r"1 zero or negative 'low'.*SZ000001 2020-01-06 \(features/sz000001\) \(-1\)"
    if case == "inf":
        write_bin(root, "SH600000", "volume", 0, [1, 1, 1, 1, 1, np.inf])
        return r"1 infinite 'volume'.*SH600000 2020-01-09"
    if case == "no benchmark":
        for p in (root / "features" / "sh000300").iterdir():
            p.unlink()
        return r"benchmark SH000300 has no close\.day\.bin; pass benchmark=None"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["no calendar", "bad date", "unsorted", "duplicate", "past calendar", "truncated",
                                  "no data", "bad span", "negative", "inf", "no benchmark"])
def test_provider_errors(provider: Path, case: str) -> None:
    pattern = _mutate(provider, case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # the skipped SH600999 is not what these cases test
        with pytest.raises(DataError, match=pattern):
            load_qlib_provider(provider)


def test_provider_missing_dir_market_and_fields(provider: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: qlib provider directory does not exist"):
        load_qlib_provider(tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"csi500\.txt: market file missing; available markets: \['csi300'\]"):
        load_qlib_provider(provider, market="csi500")
    with pytest.raises(DataError, match=r"no instrument has field\(s\) \['vwap'\]; available: \['close', 'factor'"):
        load_qlib_provider(provider, fields=("vwap", "factor"))
    only = load_qlib_provider(provider, fields=("vwap", "factor"), missing_fields_ok=True)
    assert set(only.fields) == {"open", "high", "low", "close", "volume", "factor"}  # vwap: absent, left out
    (provider / "features" / "sz000001" / "volume.day.bin").unlink()
    with pytest.warns(DataWarning) as record:
        panel = load_qlib_provider(provider)
    assert any(re.search(r"skipped 1 instrument\(s\) lack required field files.*SZ000001 \(no volume\)",
                         str(w.message)) for w in record)
    assert "SZ000001" not in panel.instruments
    for sym in ("sh600000", "_qlib_con"):
        (provider / "features" / sym / "open.day.bin").unlink()
    with pytest.warns(DataWarning), pytest.raises(DataError, match=r"3 instrument\(s\) lack.*none is complete"):
        load_qlib_provider(provider)


def to_long(panel: BarPanel) -> pd.DataFrame:
    """Rows where the panel has a close, plus the benchmark's rows, dates as text (same in CSV and Parquet)."""
    rows, cols = np.nonzero(~np.isnan(panel.fields["close"]))
    frame = pd.DataFrame({"datetime": panel.calendar[cols].strftime("%Y-%m-%d"),
                          "instrument": np.array(panel.instruments)[rows]})
    for name, values in panel.fields.items():
        frame[name] = values[rows, cols]
    frame["member"] = panel.membership[rows, cols]
    if panel.benchmark is not None:
        bench = pd.DataFrame({"datetime": panel.calendar.strftime("%Y-%m-%d"), "instrument": panel.benchmark_name})
        for name, values in panel.benchmark.items():
            bench[name] = values
        frame = pd.concat([frame, bench], ignore_index=True)
    return frame


def save(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def test_long_table_matches_provider_in_both_formats(provider: Path, tmp_path: Path) -> None:
    panel = load(provider)
    frame = to_long(panel).sample(frac=1.0, random_state=0)  # row order must not matter
    loaded = [load_long_table(save(frame, tmp_path / f"bars.{ext}"), benchmark="sh000300")
              for ext in ("csv", "parquet")]
    assert loaded[0].fingerprint() == loaded[1].fingerprint()
    table = loaded[0]
    assert table.instruments == panel.instruments and table.calendar.equals(panel.calendar)
    for name, values in panel.fields.items():
        np.testing.assert_array_equal(table.fields[name], values)
    np.testing.assert_array_equal(table.membership, panel.membership & ~np.isnan(panel.fields["close"]))
    assert table.benchmark_name == "SH000300"
    np.testing.assert_array_equal(table.benchmark["close"], panel.benchmark["close"])  # type: ignore[index]
    with pytest.warns(DataWarning, match=r"dropped 6 row\(s\) with NaN"):  # SH000300 as a stock: no open
        without_member = load_long_table(save(frame.drop(columns="member"), tmp_path / "nomember.parquet"))
    assert without_member.instruments == panel.instruments and without_member.benchmark is None
    np.testing.assert_array_equal(without_member.membership, ~np.isnan(panel.fields["close"]))


def _frame() -> pd.DataFrame:
    return pd.DataFrame({
        "datetime": ["2020-01-02", "2020-01-03", "2020-01-02", "2020-01-03"],
        "instrument": ["SH600000", "SH600000", "000001", "000001"],
        "open": [10.0, 11, 5, 6], "high": [10.0, 11, 5, 6], "low": [10.0, 11, 5, 6], "close": [10.0, 11, 5, 6],
        "volume": [100.0, 0, 50, 60],
    })


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_long_table_errors(tmp_path: Path, ext: str) -> None:
    def row(i: int) -> str:  # how each format names data row i
        return f"line {i + 2}" if ext == "csv" else f"row {i}"

    def fails(frame: pd.DataFrame, pattern: str) -> None:
        with pytest.raises(DataError, match=pattern):
            load_long_table(save(frame, tmp_path / f"bad.{ext}"))

    panel = load_long_table(save(_frame(), tmp_path / f"ok.{ext}"), zero_volume_as_missing=True)
    assert panel.instruments == ("000001", "SH600000")  # leading zeros survive CSV
    assert np.isnan(panel.fields["close"][1, 1]) and panel.fields["close"][1, 0] == 10

    fails(_frame().drop(columns=["volume", "low"]), r"missing column\(s\) \['low', 'volume'\]; required")
    fails(_frame().assign(datetime=["2020-01-02", "2020-01-03", "soon", "2020-01-03"]),
          rf"bad\.{ext}: 1 unparsable date.*: {row(2)}: 'soon'")
    fails(_frame().assign(datetime=["2020-01-02"] * 4),
          r"4 rows share a \(datetime, instrument\) key.*SH600000 2020-01-02")
    fails(_frame().assign(high=[10.0, 11, 0, 6]), rf"1 zero or negative 'high'.*{row(2)} \(000001 2020-01-02\)")
    fails(_frame().assign(close=[10.0, 11, 5, np.inf]), rf"1 infinite 'close'.*{row(3)} \(000001 2020-01-03\)")
    fails(_frame().assign(volume=[1.0, 1, -5, 1]), rf"negative 'volume'.*{row(2)}")
    fails(_frame().assign(open=["10", "x", "5", "6"]), rf"non-numeric 'open'.*{row(1)}: 'x'")

    with pytest.warns(DataWarning) as record:
        frame = _frame().assign(close=[10.0, np.nan, 5, 6], Notes=["a", "b", "c", "d"])
        dropped = load_long_table(save(frame, tmp_path / f"nan.{ext}"))
    messages = " ".join(str(w.message) for w in record)
    assert "ignoring column(s) ['notes']" in messages and "dropped 1 row(s) with NaN" in messages
    assert f"first: {row(1)}" in messages
    assert np.isnan(dropped.fields["open"][1, 1]) and not dropped.membership[1, 1]


def test_long_table_format_and_benchmark_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.csv: file does not exist"):
        load_long_table(tmp_path / "missing.csv")
    odd = save(_frame(), tmp_path / "bars.csv").rename(tmp_path / "bars.txt")
    with pytest.raises(DataError, match=r"bars\.txt: cannot tell the format.*fmt='csv'"):
        load_long_table(odd)
    assert load_long_table(odd, fmt="csv").shape == (2, 2)
    with pytest.raises(DataError, match=r"no rows for benchmark SH000300; pass benchmark=None"):
        load_long_table(odd, fmt="csv", benchmark="SH000300")


@pytest.mark.shared_data
def test_shared_csi300(csi300_dir: Path) -> None:
    began = time.perf_counter()
    with pytest.warns(DataWarning, match=r"skipped 38 listed symbol\(s\) without data") as record:
        panel = load_qlib_provider(csi300_dir)
    seconds = time.perf_counter() - began
    assert len(record) == 1
    assert panel.shape == (751, 3966) and seconds < 10, seconds
    assert set(panel.fields) == {"open", "high", "low", "close", "volume", "factor", "change"}
    spans = pd.read_csv(csi300_dir / "instruments" / "csi300.txt", sep="\t", header=None, names=["s", "a", "b"])
    mine = spans[spans.s == "SH600004"]
    assert len(mine) == 2
    expected = np.zeros(len(panel.calendar), dtype=bool)
    for a, b in zip(mine.a, mine.b, strict=True):
        expected |= (panel.calendar >= a) & (panel.calendar <= b)
    np.testing.assert_array_equal(panel.membership[panel.instruments.index("SH600004")], expected)
    members_per_day = panel.membership.sum(axis=0)
    assert members_per_day.min() >= 240 and members_per_day.max() <= 300
    assert panel.benchmark is not None and not np.isnan(panel.benchmark["close"]).any()
    raw = np.fromfile(csi300_dir / "features" / "sh600000" / "close.day.bin", dtype="<f4")
    first = int(raw[0])
    np.testing.assert_array_equal(panel.fields["close"][panel.instruments.index("SH600000"), first:], raw[1:])
