"""Checks shared by every real data source, so a qlib provider, a Parquet file and a CSV file reject the same
data with the same words.

Each check takes a ``locate`` callback that turns positions into "where" text (a file and line, a row number,
an instrument and date), so the message always points at something the user can open and fix.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from distgru.data.panel import PRICE_FIELDS, DataError

POSITIVE_FIELDS = frozenset((*PRICE_FIELDS, "factor", "vwap"))
"""Fields where zero or a negative value is corrupt data (NaN stays legal: it means no bar)."""
NON_NEGATIVE_FIELDS = frozenset(("volume", "weight"))
"""Zero volume is a suspension day kept as a flat bar; a negative one is corrupt."""
SHOW = 5
"""How many offending items a message lists before it says how many more there are."""

Locate = Callable[[tuple[np.ndarray, ...]], list[str]]
"""Maps index arrays (as from ``np.nonzero``) to one description per position."""


class DataWarning(UserWarning):
    """Input data was usable but something was dropped or skipped; the message says what and how much."""


def warn(message: str) -> None:
    # stacklevel 3 skips this helper and the loader function that calls it (the user's line for qlib providers).
    warnings.warn(message, DataWarning, stacklevel=3)


def listing(items: Sequence[str], show: int = SHOW) -> str:
    """``a, b, c`` or ``a, b, c … (+12 more)``: long lists stay readable in one message line."""
    head = ", ".join(items[:show])
    return head if len(items) <= show else f"{head} … (+{len(items) - show} more)"


def _first_positions(mask: np.ndarray, show: int) -> tuple[np.ndarray, ...]:
    flat = np.flatnonzero(mask.ravel())[:show]
    return np.unravel_index(flat, mask.shape)


def check_values(fields: Mapping[str, np.ndarray], locate: Locate, source: str) -> None:
    """Reject inf anywhere, zero/negative prices and negative volumes; NaN is accepted everywhere (no bar)."""
    for name, values in fields.items():
        problems: list[tuple[np.ndarray, str]] = [(np.isinf(values), "infinite")]
        # Comparisons with NaN are False, so missing bars never trip these.
        if name in POSITIVE_FIELDS:
            problems.append((values <= 0, "zero or negative"))
        elif name in NON_NEGATIVE_FIELDS:
            problems.append((values < 0, "negative"))
        for mask, what in problems:
            count = int(np.count_nonzero(mask))
            if count:
                where = _first_positions(mask, SHOW)
                bad_values = values[where]
                shown = [f"{loc} ({v:g})" for loc, v in zip(locate(where), bad_values.tolist(), strict=True)]
                raise DataError(
                    f"{source}: {count} {what} {name!r} value(s), first at {listing(shown)}. "
                    "Fix or remove those bars (write NaN, or leave the row out, for a day without a bar)."
                )


def mask_zero_volume(fields: dict[str, np.ndarray]) -> None:
    """Set every field NaN where volume is 0 (suspension days stored as flat bars)."""
    zero = fields["volume"] == 0
    for values in fields.values():
        values[zero] = np.nan


def parse_dates(values: Iterable[object], locate: Callable[[np.ndarray], list[str]], source: str,
                fmt: str | None = None) -> pd.DatetimeIndex:
    """Dates at day resolution; any unparsable or missing value is an error naming where it is."""
    raw = values if isinstance(values, pd.Series) else pd.Series(list(values))
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        parsed = pd.DatetimeIndex(raw)
    else:
        # A long table repeats each date across all instruments: parse each distinct text once.
        codes, uniques = pd.factorize(raw)
        texts = pd.Series(uniques)
        distinct = pd.to_datetime(texts, format=fmt or "ISO8601", errors="coerce")
        retry = distinct.isna()
        if fmt is None and retry.any():
            # Only the non-ISO leftovers pay for per-value format inference ("2020/1/31", "31.01.2020 15:00").
            distinct[retry] = pd.to_datetime(texts[retry], format="mixed", errors="coerce")
        # factorize marks missing values -1, which picks the NaT appended at the end.
        parsed = pd.DatetimeIndex(np.append(distinct.to_numpy(), np.datetime64("NaT"))[codes])
    if parsed.tz is not None:
        parsed = parsed.tz_localize(None)
    bad = np.flatnonzero(parsed.isna())
    if bad.size:
        shown = [f"{loc}: {raw.iloc[i]!r}" for loc, i in zip(locate(bad[:SHOW]), bad[:SHOW], strict=True)]
        expect = f"format {fmt}" if fmt else "a date such as 2020-01-31"
        raise DataError(f"{source}: {bad.size} unparsable date(s) ({expect} expected): {listing(shown)}")
    # One time unit everywhere: panels from different sources must hash alike (fingerprint hashes calendar.asi8).
    return parsed.normalize().as_unit("ns")


def coerce_numeric(column: pd.Series, name: str, locate: Callable[[np.ndarray], list[str]], source: str
                   ) -> np.ndarray:
    """A column as float32; text that is not a number is an error (a missing value stays NaN)."""
    if pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype):
        return column.to_numpy(dtype=np.float32, na_value=np.nan)
    numbers = pd.to_numeric(column, errors="coerce")
    bad = np.flatnonzero((numbers.isna() & column.notna()).to_numpy())
    if bad.size:
        shown = [f"{loc}: {column.iloc[i]!r}" for loc, i in zip(locate(bad[:SHOW]), bad[:SHOW], strict=True)]
        raise DataError(f"{source}: {bad.size} non-numeric {name!r} value(s): {listing(shown)}")
    return numbers.to_numpy(dtype=np.float32, na_value=np.nan)
