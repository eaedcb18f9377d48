"""Fault injection: break real ``distgru`` runs as users and machines do, resume them, compare with a clean run.

Each fault hits a small deterministic synthetic run (``train.deterministic: true``) in a real subprocess at a
chosen epoch; the run is then resumed with the command distgru printed, and its final result.json metrics are
compared with an uninterrupted run of the same config. "epochs lost" counts epochs that had completed (in
metrics.jsonl) before the fault and are missing afterwards (must be 0).

    python benchmarks/fault_injection.py --out /tmp/faults          # ~10 min on 2 cores; prints a markdown table
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RUN = {
    "name": "fault", "data": {"synthetic": {"n_instruments": 30, "n_days": 200, "seed": 3}},
    "features": {"columns": ["RESI5", "WVMA5", "RSQR5", "KLEN", "RSQR10", "CORR5", "CORD5", "CORR10", "ROC60",
                             "RESI10", "VSTD5", "RSQR60", "CORR60", "WVMA60", "STD5", "RSQR20", "CORD60", "CORD10",
                             "CORR20", "KLOW"]},
    "dataset": {"train": ["2020-04-01", "2020-06-30"], "valid": ["2020-07-01", "2020-08-14"],
                "test": ["2020-08-17", "2020-09-30"]},
    "model": {"hidden_size": 16, "num_layers": 1},
    "train": {"n_epochs": 6, "batch_size": 256, "lr": 1e-3, "deterministic": True, "early_stop": 10},
    "backtest": {"topk": 10, "n_drop": 2},
}
METRICS = ("IC", "ICIR", "RankIC", "RankICIR")


def foreground_signals() -> None:
    # A shell starts background jobs with SIGINT ignored, and children inherit that: give the command the
    # default, as a terminal's foreground job has it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def distgru(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "distgru", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                            preexec_fn=foreground_signals)


def epochs(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    rows = path.read_text().splitlines() if path.is_file() else []
    return sorted({json.loads(line)["epoch"] for line in rows if line.strip().endswith("}")})


def wait_epochs(parent: Path, n: int, proc: subprocess.Popen, timeout: float = 600) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dirs = list(parent.glob("fault-*"))
        if dirs and len(epochs(dirs[0])) >= n:
            return dirs[0]
        if proc.poll() is not None:
            raise RuntimeError(f"run ended before epoch {n}: {proc.communicate()[1][-2000:]}")
        time.sleep(0.3)
    raise TimeoutError(f"no epoch {n} in {timeout} s")


def test_metrics(run_dir: Path) -> dict[str, float]:
    result = json.loads((run_dir / "result.json").read_text())
    return {f"{seg}.{k}": result[seg][k] for seg in ("valid", "test") for k in METRICS} | {
        "best_epoch": result["best_epoch"], "epochs": result["epochs"]}


def session_pids(proc: subprocess.Popen, pattern: str) -> list[int]:
    out = subprocess.run(["pgrep", "-s", str(os.getsid(proc.pid)), "-f", pattern], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def ctrl_c(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)


def sigkill_driver(proc: subprocess.Popen) -> None:
    proc.kill()


def sigterm_raylet(proc: subprocess.Popen) -> None:
    for pid in session_pids(proc, "raylet/raylet"):
        os.kill(pid, signal.SIGTERM)


FAULTS: dict[str, tuple[str, Callable[[subprocess.Popen], None]]] = {
    "Ctrl-C on the driver at epoch 3": ("ctrl_c", ctrl_c),
    "SIGKILL of the driver at epoch 3": ("sigkill", sigkill_driver),
    "raylet SIGTERM'd at epoch 3": ("raylet", sigterm_raylet),
}


def run_fault(name: str, tag: str, inject: Callable[[subprocess.Popen], None], cfg: Path, out: Path,
              clean: dict[str, float]) -> dict[str, object]:
    runs = out / tag
    proc = distgru("train", str(cfg), "--output", str(runs), cwd=out)
    run_dir = wait_epochs(runs, 3, proc)
    before = epochs(run_dir)
    inject(proc)
    proc.communicate(timeout=300)
    time.sleep(3)  # the watchdog's verdict on a killed driver
    status = json.loads((run_dir / "status.json").read_text())
    resumed = distgru("train", "--resume", str(run_dir), cwd=out)
    _, err = resumed.communicate(timeout=900)
    ok = resumed.returncode == 0
    got = test_metrics(run_dir) if ok else {}
    diff = max((abs(got[k] - v) for k, v in clean.items()), default=float("nan")) if ok else float("nan")
    return {"fault": name, "exit": proc.returncode, "status after": status["state"], "resumed": ok,
            "metrics equal": ok and got == clean, "max |Δ|": diff,
            "epochs lost": len(set(before) - set(epochs(run_dir))), "error": "" if ok else err[-300:]}


def run_worker_fault(cfg: Path, out: Path, clean: dict[str, float]) -> dict[str, object]:
    """A worker process dies (os._exit) at epoch 3; Ray Train restarts the group from the last checkpoint."""
    runs = out / "worker"
    proc = distgru("train", str(cfg), "--output", str(runs), "--set", "resources.max_failures=1", cwd=out,
                   env={"DISTGRU_FAIL_AT": "0:3"})
    _, err = proc.communicate(timeout=900)
    (run_dir,) = runs.glob("fault-*")
    ok = proc.returncode == 0
    got = test_metrics(run_dir) if ok else {}
    restarts = json.loads((run_dir / "result.json").read_text())["restarts"] if ok else None
    return {"fault": f"worker killed at epoch 3, max_failures 1 ({restarts} restart)", "exit": proc.returncode,
            "status after": json.loads((run_dir / "status.json").read_text())["state"], "resumed": ok,
            "metrics equal": ok and got == clean,
            "max |Δ|": max((abs(got[k] - v) for k, v in clean.items()), default=float("nan")) if ok else float("nan"),
            "epochs lost": len(set(range(1, int(clean["epochs"]) + 1)) - set(epochs(run_dir))),
            "error": "" if ok else err[-300:]}


def run_cache_fault(cfg: Path, out: Path, clean: dict[str, float]) -> dict[str, object]:
    """64 bytes flipped inside the cached processed panel (same size): the checksum must catch it."""
    (entry,) = sorted((out / "cache").rglob("panels/*.arrow"))
    data = bytearray(entry.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    entry.write_bytes(bytes(data))
    proc = distgru("train", str(cfg), "--output", str(out / "cache_fault"), cwd=out)
    _, err = proc.communicate(timeout=900)
    (run_dir,) = (out / "cache_fault").glob("fault-*")
    ok = proc.returncode == 0
    got = test_metrics(run_dir) if ok else {}
    return {"fault": f"64 bytes flipped in the cached panel ({'reported' if 'checksum' in err else 'NOT reported'})",
            "exit": proc.returncode, "status after": json.loads((run_dir / "status.json").read_text())["state"],
            "resumed": "n/a (recomputed)", "metrics equal": ok and got == clean,
            "max |Δ|": max((abs(got[k] - v) for k, v in clean.items()), default=float("nan")) if ok else float("nan"),
            "epochs lost": 0, "error": "" if ok else err[-300:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="scratch directory (runs, caches)")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cfg = out / "fault.yaml"
    cfg.write_text(yaml.safe_dump({**RUN, "data": {**RUN["data"], "cache_dir": str(out / "cache")}}))
    proc = distgru("train", str(cfg), "--output", str(out / "clean"), cwd=out)
    _, err = proc.communicate(timeout=900)
    if proc.returncode:
        sys.exit(f"the clean run failed: {err[-2000:]}")
    (clean_dir,) = (out / "clean").glob("fault-*")
    clean = test_metrics(clean_dir)
    rows = [run_fault(name, tag, inject, cfg, out, clean) for name, (tag, inject) in FAULTS.items()]
    rows.append(run_worker_fault(cfg, out, clean))
    rows.append(run_cache_fault(cfg, out, clean))
    cols = ["fault", "exit", "status after", "resumed", "metrics equal", "max |Δ|", "epochs lost"]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.1e}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    for r in rows:
        if r["error"]:
            print(f"{r['fault']}: {r['error']}")
    (out / "faults.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
