"""Block evaluation: instruments packed by the days they need, evaluated one cache-sized block at a time.

Every Alpha158/Alpha360 operator works along one instrument's own series, so nothing ties rows of the panel to
the same calendar day. Each instrument is evaluated on its own days only — from the first day of its series
(its first bar, or qlib's query start for the expression, whichever is later) to the last day an output needs —
left-aligned in a block of similar-length instruments. That skips the calendar before listings and after the
last wanted row (44 % of the CSI300 grid), and keeps an expression's temporaries (~2 MB) in cache, where the
element-wise numpy work runs several times faster than on whole-panel arrays.

Outputs go to a *sink*: :class:`TableSink` fills the dense ``[N, D, F]`` table that training windows read;
:class:`RowSink` writes only the rows a frame wants straight into its array (``distgru features``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from distgru.features.expr import Evaluator, Node

# Elements per block (rows × days): float64 temporaries of ~2 MB stay in a core's cache.
BLOCK_ELEMENTS = 1 << 17
# Columns written to the output together: writing runs of adjacent columns, not one at a time, touches each
# output cache line once per run instead of once per column.
STAGE = 16


@dataclass(frozen=True)
class InstrumentBlock:
    """Instruments evaluated together; row k holds days ``begin[k] .. begin[k] + length[k] - 1``."""

    rows: np.ndarray
    """Instrument indices into the panel."""
    begin: np.ndarray
    """Calendar day of each row's first column."""
    length: np.ndarray
    """Days each row holds (the rest of the row is padding)."""
    width: int
    """Columns of the block: the longest row."""

    def cells(self, n_days: int) -> tuple[np.ndarray, np.ndarray]:
        """(calendar day of each cell [rows, width], clamped into ``n_days``; whether the cell is inside its
        row's length rather than padding)."""
        days = self.begin[:, None] + np.arange(self.width)
        np.minimum(days, n_days - 1, out=days)
        return days, np.arange(self.width) < self.length[:, None]

    def gather(self, series: np.ndarray) -> np.ndarray:
        """float32 [rows, width] of a panel array ``series`` [N, D], NaN after each row's length."""
        days, inside = self.cells(series.shape[1])
        out = series[self.rows[:, None], days].astype(np.float32, copy=False)
        out[~inside] = np.nan
        return out


