"""Block evaluation: instruments packed by the days they need, evaluated one cache-sized block at a time.

Every Alpha158/Alpha360 operator works along one instrument's own series, so nothing ties rows of the panel to
the same calendar day. Each instrument is evaluated on its own days only — from the first day of its series
(its first bar, or qlib's query start for the expression, whichever is later) to the last day an output needs —
left-aligned in a block of similar-length instruments. That skips the calendar before listings and after the
last wanted row (44 % of the CSI300 grid), and keeps an expression's temporaries (~2 MB) in cache, where the
element-wise numpy work runs several times faster than on whole-panel arrays.

Outputs go to a *sink*: :class:`TableSink` fills the dense ``[N, D, F]`` table that training windows read;
:class:`FrameSink` and :class:`ColumnSink` write only the requested rows, in (datetime, instrument) or
(instrument, datetime) order, into the array behind a pandas frame.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from distgru.features.expr import Evaluator, Node

try:
    from distgru.features import kernels as _kernels
except ImportError:  # pragma: no cover - numba not installed: numpy's fancy indexing does the same copies
    _kernels = None

# Elements per block (rows × days): float64 temporaries of ~2 MB stay in a core's cache.
BLOCK_ELEMENTS = 1 << 17
# Columns written to the output together: writing runs of adjacent columns, not one at a time, touches each
# output cache line once per run instead of once per column.
STAGE = 16


@dataclass(frozen=True)
class Block:
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


def pack(begin: np.ndarray, end: np.ndarray, elements: int = BLOCK_ELEMENTS) -> list[Block]:
    """Instruments with days ``begin..end`` (inclusive; none where end < begin), longest first, in blocks of about
    ``elements`` cells."""
    length = end - begin + 1
    ids = np.flatnonzero(length > 0)
    ids = ids[np.argsort(-length[ids], kind="stable")]
    blocks, i = [], 0
    while i < len(ids):
        width = int(length[ids[i]])
        rows = ids[i:i + max(1, elements // width)]
        blocks.append(Block(rows, begin[rows].astype(np.int64), length[rows].astype(np.int64), width))
        i += len(rows)
    return blocks


class Sink:
    """Where block results go: ``put`` one root's values, ``flush`` after the block's last root."""

    def start(self, block: Block) -> None:
        """Prepare for a block (called on the thread that evaluates it)."""

    def put(self, block: Block, root: int, value: np.ndarray) -> None:
        raise NotImplementedError

    def flush(self, block: Block) -> None:
        """Write what ``put`` staged."""


class _Staged(Sink):
    """Shared staging: STAGE columns of a block are collected, then written as one run of adjacent columns."""

    def __init__(self, columns: int) -> None:
        self.columns = columns
        self.local = threading.local()

    def _state(self) -> threading.local:
        if not hasattr(self.local, "pending"):
            self.local.pending = []
            self.local.stage = np.empty(0, dtype=np.float32)
        return self.local

    def buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        """A per-thread float32 staging buffer, reused across blocks (no page faults after the first)."""
        state = self._state()
        size = int(np.prod(shape))
        if state.stage.size < size:
            state.stage = np.empty(size, dtype=np.float32)
        return state.stage[:size].reshape(shape)

    def put(self, block: Block, root: int, value: np.ndarray) -> None:
        state = self._state()
        if root >= self.columns:
            self.write_extra(block, value)
            return
        k = len(state.pending)
        self.stage_column(block, k, value)
        state.pending.append(root)
        if k + 1 == STAGE:
            self.flush(block)

    def flush(self, block: Block) -> None:
        state = self._state()
        if state.pending:
            self.write(block, state.pending)
            state.pending = []

    def stage_column(self, block: Block, k: int, value: np.ndarray) -> None:
        raise NotImplementedError

    def write(self, block: Block, cols: list[int]) -> None:
        raise NotImplementedError

    def write_extra(self, block: Block, value: np.ndarray) -> None:
        raise NotImplementedError


def _columns(cols: list[int]) -> slice | list[int]:
    return slice(cols[0], cols[-1] + 1) if cols == list(range(cols[0], cols[-1] + 1)) else cols


class TableSink(_Staged):
    """Dense ``values`` [N, D, F] and ``labels`` [N, D] (root F is the label), NaN where nothing is written.

    Row k of a block is written from day ``max(begin, first)`` to its last day: days before ``first`` (the query
    start) are outside what the caller asked for.
    """

    def __init__(self, values: np.ndarray, labels: np.ndarray, first: int) -> None:
        super().__init__(values.shape[2])
        self.values, self.labels, self.first = values, labels, first

    def _spans(self, block: Block) -> Iterable[tuple[int, int, int, int]]:
        """(row k, panel row, first local day, past the last local day) of each row's written days."""
        for k in range(len(block.rows)):
            lo = max(0, self.first - int(block.begin[k]))
            if lo < block.length[k]:
                yield k, int(block.rows[k]), lo, int(block.length[k])

    def start(self, block: Block) -> None:
        self.buffer((STAGE, len(block.rows), block.width))

    def stage_column(self, block: Block, k: int, value: np.ndarray) -> None:
        stage = self.buffer((STAGE, len(block.rows), block.width))
        np.copyto(stage[k], value, casting="unsafe")

    def write(self, block: Block, cols: list[int]) -> None:
        stage = self.buffer((STAGE, len(block.rows), block.width))[:len(cols)]
        where = _columns(cols)
        for k, row, lo, hi in self._spans(block):
            day = int(block.begin[k])
            self.values[row][day + lo:day + hi, where] = stage[:, k, lo:hi].T

    def write_extra(self, block: Block, value: np.ndarray) -> None:
        for k, row, lo, hi in self._spans(block):
            day = int(block.begin[k])
            self.labels[row, day + lo:day + hi] = value[k, lo:hi]


