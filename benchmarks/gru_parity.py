"""distgru's side of the GRU parity benchmark, and the table that sets it beside qlib's own runs.

Runs ``distgru train`` (the real command: Ray Train, the same config as qlib's workflow YAML) once per seed on a
protocol of the shared CSI300 data, and writes one JSON per seed, so an interrupted sweep resumes where it
stopped (a seed cut short continues with ``distgru train --resume``). ``--table`` prints mean ± std of both
sides (qlib's JSONs come from benchmarks/qlib_gru.py).

    python benchmarks/gru_parity.py --protocol csi300-short --seeds 0 1 2 --out /work/bench_out/distgru_gru
    python benchmarks/gru_parity.py --protocol csi300-short --model lstm --seeds 0 --out /work/bench_out/distgru_gru
    python benchmarks/gru_parity.py --table --out /work/bench_out/distgru_gru --qlib /work/bench_out/qlib_gru
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PROVIDER = REPO.parent / "shared" / "data" / "cn_csi300"
CONFIGS = {"gru": "gru_alpha158.yaml", "lstm": "lstm_alpha158.yaml", "alstm": "alstm_alpha158.yaml",
           "gru360": "gru_alpha360.yaml"}
# The same dates as benchmarks/qlib_gru.py's protocols (fit window = train segment).
PROTOCOLS = {
    "csi300-short": {"train": ("2014-01-01", "2016-12-31"), "valid": ("2017-01-01", "2017-12-31"),
                     "test": ("2018-01-01", "2019-12-31"), "n_epochs": 30},
    "csi300-2010": {"train": ("2010-01-04", "2016-12-31"), "valid": ("2017-01-01", "2018-12-31"),
                    "test": ("2019-01-01", "2026-05-08"), "n_epochs": 200},
}
METRICS = ("IC", "ICIR", "RankIC", "RankICIR")
BACKTEST = ("annualized_return", "information_ratio", "max_drawdown")
"""Excess return over the benchmark with cost (topk-dropout, qlib's costs), annualised."""


def overrides(protocol: str, seed: int, metric: str, provider: Path) -> list[str]:
    p = PROTOCOLS[protocol]
    return [f"data.provider={provider}", f"dataset.train=[{p['train'][0]}, {p['train'][1]}]",
            f"dataset.valid=[{p['valid'][0]}, {p['valid'][1]}]", f"dataset.test=[{p['test'][0]}, {p['test'][1]}]",
            f"processors.fit_start={p['train'][0]}", f"processors.fit_end={p['train'][1]}",
            f"train.n_epochs={p['n_epochs']}", f"train.seed={seed}", f"train.metric={metric}"]


def run_seed(args: argparse.Namespace, seed: int) -> None:
    tag = f"{args.protocol}_{args.model}_{args.metric}_seed{seed}"
    out = Path(args.out)
    if (out / f"{tag}.json").exists():
        print(f"{tag}: exists, skipped")
        return
    run_dir = train_or_resume(REPO / "configs" / CONFIGS[args.model], out / "runs", tag,
                              overrides(args.protocol, seed, args.metric, Path(args.provider)),
                              ["--num-workers", str(args.num_workers)])
    record = {"protocol": args.protocol, "model": args.model, "metric": args.metric, "seed": seed,
              **run_record(run_dir)}
    (out / f"{tag}.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


def train_or_resume(config: Path, runs: Path, tag: str, settings: list[str], flags: Sequence[str] = ()) -> Path:
    """``distgru train config`` into ``runs`` as run ``tag`` (``--set settings``), or, where a run of ``tag`` was
    cut short (a stopped session), ``distgru train --resume`` of it from its last checkpoint; returns its run
    directory."""
    unfinished = [d for d in runs.glob(f"{tag}-*") if not (d / "result.json").exists()]
    if unfinished:
        cmd = [sys.executable, "-m", "distgru", "train", "--resume", str(max(unfinished, key=lambda d: d.name))]
    else:
        cmd = [sys.executable, "-m", "distgru", "train", str(config), "--output", str(runs), *flags, "--set",
               *settings, f"name={tag}"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)
    return max(runs.glob(f"{tag}-*"), key=lambda d: d.name)  # names end in the start time


def run_record(run_dir: Path) -> dict:
    """What the tables need from one finished ``distgru train`` run: test metrics, the valid IC of the weights
    scored, the backtest, epochs and timing."""
    result = json.loads((run_dir / "result.json").read_text())
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    backtest = result.get("evaluation", {}).get("metrics", {})
    return {"run_dir": str(run_dir), "best_epoch": result["best_epoch"], "epochs": result["epochs"],
            "valid_ic": result["valid"]["IC"],  # at the best epoch: the weights that score the test segment
            "s_per_epoch": float(np.median([e["epoch_s"] for e in epochs])),
            "train_samples_per_s": result["train_samples_per_s"], "wall_s": result["wall_s"],
            **{k: result["test"][k] for k in METRICS}, **{k: backtest.get(k) for k in BACKTEST}}


def mean_std(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}" if len(v) > 1 else f"{v[0]:.4f}"


def table(args: argparse.Namespace) -> None:
    groups: dict[str, list[dict]] = {}
    for path in sorted(Path(args.out).glob("*.json")):
        r = json.loads(path.read_text())
        groups.setdefault(f"distgru {r['model']} (metric {r['metric']}, {r['protocol']})", []).append(r)
    for path in sorted(Path(args.qlib).glob("*_seed*.json")) if args.qlib else []:
        r = json.loads(path.read_text())
        groups.setdefault(f"qlib gru ({r['protocol']})", []).append(r)
    print("| run | seeds | " + " | ".join(METRICS) + " | epochs | s/epoch |")
    print("|---|---|" + "---|" * (len(METRICS) + 2))
    for name, rows in groups.items():
        epochs = np.mean([r["epochs"] for r in rows])
        per_epoch = np.median([r.get("s_per_epoch", np.nan) for r in rows])
        print(f"| {name} | {len(rows)} | " + " | ".join(mean_std([r[k] for r in rows]) for k in METRICS)
              + f" | {epochs:.1f} | {per_epoch:.1f} |")
    # The parity criterion: the GRU with qlib's settings (metric loss) on each side, means over seeds.
    for protocol in PROTOCOLS:
        ours = groups.get(f"distgru gru (metric loss, {protocol})")
        theirs = groups.get(f"qlib gru ({protocol})")
        if ours and theirs:
            deltas = {k: np.mean([r[k] for r in ours]) - np.mean([r[k] for r in theirs]) for k in ("IC", "RankIC")}
            verdict = "met" if all(abs(v) <= 0.005 for v in deltas.values()) else "NOT met"
            print(f"\n{protocol}: distgru − qlib mean IC {deltas['IC']:+.4f}, mean RankIC {deltas['RankIC']:+.4f} "
                  f"({len(ours)} vs {len(theirs)} seeds; criterion |Δ| ≤ 0.005: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="csi300-short")
    parser.add_argument("--model", choices=sorted(CONFIGS), default="gru")
    parser.add_argument("--metric", choices=("loss", "ic", "rank_ic"), default="loss")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--provider", default=str(PROVIDER))
    parser.add_argument("--out", required=True)
    parser.add_argument("--qlib", help="directory of benchmarks/qlib_gru.py JSONs (with --table)")
    parser.add_argument("--table", action="store_true", help="print the comparison table and exit")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.table:
        table(args)
        return
    for seed in args.seeds:
        run_seed(args, seed)


if __name__ == "__main__":
    main()
