"""Epoch lines on the driver's terminal, read from a run's metrics.jsonl as rank 0 appends to it."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any


class EpochPrinter:
    """Prints one line per epoch by following metrics.jsonl (worker stdout is noisy and prefixed)."""

    def __init__(self, path: Path, n_epochs: int, early_stop: int, enabled: bool = True) -> None:
        self.path, self.n_epochs, self.early_stop, self.enabled = path, n_epochs, early_stop, enabled
        self.offset = 0
        self.seconds: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="distgru-progress")

    def __enter__(self) -> EpochPrinter:
        if self.enabled:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.stop.set()
            self.thread.join()
            self._poll()

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            self._poll()

    def _poll(self) -> None:
        if not self.path.is_file():
            return
        with open(self.path) as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind("\n") + 1]  # a line being written waits for the next poll
        self.offset += len(complete.encode())
        for line in complete.splitlines():
            if line.strip():
                print(self.format(json.loads(line)), flush=True)

    def format(self, row: dict[str, Any]) -> str:
        """One epoch row (1-based ``epoch``, the loop's ``patience`` counter) as a terminal line."""
        epoch = int(row["epoch"])
        self.seconds.append(float(row.get("epoch_s") or 0.0))
        recent = self.seconds[1:] or self.seconds  # the first epoch carries warm-up
        per_epoch = sum(recent) / len(recent)
        retry = f" (attempt {int(row['attempt']) + 1})" if row.get("attempt") else ""
        if row.get("stopped_early"):
            horizon = f"stopped early: {int(row['patience'])} epochs without gain"
        else:
            horizon = (f"ETA ≤ {_duration((self.n_epochs - epoch) * per_epoch)} (early stop in "
                       f"{max(self.early_stop - int(row['patience']), 0)} without gain)")
        return (f"{epoch_summary(row, self.n_epochs)}  {row['samples_per_s']:,.0f} samples/s  "
                f"{row['epoch_s']:.1f}s/epoch  {horizon}" + retry)


def epoch_summary(row: dict[str, Any], n_epochs: int) -> str:
    """The head of every epoch line, a run's or a Tune trial's: epoch, train loss, valid IC and score, best."""
    return (f"epoch {int(row['epoch']):>3}/{n_epochs}  train_loss {row['train_loss']:.4f}  "
            f"valid_ic {row['valid_ic']:+.4f}  score {row['valid_score']:+.5f}  best {int(row['best_epoch'])}")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
