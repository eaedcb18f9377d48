"""Read (and, for tests and exports, write) a qlib provider directory such as ``~/.qlib/qlib_data/cn_data``.

Layout (qlib's dump_bin format): ``calendars/day.txt`` one ``%Y-%m-%d`` date a line;
``instruments/<market>.txt`` ``SYMBOL<TAB>start<TAB>end`` lines, several per symbol for several membership
spans; and ``features/<symbol lower>/<field>.day.bin``, little-endian float32 whose element 0 is the calendar
index of the first value. Every bin is read with one buffer read and no pandas, so the 751-stock CSI300 set
loads in about a second.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from distgru.data.panel import OPTIONAL_FIELDS, REQUIRED_FIELDS, BarPanel, DataError
from distgru.data.validate import check_values, listing, mask_zero_volume, parse_dates, warn

FREQ = "day"
CALENDAR_FORMAT = "%Y-%m-%d"
# Windows cannot create directories with these names, so qlib stores them with a prefix (its code_to_fname).
_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(10)})
_RESERVED_PREFIX = "_qlib_"

Spans = dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]]


def symbol_dirname(symbol: str) -> str:
    """The ``features/`` folder of a symbol: lower case, Windows-reserved names prefixed as qlib does."""
    upper = symbol.upper()
    return (_RESERVED_PREFIX + upper if upper in _RESERVED else upper).lower()


def read_calendar(root: Path) -> pd.DatetimeIndex:
    path = root / "calendars" / f"{FREQ}.txt"
    if not path.is_file():
        raise DataError(f"{path}: calendar file missing; a qlib provider needs calendars/{FREQ}.txt "
                        "(one trading day per line). Is this the provider_uri directory?")
    texts = [s.strip() for s in path.read_text().splitlines()]
    filled = [i for i, s in enumerate(texts) if s]
    if not filled:
        raise DataError(f"{path}: calendar is empty")
    # The bins index days by line, so a blank line before the last date (qlib's loadtxt skips it) shifts every
    # later day by one; blank lines after it are harmless.
    blank = [i for i in range(filled[-1]) if not texts[i]]
    if blank:
        i = blank[0]
        after = next((f"{texts[j]} on line {j + 1}" for j in range(i - 1, -1, -1) if texts[j]), "the file start")
        more = f" ({len(blank)} blank lines in all)" if len(blank) > 1 else ""
        raise DataError(f"{path}:{i + 1}: blank line after {after}{more}; every line up to the last must hold "
                        "one trading day: put back the missing date (or delete the line if it was added by mistake)")
    numbered = [(i + 1, texts[i]) for i in filled]
    lines = np.array([i for i, _ in numbered])
    cal = parse_dates([s for _, s in numbered], lambda idx: [f"{path}:{lines[i]}" for i in idx], str(path),
                      fmt=CALENDAR_FORMAT)
    steps = np.diff(cal.asi8)
    bad = np.flatnonzero(steps <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        what = "duplicate date" if steps[i - 1] == 0 else f"out of order (after {cal[i - 1]:%Y-%m-%d})"
        raise DataError(f"{path}:{lines[i]}: {cal[i]:%Y-%m-%d} is a {what}; the calendar must be sorted and "
                        f"unique ({bad.size} such line(s))")
    return cal


def available_markets(root: Path) -> list[str]:
    return sorted(p.stem for p in (root / "instruments").glob("*.txt"))


def read_spans(path: Path) -> Spans:
    """Symbol → its membership spans (inclusive), in file order; a symbol may have several lines."""
    rows: list[tuple[int, str, str, str]] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise DataError(f"{path}:{number}: expected 'SYMBOL<TAB>start<TAB>end', got {line!r}")
        rows.append((number, *parts))
    if not rows:
        raise DataError(f"{path}: lists no instruments")
    where = [f"{path}:{r[0]}" for r in rows]
    starts = parse_dates([r[2] for r in rows], lambda idx: [where[i] for i in idx], str(path))
    ends = parse_dates([r[3] for r in rows], lambda idx: [where[i] for i in idx], str(path))
    spans: Spans = {}
    for (_, symbol, _, _), lo, hi, loc in zip(rows, starts, ends, where, strict=True):
        if lo > hi:
            raise DataError(f"{loc}: span of {symbol} starts {lo:%Y-%m-%d} after it ends {hi:%Y-%m-%d}")
        spans.setdefault(symbol.upper(), []).append((lo, hi))
    return spans


def _market_spans(root: Path, market: str) -> tuple[Path, Spans]:
    path = root / "instruments" / f"{market}.txt"
    if not path.is_file() and (root / "instruments" / f"{market.lower()}.txt").is_file():
        path = root / "instruments" / f"{market.lower()}.txt"
    if not path.is_file():
        have = available_markets(root)
        raise DataError(f"{path}: market file missing; available markets: "
                        f"{have or 'none (instruments/ is empty)'}. Pass one of those as market, or name "
                        "instruments explicitly.")
    return path, read_spans(path)


def _bin_fields(directory: Path) -> set[str]:
    suffix = f".{FREQ}.bin"
    try:
        return {p.name[: -len(suffix)] for p in directory.iterdir() if p.name.endswith(suffix)}
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _read_bin(path: Path, n_days: int) -> tuple[int, np.ndarray]:
    """(calendar index of the first value, the values) of one bin, checked against the calendar length."""
    data = path.read_bytes()
    if not data or len(data) % 4:
        raise DataError(f"{path}: {len(data)} bytes is not a float32 start index plus values (truncated or "
                        "not a qlib bin); re-dump this instrument")
    raw = np.frombuffer(data, dtype="<f4")
    first = float(raw[0])
    if not (np.isfinite(first) and first >= 0 and first == int(first)):
        raise DataError(f"{path}: element 0 is {first!r}, expected a calendar start index (whole number >= 0)")
    start, n = int(first), raw.size - 1
    if start + n > n_days:
        raise DataError(f"{path}: {n} values from calendar index {start} run to index {start + n - 1}, but "
                        f"calendars/{FREQ}.txt has {n_days} days (last index {n_days - 1}); the bin was "
                        "dumped against a longer calendar: restore the calendar or re-dump the data")
    return start, raw[1:]


def _read_fields(directory: Path, names: Iterable[str], n_days: int) -> dict[str, tuple[int, np.ndarray]]:
    return {name: _read_bin(directory / f"{name}.{FREQ}.bin", n_days) for name in names}


def _uneven_fields(directory: Path, bins: dict[str, tuple[int, np.ndarray]], cal: pd.DatetimeIndex) -> list[str]:
    """One text per field file that covers fewer days than the instrument's other fields.

    dump_bin writes every field of an instrument over the same first..last days, so a shorter file was cut
    short (a truncation at a 4-byte boundary still parses) or left behind by a partial re-dump.
    """
    if len(bins) < 2:
        return []
    first = min(start for start, _ in bins.values())
    end = max(start + values.size for start, values in bins.values())

    def days(lo: int, hi: int) -> str:
        return f"{cal[lo]:%Y-%m-%d}..{cal[hi - 1]:%Y-%m-%d}" if hi > lo else "no day"

    return [f"{directory / f'{name}.{FREQ}.bin'} ({days(start, start + values.size)}, the other fields "
            f"{days(first, end)})"
            for name, (start, values) in bins.items() if start > first or start + values.size < end]


def _as_series(bins: dict[str, tuple[int, np.ndarray]], n_days: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, (start, values) in bins.items():
        series = np.full(n_days, np.nan, dtype=np.float32)
        series[start:start + values.size] = values
        out[name] = series
    return out


def _span_mask(spans: list[tuple[pd.Timestamp, pd.Timestamp]], cal: pd.DatetimeIndex) -> np.ndarray:
    mask = np.zeros(len(cal), dtype=bool)
    for lo, hi in spans:
        mask[cal.searchsorted(lo, "left"):cal.searchsorted(hi, "right")] = True
    return mask


def load_qlib_provider(
    provider: str | Path,
    market: str = "csi300",
    instruments: list[str] | None = None,
    start: str | None = None,
    end: str | None = None,
    benchmark: str | None = "SH000300",
    fields: tuple[str, ...] | None = None,
    zero_volume_as_missing: bool = False,
    missing_fields_ok: bool = False,
) -> BarPanel:
    """Daily bars of a qlib provider directory as a :class:`BarPanel`.

    - ``market``: ``instruments/<market>.txt`` gives the universe and its point-in-time membership (a
      symbol is a member on days inside any of its spans); ``"all"`` reads ``all.txt``. Symbols listed without
      any data under ``features/`` are skipped with one :class:`DataWarning`; symbols missing some required
      field files are skipped with another (an error if nothing is left).
    - ``instruments``: explicit symbols instead of a market, membership all True (qlib's ``D.features`` on a
      list applies no spans). A named symbol without data is an error.
    - ``start``/``end`` slice the calendar (inclusive); pass ``start=None`` to keep the history that look-back
      windows need. With a market, symbols never a member inside the window are dropped (as qlib's
      list_instruments does).
    - ``benchmark``: index symbol whose series go to ``panel.benchmark`` (never an instrument); ``None`` for
      none. A provider without it is an error (pass ``None``) rather than a silently missing benchmark.
    - ``fields``: extra fields beyond open/high/low/close/volume; default: every optional field
      (factor, vwap, change, weight) any instrument has. Instruments lacking an optional field get NaN; a named
      field no instrument has is an error, or with ``missing_fields_ok`` left out (the feature engine then reads
      it as NaN, as qlib's VWAP features on its public cn data).
    - ``zero_volume_as_missing``: suspended days stored as flat zero-volume bars become NaN (no bar). Off by
      default for parity with qlib, whose backtest only treats a missing bar as suspended.

    Values are checked after slicing: inf, zero/negative prices or factor and negative volume raise
    :class:`DataError` naming the instrument, date and file; NaN is a day without a bar.
    """
    root = Path(provider).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: qlib provider directory does not exist; pass the provider_uri (the "
                        "directory holding calendars/, instruments/ and features/), e.g. ~/.qlib/qlib_data/cn_data")
    cal = read_calendar(root)
    n_days = len(cal)
    bench = benchmark.upper() if benchmark else None

    spans: Spans | None = None
    if instruments is None:
        listed_in, spans = _market_spans(root, market)
        candidates = sorted(set(spans) - {bench})
    else:
        listed_in, candidates = None, sorted({s.upper() for s in instruments} - {bench})
        if not candidates:
            raise DataError(f"{root}: instruments={instruments!r} names no instrument besides the benchmark")

    have = {sym: _bin_fields(root / "features" / symbol_dirname(sym)) for sym in candidates}
    no_data = [s for s in candidates if not have[s]]
    partial = {s: sorted(set(REQUIRED_FIELDS) - have[s]) for s in candidates if have[s]}
    partial = {s: miss for s, miss in partial.items() if miss}
    symbols = [s for s in candidates if s not in no_data and s not in partial]
    if listed_in is None and no_data:
        raise DataError(f"{root / 'features'}: no data for requested instrument(s) {listing(no_data)}; "
                        "check the symbols (e.g. SH600000) or the provider directory")
    if no_data:
        warn(f"{listed_in}: skipped {len(no_data)} listed symbol(s) without data under {root / 'features'}: "
             f"{listing(no_data)}")
    if partial:
        shown = [f"{s} (no {'/'.join(m)})" for s, m in partial.items()]
        message = (f"{len(partial)} instrument(s) lack required field files under {root / 'features'}: "
                   f"{listing(shown)}")
        if not symbols:
            raise DataError(f"{message}; none is complete. Re-dump the data with all of "
                            f"{', '.join(REQUIRED_FIELDS)}")
        warn(f"skipped {message}")
    if not symbols:
        raise DataError(f"{listed_in or root}: names no instrument with data under {root / 'features'} "
                        f"({len(candidates)} symbol(s) listed, e.g. {listing(candidates, 3)}); is features/ "
                        "complete and are its directories lower-case symbols?")

    present = set().union(*(have[s] for s in symbols))
    if fields is None:
        extra = [f for f in OPTIONAL_FIELDS if f in present]
    else:
        unknown = [f for f in fields if f not in present]
        if unknown and not missing_fields_ok:
            raise DataError(f"{root / 'features'}: no instrument has field(s) {unknown}; "
                            f"available: {sorted(present)}")
        extra = [f for f in dict.fromkeys(fields) if f not in REQUIRED_FIELDS and f in present]
    names = [*REQUIRED_FIELDS, *extra]

    arrays = {name: np.full((len(symbols), n_days), np.nan, dtype=np.float32) for name in names}
    uneven: list[str] = []
    for row, sym in enumerate(symbols):
        directory = root / "features" / symbol_dirname(sym)
        bins = _read_fields(directory, [n for n in names if n in have[sym]], n_days)
        for name, (first, values) in bins.items():
            arrays[name][row, first:first + values.size] = values
        uneven += _uneven_fields(directory, bins, cal)
    lacking = {name: [s for s in symbols if name not in have[s]] for name in extra}
    lacking = {name: syms for name, syms in lacking.items() if syms}
    if lacking:
        warn("optional field(s) missing for some instruments, left NaN there: "
             + "; ".join(f"{name} for {len(syms)} ({listing(syms, 3)})" for name, syms in lacking.items()))

    if spans is None:
        membership = np.ones((len(symbols), n_days), dtype=bool)
    else:
        membership = np.stack([_span_mask(spans[s], cal) for s in symbols])

    bench_series: dict[str, np.ndarray] | None = None
    if bench is not None:
        bench_dir = root / "features" / symbol_dirname(bench)
        bench_fields = _bin_fields(bench_dir)
        if "close" not in bench_fields:
            raise DataError(f"{bench_dir}: benchmark {bench} has no close.{FREQ}.bin; pass benchmark=None to "
                            "load without a benchmark, or name an index that the provider holds")
        wanted = [f for f in (*REQUIRED_FIELDS, *OPTIONAL_FIELDS) if f in bench_fields]
        bench_bins = _read_fields(bench_dir, wanted, n_days)
        uneven += _uneven_fields(bench_dir, bench_bins, cal)
        bench_series = _as_series(bench_bins, n_days)
    if uneven:
        warn(f"{len(uneven)} field file(s) cover fewer days than the other fields of their instrument (truncated "
             f"or partly re-dumped): {listing(uneven, 3)}; the missing days load as NaN, as qlib reads them. "
             "Re-dump those instruments with qlib's scripts/dump_bin.py or restore the files")

    lo = 0 if start is None else int(cal.searchsorted(pd.Timestamp(start), "left"))
    hi = n_days if end is None else int(cal.searchsorted(pd.Timestamp(end), "right"))
    if lo >= hi:
        raise DataError(f"{root}: no trading day in start={start} .. end={end}; the calendar covers "
                        f"{cal[0]:%Y-%m-%d} .. {cal[-1]:%Y-%m-%d}")
    keep = np.arange(len(symbols)) if spans is None else np.flatnonzero(membership[:, lo:hi].any(axis=1))
    if keep.size == 0:
        raise DataError(f"{listed_in}: no instrument is a member between {start} and {end}")
    cal = cal[lo:hi]
    symbols = [symbols[i] for i in keep]
    arrays = {k: np.ascontiguousarray(v[keep, lo:hi]) for k, v in arrays.items()}
    membership = np.ascontiguousarray(membership[keep, lo:hi])
    if bench_series is not None:
        bench_series = {k: v[lo:hi].copy() for k, v in bench_series.items()}

    def locate(where: tuple[np.ndarray, ...]) -> list[str]:
        rows, cols = where
        return [f"{symbols[i]} {cal[j]:%Y-%m-%d} (features/{symbol_dirname(symbols[i])})"
                for i, j in zip(rows, cols, strict=True)]

    check_values(arrays, locate, str(root))
    if bench_series is not None:
        assert bench is not None
        check_values(bench_series, lambda w: [f"benchmark {bench} {cal[j]:%Y-%m-%d}" for j in w[0]],
                     str(root))
    if zero_volume_as_missing:
        mask_zero_volume(arrays)

    return BarPanel(
        calendar=cal,
        instruments=tuple(symbols),
        fields=arrays,
        membership=membership,
        benchmark=bench_series,
        benchmark_name=bench if bench_series is not None else None,
        source=str(root),
        extras={"market": None if spans is None else market, "skipped_without_data": no_data,
                "skipped_incomplete": sorted(partial)},
    )


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Inclusive (first, last) index pairs of the True runs of a 1-D bool array."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) - 1, strict=True))


def _write_bins(directory: Path, series: dict[str, np.ndarray]) -> tuple[int, int] | None:
    """Bins spanning the first..last day with any value (as dump_bin writes them); None without any value."""
    has = np.any([~np.isnan(v) for v in series.values()], axis=0)
    if not has.any():
        return None
    first, last = int(np.argmax(has)), len(has) - 1 - int(np.argmax(has[::-1]))
    directory.mkdir(parents=True, exist_ok=True)
    for name, values in series.items():
        body = np.asarray(values[first:last + 1], dtype="<f4")
        np.concatenate(([np.float32(first)], body)).astype("<f4").tofile(directory / f"{name}.{FREQ}.bin")
    return first, last


def write_qlib_provider(panel: BarPanel, out_dir: str | Path, market: str = "csi300") -> Path:
    """Write ``panel`` as a qlib provider directory that :func:`load_qlib_provider` reads back.

    ``instruments/<market>.txt`` holds one span per run of membership; ``all.txt`` each instrument's
    first..last bar (unless ``market`` is ``all``, which then holds the membership runs). The benchmark, if
    any, is written under its symbol's directory.
    """
    root = Path(out_dir)
    (root / "calendars").mkdir(parents=True, exist_ok=True)
    (root / "instruments").mkdir(parents=True, exist_ok=True)
    days = [f"{d:{CALENDAR_FORMAT}}" for d in panel.calendar]
    (root / "calendars" / f"{FREQ}.txt").write_text("\n".join(days) + "\n")

    member_lines: list[str] = []
    all_lines: list[str] = []
    for row, sym in enumerate(panel.instruments):
        series = {k: v[row] for k, v in panel.fields.items()}
        extent = _write_bins(root / "features" / symbol_dirname(sym), series)
        if extent is not None:
            all_lines.append(f"{sym}\t{days[extent[0]]}\t{days[extent[1]]}")
        member_lines += [f"{sym}\t{days[a]}\t{days[b]}" for a, b in _runs(panel.membership[row])]
    if panel.benchmark is not None and panel.benchmark_name:
        _write_bins(root / "features" / symbol_dirname(panel.benchmark_name), dict(panel.benchmark))
    (root / "instruments" / f"{market}.txt").write_text("\n".join(member_lines) + "\n")
    if market != "all":
        (root / "instruments" / "all.txt").write_text("\n".join(all_lines) + "\n")
    return root
