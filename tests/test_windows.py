"""Windows and sample lists against qlib's TSDataSampler rule (§4.2), written out literally per sample; the one-gather
cut against the two-index gather it replaced; streamed windows against resident ones."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from distgru.processing.panel import ProcessedPanel
from distgru.training.streamed import prefetch
from distgru.training.windows import WindowIndex, WindowSource, available, cut, sample_index


def reference_window(avail: np.ndarray, inst: int, day: int, step_len: int) -> list[int]:
    """TSDataSampler ffill+bfill, literally: slice the index column, pad with NaN, ffill, then bfill."""
    column = [d if avail[inst, d] else None for d in range(avail.shape[1])]
    window = [None] * max(step_len - day - 1, 0) + column[max(day - step_len + 1, 0): day + 1]
    for k in range(1, step_len):  # forward fill
        if window[k] is None:
            window[k] = window[k - 1]
    for k in range(step_len - 2, -1, -1):  # backward fill
        if window[k] is None:
            window[k] = window[k + 1]
    return window


def make_panel(membership: np.ndarray, label_learn: np.ndarray, segments: dict[str, tuple[int, int]]
               ) -> ProcessedPanel:
    n, d = membership.shape
    features = np.arange(n * d, dtype=np.float32).reshape(n, d, 1)  # feature value = flat row id
    return ProcessedPanel(calendar=pd.bdate_range("2020-01-01", periods=d), instruments=tuple("ABCDEFGH"[:n]),
                          feature_names=("f",), features=features, label_raw=label_learn.copy(),
                          label_learn=label_learn, membership=membership, segments=segments)


def qlib_example() -> ProcessedPanel:
    # §4.2: 3 stocks × 6 days, step_len 3, segment days 3..6; B misses day 3, C starts on day 4.
    membership = np.ones((3, 6), dtype=bool)
    membership[1, 2] = False
    membership[2, :3] = False
    return make_panel(membership, np.zeros((3, 6), dtype=np.float32), {"test": (2, 6)})


def test_qlib_hand_example() -> None:
    panel = qlib_example()
    inst, day = sample_index(panel, "test", "infer")
    # Instrument-major: A(d3..d6), B(d4..d6), C(d4..d6); day indices are 0-based (day k → k-1).
    assert inst.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert day.tolist() == [2, 3, 4, 5, 3, 4, 5, 3, 4, 5]
    windows = WindowIndex.build(available(panel, "infer"), 3)
    got = windows.gather(torch.from_numpy(panel.features), torch.tensor([1, 1, 2]), torch.tensor([3, 4, 3]))
    b, c = 6, 12  # row ids: B's day k is b + k - 1
    assert got[..., 0].tolist() == [[b + 1, b + 1, b + 3],  # B@day4 = [b2, b2, b4]
                                    [b + 3, b + 3, b + 4],  # B@day5 = [b4, b4, b5]
                                    [c + 3, c + 3, c + 3]]  # C@day4 = [c4, c4, c4]


def test_segment_extension_reaches_before_start() -> None:
    panel = qlib_example()
    windows = WindowIndex.build(available(panel, "infer"), 3)
    # A@day3 is the segment's first sample: its window is days 1..3, before the segment start.
    assert windows.source_days(torch.tensor([0]), torch.tensor([2])).tolist() == [[0, 1, 2]]


def test_learn_key_drops_rows_and_they_become_gaps() -> None:
    membership = np.ones((2, 8), dtype=bool)
    label = np.zeros((2, 8), dtype=np.float32)
    label[0, [3, 5]] = np.nan  # DropnaLabel removed these rows of A in DK_L
    panel = make_panel(membership, label, {"train": (2, 8)})
    inst, day = sample_index(panel, "train", "learn")
    assert (inst == 0).sum() == 4 and 3 not in day[inst == 0] and 5 not in day[inst == 0]
    learn = WindowIndex.build(available(panel, "learn"), 4)
    infer = WindowIndex.build(available(panel, "infer"), 4)
    assert learn.source_days(torch.tensor([0]), torch.tensor([6])).tolist() == [[4, 4, 4, 6]]
    assert learn.source_days(torch.tensor([0]), torch.tensor([4])).tolist() == [[1, 2, 2, 4]]
    assert infer.source_days(torch.tensor([0]), torch.tensor([6])).tolist() == [[3, 4, 5, 6]]


def test_sample_order_instrument_major() -> None:
    rng = np.random.default_rng(0)
    membership = rng.random((5, 30)) < 0.7
    panel = make_panel(membership, np.zeros((5, 30), dtype=np.float32), {"valid": (10, 25)})
    inst, day = sample_index(panel, "valid", "infer")
    expected = [(i, d) for i in range(5) for d in range(10, 25) if membership[i, d]]
    assert list(zip(inst.tolist(), day.tolist(), strict=True)) == expected


@settings(max_examples=60, deadline=None)
@given(avail=arrays(bool, st.tuples(st.integers(1, 4), st.integers(1, 25)), elements=st.booleans()),
       step_len=st.integers(1, 8))
def test_windows_match_literal_rule(avail: np.ndarray, step_len: int) -> None:
    inst, day = np.nonzero(avail)
    if inst.size == 0:
        return
    windows = WindowIndex.build(avail, step_len)
    got = windows.source_days(torch.from_numpy(inst), torch.from_numpy(day)).tolist()
    expected = [reference_window(avail, i, d, step_len) for i, d in zip(inst.tolist(), day.tolist(), strict=True)]
    assert got == expected


@settings(max_examples=60, deadline=None)
@given(avail=arrays(bool, st.tuples(st.integers(1, 4), st.integers(1, 25)), elements=st.booleans()),
       step_len=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_one_gather_cuts_the_same_bits_as_the_two_index_gather(avail: np.ndarray, step_len: int, seed: int) -> None:
    inst, day = (torch.from_numpy(a) for a in np.nonzero(avail))
    if inst.numel() == 0:
        return
    features = torch.from_numpy(np.random.default_rng(seed).standard_normal((*avail.shape, 3)).astype(np.float32))
    index = WindowIndex.build(avail, step_len)
    rows = index.rows(inst, day)
    assert rows.dtype == torch.int32
    two_index = features[inst[:, None], index.source_days(inst, day)]  # the gather before rows existed
    assert torch.equal(cut(features.reshape(-1, 3), rows), two_index)
    assert torch.equal(cut(features.reshape(-1, 3), rows[None])[0], two_index)  # any leading shape


def test_streamed_windows_are_the_resident_ones_in_order() -> None:
    rng = np.random.default_rng(0)
    features = rng.standard_normal((5, 40, 3)).astype(np.float32)
    avail = rng.random((5, 40)) < 0.8
    inst, day = (torch.from_numpy(a) for a in np.nonzero(avail))
    got = {}
    for mode in ("always", "never"):
        source = WindowSource.place(features, avail, 6, "cpu", mode)
        assert source.streamed == (mode == "never") and source.features.shape == (200, 3)
        got[mode] = list(source.windows(source.rows(inst, day).split(7)))
    assert len(got["never"]) == len(got["always"]) == -(-len(inst) // 7)
    for streamed, resident in zip(got["never"], got["always"], strict=True):
        assert torch.equal(streamed, resident)


def test_prefetch_raises_where_the_thread_failed_and_stops_when_left() -> None:
    def produce(i: int) -> torch.Tensor:
        if i == 3:
            raise KeyError("item 3")
        return torch.tensor([i])

    seen = []
    with pytest.raises(KeyError, match="item 3"):
        for x in prefetch(produce, range(10), torch.device("cpu")):
            seen.append(int(x))
    assert seen == [0, 1, 2]
    produced = []
    items = prefetch(lambda i: produced.append(i) or torch.tensor([i]), range(1000), torch.device("cpu"))
    assert int(next(items)) == 0
    items.close()  # the thread stops instead of producing the other 999 items
    assert len(produced) < 10
    assert not any(t.name == "distgru-prefetch" for t in threading.enumerate())
