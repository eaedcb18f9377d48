"""Windows and sample lists against qlib's TSDataSampler rule (§4.2), written out literally per sample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from distgru.processing.panel import ProcessedPanel
from distgru.training.windows import WindowIndex, available, sample_index


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
