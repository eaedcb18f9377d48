"""How much memory the ``distgru train`` driver holds while its workers train: its heap (RssAnon) and the object
store's shared-memory pages it maps (RssShmem), sampled from /proc every 2 s (Linux).

    python benchmarks/driver_memory.py configs/gru_alpha360_chosen.yaml --set train.n_epochs=1

Arguments after the config go to ``distgru train`` unchanged; the data defaults to ``../shared/data/cn_csi300``.
The training phase runs from the "run directory:" line to the end of the first epoch.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROVIDER = REPO.parent / "shared" / "data" / "cn_csi300"


def memory_gb(pid: int) -> tuple[float, float]:
    """(heap, object store) GB resident for ``pid``: RssAnon (its own arrays) and RssShmem (the pages of Ray's
    shared-memory object store it has touched, one copy on the machine whoever maps them)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return tuple(int(fields[k].split()[0]) * 1024 / 1e9 for k in ("RssAnon", "RssShmem"))  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config")
    args, train_args = ap.parse_known_args()
    cmd = [sys.executable, "-m", "distgru", "train", args.config, *train_args,
           "--set", f"data.provider={PROVIDER}", f"output_dir={Path(tempfile.gettempdir()) / 'distgru-driver-memory'}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    phase = ["prepare"]
    samples: dict[str, list[tuple[float, float]]] = {"prepare": [], "train": [], "score": []}

    def sample() -> None:
        while proc.poll() is None:
            try:
                samples[phase[0]].append(memory_gb(proc.pid))
            except (OSError, KeyError):
                return
            time.sleep(2)

    threading.Thread(target=sample, daemon=True).start()
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("run directory:"):
            phase[0] = "train"
        elif line.startswith("epoch ") and phase[0] == "train":
            phase[0] = "score"
    proc.wait()
    print(f"{REPO} (exit {proc.returncode})")
    for name, rows in samples.items():
        if rows:
            heap, store = zip(*rows, strict=True)
            print(f"  {name:8s} heap GB median {statistics.median(heap):5.2f} max {max(heap):5.2f}   "
                  f"object store GB median {statistics.median(store):5.2f} max {max(store):5.2f}   "
                  f"({len(rows)} samples)")


if __name__ == "__main__":
    main()
