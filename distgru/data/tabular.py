"""Daily bars from a long-format table (one row per instrument and day) in Parquet or CSV.

Columns: ``datetime, instrument, open, high, low, close, volume`` and optionally ``factor, vwap, change, weight``
and ``member`` (bool: in the universe that day; without it every row present is a member). Rows missing a
price are dropped with a warning; a missing volume stays NaN, as in qlib providers. Column names are
matched case-insensitively; a Parquet file indexed by (datetime, instrument), as qlib frames are, also works.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from distgru.data.panel import OPTIONAL_FIELDS, PRICE_FIELDS, REQUIRED_FIELDS, BarPanel, DataError
from distgru.data.validate import SHOW, check_values, coerce_numeric, listing, mask_zero_volume, parse_dates, warn

KEYS = ("datetime", "instrument")
MEMBER = "member"
REQUIRED_COLUMNS = (*KEYS, *REQUIRED_FIELDS)
KNOWN_COLUMNS = frozenset((*REQUIRED_COLUMNS, *OPTIONAL_FIELDS, MEMBER))
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def _detect_format(path: Path) -> Literal["parquet", "csv"]:
    suffixes = [s.lower() for s in path.suffixes]
    # Compressed CSV (x.csv.gz) reads like plain CSV: pandas infers the compression from the last suffix.
    for suffix in reversed(suffixes):
        if suffix in _FORMATS:
            return _FORMATS[suffix]  # type: ignore[return-value]
    raise DataError(f"{path}: cannot tell the format from the suffix {''.join(suffixes) or '(none)'}; "
                    "name it .parquet or .csv, or pass fmt='parquet' / fmt='csv'")


def _read(path: Path, fmt: str) -> pd.DataFrame:
    try:
        if fmt == "parquet":
            frame = pd.read_parquet(path)
            index_names = [n for n in frame.index.names if n is not None]
            if any(str(n).lower() in KEYS for n in index_names):
                frame = frame.reset_index()
            return frame
        header = pd.read_csv(path, nrows=0).columns
        # Keys stay text: symbols like 000001 must keep their zeros, and dates are parsed with row-level errors.
        as_text = {c: str for c in header if str(c).strip().lower() in KEYS}
        return pd.read_csv(path, dtype=as_text)  # type: ignore[arg-type]
    except (OSError, ValueError) as exc:  # pyarrow and the CSV parser raise ValueError subclasses
        raise DataError(f"{path}: cannot read as {fmt}: {exc}") from exc


def load_long_table(
    path: str | Path,
    fmt: Literal["parquet", "csv"] | None = None,
    benchmark: str | None = None,
    zero_volume_as_missing: bool = False,
) -> BarPanel:
    """A :class:`BarPanel` from a long-format Parquet or CSV file (``fmt`` defaults to the file suffix).

    The calendar is the sorted union of all dates in the file. ``benchmark`` names a symbol whose rows become
    ``panel.benchmark`` instead of an instrument (an error if the file has none). Rows with NaN in a required
    field are dropped with a :class:`DataWarning`; extra columns are ignored with one. Errors name the row:
    CSV rows by file line (the header is line 1), Parquet rows by 0-based row number.
    """
    source = Path(path).expanduser()
    if not source.is_file():
        raise DataError(f"{source}: file does not exist (expected a long-format .parquet or .csv table)")
    kind = fmt or _detect_format(source)
    if kind not in ("parquet", "csv"):
        raise DataError(f"fmt={fmt!r}: expected 'parquet' or 'csv'")
    frame = _read(source, kind)
    if kind == "csv":
        def where(i: int) -> str:
            return f"line {i + 2}"  # line 1 is the header
    else:
        def where(i: int) -> str:
            return f"row {i}"
    return panel_from_frame(frame, str(source), where, benchmark, zero_volume_as_missing)


def _normalise_columns(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    names = [str(c).strip().lower() for c in frame.columns]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise DataError(f"{source}: column(s) {clashes} appear more than once (names are case-insensitive)")
    frame = frame.set_axis(names, axis=1)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; required: {list(REQUIRED_COLUMNS)}, optional: "
                        f"{[*OPTIONAL_FIELDS, MEMBER]}; found: {names}")
    extra = [c for c in names if c not in KNOWN_COLUMNS]
    if extra:
        warn(f"{source}: ignoring column(s) {extra} (known: {sorted(KNOWN_COLUMNS)})")
    return frame


def _membership_column(column: pd.Series, ignore: np.ndarray, locate: Callable[[np.ndarray], list[str]],
                       source: str) -> np.ndarray:
    """Bools from true/false, 1/0 (any case, text or numbers); rows in ``ignore`` (the benchmark's) may hold
    anything, since an index is no universe member."""
    if pd.api.types.is_bool_dtype(column.dtype) and not column.isna().any():
        return column.to_numpy(dtype=bool)
    if pd.api.types.is_numeric_dtype(column.dtype):
        numbers = column.to_numpy(dtype=np.float64, na_value=np.nan)
        truth = pd.Series(np.where(np.isin(numbers, (0.0, 1.0)), numbers == 1.0, None))
    else:
        words = column.astype("string").str.strip().str.lower()
        truth = words.map({"true": True, "1": True, "1.0": True, "false": False, "0": False, "0.0": False})
    bad = np.flatnonzero(truth.isna().to_numpy() & ~ignore)
    if bad.size:
        shown = [f"{loc}: {column.iloc[i]!r}" for loc, i in zip(locate(bad[:SHOW]), bad[:SHOW], strict=True)]
        raise DataError(f"{source}: {bad.size} {MEMBER!r} value(s) not true/false or 1/0: {listing(shown)}")
    return truth.fillna(False).to_numpy(dtype=bool)


def _symbol_codes(column: pd.Series, rows_at: Callable[[np.ndarray], list[str]], source: str
                  ) -> tuple[np.ndarray, list[str]]:
    """(code per row, sorted upper-case symbols): normalising the few distinct spellings instead of millions of
    cells keeps a 2.5M-row table fast."""
    raw_codes, spellings = pd.factorize(column)
    cleaned = pd.Index(spellings).astype(str).str.strip().str.upper()
    names = sorted(set(cleaned) - {""})
    index = {s: i for i, s in enumerate(names)}
    # The extra -1 at the end is what factorize's -1 (a missing value) indexes.
    codes = np.array([index.get(s, -1) for s in cleaned] + [-1], dtype=np.int64)[raw_codes]
    blank = np.flatnonzero(codes < 0)
    if blank.size:
        raise DataError(f"{source}: {blank.size} row(s) without an instrument: {listing(rows_at(blank[:SHOW]))}")
    return codes, names


def panel_from_frame(
    frame: pd.DataFrame,
    source: str = "frame",
    where: Callable[[int], str] | None = None,
    benchmark: str | None = None,
    zero_volume_as_missing: bool = False,
) -> BarPanel:
    """The checks and pivot behind :func:`load_long_table`, for a long frame already in memory.

    ``where(i)`` names row ``i`` (0-based position in ``frame``) in messages, after ``source``; default
    ``"row i"``.
    """
    name_row = where or (lambda i: f"row {i}")
    frame = _normalise_columns(frame.reset_index(drop=True), source)
    if frame.empty:
        raise DataError(f"{source}: the table has no rows")

    def rows_at(idx: np.ndarray) -> list[str]:
        return [name_row(int(i)) for i in idx]

    dates = parse_dates(frame["datetime"], rows_at, source)
    codes, names = _symbol_codes(frame["instrument"], rows_at, source)

    # One int64 key per (day, symbol) hashes much faster than a two-column frame.
    day_number = dates.asi8 // 86_400_000_000_000
    key = pd.Series((day_number - day_number.min()) * len(names) + codes)
    dup = np.flatnonzero(key.duplicated(keep=False).to_numpy())
    if dup.size:
        shown = [f"{names[codes[i]]} {dates[i]:%Y-%m-%d} ({name_row(int(i))})" for i in dup[: 2 * SHOW]]
        raise DataError(f"{source}: {dup.size} rows share a (datetime, instrument) key with another row: "
                        f"{listing(shown, 2 * SHOW)}. Keep one row per instrument and day.")

    columns = [*REQUIRED_FIELDS, *(f for f in OPTIONAL_FIELDS if f in frame.columns)]
    values = {n: coerce_numeric(frame[n], n, rows_at, source) for n in columns}
    bench = benchmark.upper() if benchmark else None
    bench_code = names.index(bench) if bench in names else -1
    is_bench = codes == bench_code
    member = None
    if MEMBER in frame.columns:
        member = _membership_column(frame[MEMBER], is_bench, rows_at, source)
    # A bar needs its prices; a NaN volume stays NaN, as qlib providers hold such bars (the CSI300 set has ~1,000).
    # An index often comes with a close only, so the benchmark's rows need just that.
    incomplete = np.where(is_bench, np.isnan(values["close"]),
                          np.any([np.isnan(values[n]) for n in PRICE_FIELDS], axis=0))
    if incomplete.any():
        lost = np.flatnonzero(incomplete)
        warn(f"{source}: dropped {lost.size} row(s) with NaN in a price column ({', '.join(PRICE_FIELDS)}; "
             f"close only for the benchmark); first: {listing(rows_at(lost[:SHOW]))}")
    kept = np.flatnonzero(~incomplete)
    if kept.size == 0:
        raise DataError(f"{source}: every row has NaN in a price column ({', '.join(PRICE_FIELDS)})")

    def locate(pos: tuple[np.ndarray, ...]) -> list[str]:
        return [f"{name_row(int(i))} ({names[codes[i]]} {dates[i]:%Y-%m-%d})" for i in kept[pos[0]]]

    values = {n: v[kept] for n, v in values.items()}
    check_values(values, locate, source)
    codes, day_ns, is_bench = codes[kept], dates.asi8[kept], is_bench[kept]

    calendar = pd.DatetimeIndex(np.unique(day_ns).astype("datetime64[ns]"))
    col = np.searchsorted(calendar.asi8, day_ns)
    bench_series: dict[str, np.ndarray] | None = None
    if bench is not None:
        if not is_bench.any():
            raise DataError(f"{source}: no rows for benchmark {bench}; pass benchmark=None or add its rows")
        bench_series = {}
        for n, v in values.items():
            series = np.full(len(calendar), np.nan, dtype=np.float32)
            series[col[is_bench]] = v[is_bench]
            bench_series[n] = series

    stock = ~is_bench
    if not stock.any():
        raise DataError(f"{source}: only benchmark rows ({bench}); the table holds no instrument")
    # Only symbols with a kept row: one whose every row was dropped is no instrument.
    present = np.unique(codes[stock])
    row = np.searchsorted(present, codes[stock])
    shape = (len(present), len(calendar))
    fields = {}
    for n, v in values.items():
        grid = np.full(shape, np.nan, dtype=np.float32)
        grid[row, col[stock]] = v[stock]
        fields[n] = grid
    membership = np.zeros(shape, dtype=bool)
    membership[row, col[stock]] = True if member is None else member[kept][stock]
    if zero_volume_as_missing:
        mask_zero_volume(fields)

    return BarPanel(
        calendar=calendar,
        instruments=tuple(names[c] for c in present),
        fields=fields,
        membership=membership,
        benchmark=bench_series,
        benchmark_name=bench,
        source=source,
    )


def load_benchmark(path: str | Path, symbol: str, calendar: pd.DatetimeIndex) -> dict[str, np.ndarray]:
    """The close of ``symbol`` from a long-format file (datetime, instrument, close; other columns ignored) as
    ``panel.benchmark`` holds it: float32 on ``calendar``, NaN on days the file lacks (the backtest counts 0 then).

    For an index kept apart from the stock bars; the stock file's own rows are read by :func:`load_long_table`."""
    source = Path(path).expanduser()
    if not source.is_file():
        raise DataError(f"{source}: benchmark file does not exist (expected a long-format .parquet or .csv)")
    frame = _read(source, _detect_format(source))
    frame = frame.set_axis([str(c).strip().lower() for c in frame.columns], axis=1)
    missing = [c for c in ("datetime", "instrument", "close") if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; a benchmark file needs datetime, instrument, close")
    rows = frame[frame["instrument"].astype(str).str.strip().str.upper() == symbol.upper()]
    if rows.empty:
        have = sorted(frame["instrument"].astype(str).unique())
        raise DataError(f"{source}: no rows for benchmark {symbol.upper()}; symbols in the file: {listing(have)}")
    try:
        days = pd.DatetimeIndex(pd.to_datetime(rows["datetime"]))
    except (ValueError, TypeError) as e:
        raise DataError(f"{source}: benchmark datetime does not parse ({e}); write dates such as 2020-01-31") from None
    close = pd.Series(pd.to_numeric(rows["close"], errors="coerce").to_numpy(np.float64), index=days)
    close = close[~close.index.duplicated(keep="last")]
    return {"close": close.reindex(calendar).to_numpy(np.float32)}