def _targets(block: Block, position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flat cells of the block, their output rows) of the cells ``position`` [N, D] gives a row (>= 0)."""
    days, inside = block.cells(position.shape[1])
    dest = np.where(inside, position[block.rows[:, None], days], -1).ravel()
    src = np.flatnonzero(dest >= 0)
    return src, dest[src]


class _Targeted(Sink):
    """Sinks that write only the cells ``position`` [N, D] gives an output row (>= 0); the rows each block
    covers are worked out once, when the block starts."""

    def __init__(self, position: np.ndarray) -> None:
        self.position = position
        self.targets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.lock = threading.Lock()

    def start(self, block: Block) -> None:
        targets = _targets(block, self.position)
        with self.lock:
            self.targets[id(block)] = targets


class FrameSink(_Staged, _Targeted):
    """Row-major ``out`` [R, F + 1] (root F, the label, is the last column), for day-major frames, whose rows
    interleave instruments. Rows no block covers stay as ``out`` was initialised."""

    def __init__(self, out: np.ndarray, position: np.ndarray) -> None:
        _Staged.__init__(self, out.shape[1] - 1)
        _Targeted.__init__(self, position)
        self.out = out

    def stage_column(self, block: Block, k: int, value: np.ndarray) -> None:
        src, _ = self.targets[id(block)]
        stage = self.buffer((STAGE, len(src)))
        if _kernels is not None and value.flags.c_contiguous:
            _kernels.take_column(value, src, stage, k)
        else:
            stage[k] = np.ravel(value)[src]

    def write(self, block: Block, cols: list[int]) -> None:
        src, dest = self.targets[id(block)]
        stage = self.buffer((STAGE, len(src)))
        where = _columns(cols)
        if _kernels is not None and isinstance(where, slice):
            _kernels.put_rows(self.out, dest, cols[0], stage, len(cols))
        else:
            self.out[np.ix_(dest, where)] = stage[:len(cols)].T

    def write_extra(self, block: Block, value: np.ndarray) -> None:
        src, dest = self.targets[id(block)]
        self.out[dest, -1] = np.ravel(value)[src]


class ColumnSink(_Targeted):
    """Column-major ``out`` [F + 1, R] (row F: the label) for instrument-major frames, where an instrument's rows
    are adjacent: each root's values go straight to their rows, no staging, as runs of consecutive cells (a
    membership span is one run), so a column is copied rather than scattered."""

    def __init__(self, out: np.ndarray, position: np.ndarray) -> None:
        super().__init__(position)
        self.out = out
        self.runs: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def start(self, block: Block) -> None:
        super().start(block)
        src, dest = self.targets[id(block)]
        cut = np.flatnonzero((np.diff(src) != 1) | (np.diff(dest) != 1)) + 1
        first = np.concatenate([[0], cut]).astype(np.int64)
        length = np.diff(np.concatenate([first, [len(src)]])).astype(np.int64)
        with self.lock:
            self.runs[id(block)] = (src[first], dest[first], length)

    def put(self, block: Block, root: int, value: np.ndarray) -> None:
        if _kernels is not None and value.flags.c_contiguous:
            _kernels.copy_runs(value, *self.runs[id(block)], self.out[root])
        else:
            src, dest = self.targets[id(block)]
            self.out[root, dest] = np.ravel(value)[src]


def evaluate_block(fields: dict[str, np.ndarray], block: Block, roots: Sequence[tuple[int, Node]], sink: Sink,
                   after_root: Callable[[int], None] | None = None) -> None:
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