def pack(begin: np.ndarray, end: np.ndarray, elements: int = BLOCK_ELEMENTS) -> list[InstrumentBlock]:
    """Instruments with days ``begin..end`` (inclusive; none where end < begin), longest first, in blocks of about
    ``elements`` cells."""
    length = end - begin + 1
    ids = np.flatnonzero(length > 0)
    ids = ids[np.argsort(-length[ids], kind="stable")]
    blocks, i = [], 0
    while i < len(ids):
        width = int(length[ids[i]])
        rows = ids[i:i + max(1, elements // width)]
        blocks.append(InstrumentBlock(rows, begin[rows].astype(np.int64), length[rows].astype(np.int64), width))
        i += len(rows)
    return blocks


def _columns(cols: list[int]) -> slice | list[int]:
    return slice(cols[0], cols[-1] + 1) if cols == list(range(cols[0], cols[-1] + 1)) else cols


class Sink:
    """Where block results go. STAGE columns of a block are staged, then written as one run of adjacent columns;
    root ``columns`` (the label) is written at once. Each block is evaluated on one thread: per-block state is
    thread-local."""

    def __init__(self, columns: int) -> None:
        self.columns = columns
        self.local = threading.local()

    def stage(self, shape: tuple[int, ...]) -> np.ndarray:
        """This thread's float32 staging buffer, reused across blocks (no page faults after the first)."""
        size = int(np.prod(shape))
        buffer = getattr(self.local, "stage", None)
        if buffer is None or buffer.size < size:
            buffer = self.local.stage = np.empty(size, dtype=np.float32)
        return buffer[:size].reshape(shape)

    def start(self, block: InstrumentBlock) -> None:
        """Prepare for a block (called on the thread that evaluates it)."""
        self.local.pending = []

    def put(self, block: InstrumentBlock, root: int, value: np.ndarray) -> None:
        """One root's values [rows, width]: staged, or (the label) written at once."""
        if root >= self.columns:
            self.write_label(block, value)
            return
        pending = self.local.pending
        self.stage_column(block, len(pending), value)
        pending.append(root)
        if len(pending) == STAGE:
            self.flush(block)

    def flush(self, block: InstrumentBlock) -> None:
        """Write what ``put`` staged."""
        if self.local.pending:
            self.write(block, self.local.pending)
            self.local.pending = []

    def stage_column(self, block: InstrumentBlock, k: int, value: np.ndarray) -> None:
        raise NotImplementedError

    def write(self, block: InstrumentBlock, cols: list[int]) -> None:
        raise NotImplementedError

    def write_label(self, block: InstrumentBlock, value: np.ndarray) -> None:
        raise NotImplementedError


class TableSink(Sink):
    """Dense ``values`` [N, days, F] and ``labels`` [N, days] of calendar days ``first ..``; cells no block reaches
    keep what they were initialised to (NaN).

    Row k of a block is written from day ``max(begin, first)`` to its last day inside the table: other days are
    outside what the caller asked for.
    """

    def __init__(self, values: np.ndarray, labels: np.ndarray, first: int) -> None:
        super().__init__(values.shape[2])
        self.values, self.labels, self.first = values, labels, first

    def _spans(self, block: InstrumentBlock) -> Iterable[tuple[int, int, int, int, int]]:
        """(row k, panel row, first and past-the-last local day, table day of the first) of each row's writes."""
        days = self.values.shape[1]
        for k in range(len(block.rows)):
            begin = int(block.begin[k])
            lo, hi = max(0, self.first - begin), min(int(block.length[k]), self.first + days - begin)
            if lo < hi:
                yield k, int(block.rows[k]), lo, hi, begin + lo - self.first

    def start(self, block: InstrumentBlock) -> None:
        super().start(block)
        self.stage((STAGE, len(block.rows), block.width))

    def stage_column(self, block: InstrumentBlock, k: int, value: np.ndarray) -> None:
        np.copyto(self.stage((STAGE, len(block.rows), block.width))[k], value, casting="unsafe")

    def write(self, block: InstrumentBlock, cols: list[int]) -> None:
        stage = self.stage((STAGE, len(block.rows), block.width))[:len(cols)]
        where = _columns(cols)
        for k, row, lo, hi, day in self._spans(block):
            self.values[row][day:day + hi - lo, where] = stage[:, k, lo:hi].T

    def write_label(self, block: InstrumentBlock, value: np.ndarray) -> None:
        for k, row, lo, hi, day in self._spans(block):
            self.labels[row, day:day + hi - lo] = value[k, lo:hi]


class RowSink(Sink):
    """The rows of a frame's array ``out`` [R, F + 1] (the label last): cell (instrument, day) goes to row
    ``position[instrument, day]`` where that is >= 0, skipping the dense table (see
    :func:`~distgru.features.compute.feature_frame`)."""

    def __init__(self, out: np.ndarray, position: np.ndarray) -> None:
        super().__init__(out.shape[1] - 1)
        self.out, self.position = out, position

    def start(self, block: InstrumentBlock) -> None:
        super().start(block)
        days, inside = block.cells(self.position.shape[1])
        dest = np.where(inside, self.position[block.rows[:, None], days], -1).ravel()
        src = np.flatnonzero(dest >= 0)
        self.local.targets = src, dest[src]

    def stage_column(self, block: InstrumentBlock, k: int, value: np.ndarray) -> None:
        src, _ = self.local.targets
        self.stage((STAGE, len(src)))[k] = np.ravel(value)[src]

    def write(self, block: InstrumentBlock, cols: list[int]) -> None:
        src, dest = self.local.targets
        stage = self.stage((STAGE, len(src)))[:len(cols)]
        where = _columns(cols)
        if isinstance(where, slice):
            self.out[dest, where] = stage.T
        else:
            self.out[np.ix_(dest, where)] = stage.T

    def write_label(self, block: InstrumentBlock, value: np.ndarray) -> None:
        src, dest = self.local.targets
        self.out[dest, -1] = np.ravel(value)[src]


def evaluate_block(fields: dict[str, np.ndarray], block: InstrumentBlock, roots: Sequence[tuple[int, Node]],
                   sink: Sink, after_root: Callable[[int], None] | None = None) -> None:
    """Every root ``(index, node)`` on one block, in order, into ``sink``; ``after_root(index)`` after each."""
    sub = {name: block.gather(series) for name, series in fields.items()}
    shape = (len(block.rows), block.width)
    evaluator = Evaluator(sub, [node for _, node in roots], np.zeros(len(block.rows), dtype=np.int64))
    sink.start(block)
    for index, node in roots:
        sink.put(block, index, np.broadcast_to(evaluator.value(node), shape))
        if after_root is not None:
            after_root(index)
    sink.flush(block)
