"""Model choice on csi300-2010 without looking at the test segment, then the chosen config scored once.

Three steps, each resumable (a 3-hour session stops a step; running the same command again continues it):

    python benchmarks/model_search.py search gru_alpha360       # configs/search/gru_alpha360.yaml, --no-test
    python benchmarks/model_search.py chosen gru_alpha360 --seeds 0 1 2
    python benchmarks/model_search.py table --parity DIR --qlib DIR

``search FAMILY`` runs ``distgru tune configs/search/FAMILY.yaml --no-test`` into ``OUT/FAMILY/`` (an unfinished
experiment there continues with ``distgru tune --resume``) and copies its results.csv to
``benchmarks/results/csi300-2010/search_FAMILY.csv`` (with each trial's median s/epoch), the record that is
committed; a stopped search is recorded too, its unfinished trials marked. ``record FAMILY`` writes that record
from the latest experiment as it stands, without running anything. No trial's test IC is ever computed.
``chosen FAMILY`` trains that experiment's best_config.yaml (its best valid-IC trial) once per seed with
``distgru train`` — the only place the test segment is scored — and writes one JSON per seed beside the search.
``table`` prints the csi300-2010 table for BENCHMARKS.md: qlib's GRU and LightGBM, distgru's parity GRU, each
family's best valid trial and the seeds of each round's choice (``ROUNDS``; the last is the chosen model).

OUT defaults to ``$DISTGRU_BENCH_OUT`` or ``runs/model_search`` under the repository; the data to
``../shared/data/cn_csi300``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from gru_parity import BACKTEST, PROVIDER, REPO, mean_std, run_record, train_or_resume  # this script's folder

from distgru.training.rundir import RunDir

SEARCHES = REPO / "configs" / "search"
RECORDS = REPO / "benchmarks" / "results" / "csi300-2010"
LGBM_REFERENCE = REPO.parent / "shared" / "reference" / "qlib_lgbm_csi300-2010.json"
QLIB_SEED0 = REPO.parent / "shared" / "reference" / "qlib_gru_csi300-2010_seed0.json"
# The choices, in the order they were declared (BENCHMARKS.md §10): round 1 in commit 5b41379, before
# gru_alpha158_all was searched; round 2 in 04b88f7, over every family's trials. The last one is the chosen model.
ROUNDS = ("gru_alpha360", "gru_alpha158_all")


def default_out() -> Path:
    return Path(os.environ.get("DISTGRU_BENCH_OUT", REPO / "runs" / "model_search"))


def experiments(family_dir: Path) -> list[Path]:
    return sorted(d for d in family_dir.glob("search_*-*") if (d / "config.yaml").is_file())


def finished(exp: Path) -> bool:
    return (RunDir(exp).read_status() or {}).get("state") == "finished"


def search(args: argparse.Namespace) -> None:
    config = SEARCHES / f"{args.family}.yaml"
    if not config.is_file():
        known = ", ".join(sorted(p.stem for p in SEARCHES.glob("*.yaml")))
        sys.exit(f"search: no {config}; families: {known}")
    family_dir = args.out / args.family
    done = [e for e in experiments(family_dir) if finished(e)]
    if done:
        print(f"{args.family}: finished in {done[-1]}")
        return record(args)
    started = experiments(family_dir)
    if started:  # a session stopped it: Tune keeps finished trials and resumes the rest from checkpoints
        cmd = [sys.executable, "-m", "distgru", "tune", "--resume", str(started[-1])]
    else:
        cmd = [sys.executable, "-m", "distgru", "tune", str(config), "--no-test", "--output", str(family_dir),
               "--set", f"data.provider={args.provider}"]
    print(" ".join(cmd), flush=True)
    code = subprocess.run(cmd, cwd=REPO).returncode
    if code not in (0, 130):  # 130: stopped; its trials so far are still recorded
        sys.exit(f"search {args.family}: distgru tune exited with {code}")
    record(args)
    if code:
        sys.exit(code)


def record(args: argparse.Namespace) -> None:
    """The committed record of the family's latest experiment, finished or stopped (its trials so far)."""
    started = experiments(args.out / args.family)
    if not started:
        sys.exit(f"record: no search for {args.family} in {args.out}; run the search step first")
    exp = started[-1]
    if not finished(exp):  # results.csv of the trials so far, from the state Tune saved
        subprocess.run([sys.executable, "-m", "distgru", "tune", "--table", str(exp)], check=True, cwd=REPO)
    trials = pd.read_csv(exp / "results.csv")
    if "test_ic" in trials:
        sys.exit(f"{exp}: the search scored the test segment; it cannot be used for the choice")
    RECORDS.mkdir(parents=True, exist_ok=True)
    trials["s_per_epoch"] = [epoch_seconds(Path(d)) for d in trials["trial_dir"]]
    # the record travels with the repository: where the trial ran on this machine means nothing there
    trials.drop(columns=["trial_dir"]).to_csv(RECORDS / f"search_{args.family}.csv", index=False)
    print(f"results: {RECORDS / f'search_{args.family}.csv'}")


def epoch_seconds(trial_dir: Path) -> float:
    """Median seconds of a Tune trial's epochs (its result.json holds one reported row per epoch)."""
    path = trial_dir / "result.json"  # absent for a trial a stopped search had not started
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return float(np.median([r["epoch_s"] for r in rows])) if rows else float("nan")


def chosen(args: argparse.Namespace) -> None:
    done = [e for e in experiments(args.out / args.family) if finished(e)]
    if not done:
        sys.exit(f"chosen: no finished search for {args.family} in {args.out}; run the search step first")
    best_config = done[-1] / "best_config.yaml"
    runs = args.out / args.family / "chosen"
    for seed in args.seeds:
        tag = f"chosen_{args.family}_seed{seed}"
        record_path = runs / f"{tag}.json"
        if record_path.exists():
            print(f"{tag}: exists, skipped")
            continue
        run_dir = train_or_resume(best_config, runs, tag,
                                  [f"data.provider={args.provider}", f"train.seed={seed}"])
        record = run_record(run_dir) | {"family": args.family, "seed": seed, "config": str(best_config)}
        record_path.write_text(json.dumps(record, indent=1))
        print(json.dumps(record, indent=1))


def table(args: argparse.Namespace) -> None:
    rows: list[dict] = []
    notes: list[str] = []

    def seeds_row(name: str, records: list[dict]) -> None:
        if not records:
            return
        timed = [r["s_per_epoch"] for r in records if r.get("s_per_epoch") is not None]
        row = {"run": name, "seeds": len(records), "IC": mean_std([r["IC"] for r in records]),
               "RankIC": mean_std([r["RankIC"] for r in records]),
               "valid IC": mean_std([r["valid_ic"] for r in records]) if "valid_ic" in records[0] else "—",
               # per seed; a best epoch the record lacks (qlib's seed-0 reference) is "?"
               "epochs (best, from 1)": ", ".join(str(r["epochs"]) for r in records) + " ("
                                + ", ".join(str(r.get("best_epoch", "?")) for r in records) + ")",
               "s/epoch (CPU)": f"{np.median(timed):.0f}" if timed else "—"}
        for key in BACKTEST:
            values = [r.get(key) for r in records]
            row[key] = mean_std(values) if None not in values else "—"
        rows.append(row)

    qlib = [json.loads(p.read_text()) for p in [QLIB_SEED0, *sorted(Path(args.qlib).glob("csi300-2010_seed*.json"))]
            if p.is_file()]
    # seed 0 is the shared reference, timed on an H200: only the CPU seeds' epochs are timed here. qlib counts
    # its best epoch from 0, distgru from 1.
    seeds_row("qlib GRU", [{**r, "s_per_epoch": r.get("s_per_epoch") if r.get("device") == "cpu" else None,
                            **({"best_epoch": r["best_epoch"] + 1} if "best_epoch" in r else {})} for r in qlib])
    parity = [json.loads(p.read_text()) for p in sorted(Path(args.parity).glob("csi300-2010_gru_loss_seed*.json"))]
    if qlib and parity:
        delta = {k: np.mean([r[k] for r in parity]) - np.mean([r[k] for r in qlib]) for k in ("IC", "RankIC")}
        verdict = "met" if all(abs(v) <= 0.005 for v in delta.values()) else "NOT met"
        notes.append(f"parity: distgru − qlib mean test IC {delta['IC']:+.4f}, mean RankIC {delta['RankIC']:+.4f} "
                     f"({len(parity)} vs {len(qlib)} seeds; criterion |Δ| ≤ 0.005: {verdict})")
    if LGBM_REFERENCE.is_file():
        lgbm = json.loads(LGBM_REFERENCE.read_text())
        rows.append({"run": "qlib LightGBM", "seeds": 1, "IC": f"{lgbm['IC']:.4f}", "RankIC": f"{lgbm['RankIC']:.4f}"})
    seeds_row("distgru GRU (parity)", [run_record(Path(r["run_dir"])) if Path(r["run_dir"]).is_dir() else r
                                       for r in parity])
    for csv in sorted(RECORDS.glob("search_*.csv")):
        trials = pd.read_csv(csv)
        best = trials.loc[trials["best_valid_ic"].idxmax()]
        unfinished = int((trials["status"] == "UNFINISHED").sum())
        count = f"{len(trials)} trials" + (f", {unfinished} unfinished" if unfinished else "")
        rows.append({"run": f"best valid trial: {csv.stem.removeprefix('search_')} ({count})",
                     "seeds": 1, "IC": "not scored", "RankIC": "not scored", "valid IC": f"{best['best_valid_ic']:.4f}",
                     "epochs (best, from 1)": f"{best['epochs']:.0f} ({best['best_epoch']:.0f})",
                     "s/epoch (CPU)": f"{best['s_per_epoch']:.0f}"})
        params = ", ".join(f"{k} {best[k]:.3g}" if isinstance(best[k], float) else f"{k} {best[k]}"
                           for k in trials.columns if "." in k)
        notes.append(f"{csv.stem.removeprefix('search_')}: best valid trial {best['trial_id']}: {params}")
    for n, family in enumerate(ROUNDS, start=1):
        runs = sorted((args.out / family / "chosen").glob("chosen_*_seed*.json"))
        records = [json.loads(p.read_text()) for p in runs]
        seeds_row(f"chosen: {family} (round {n})" if n == len(ROUNDS) else f"round {n} choice: {family}", records)
    frame = pd.DataFrame(rows).fillna("—").astype(str)
    print("| " + " | ".join(frame.columns) + " |")
    print("|" + "---|" * len(frame.columns))
    for values in frame.itertuples(index=False):
        print("| " + " | ".join(values) + " |")
    for note in notes:
        print(f"\n{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("search", "record", "chosen", "table"))
    parser.add_argument("family", nargs="?", help="a configs/search/ file's stem, e.g. gru_alpha360")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--provider", default=str(PROVIDER), help="qlib data directory (default ../shared/...)")
    parser.add_argument("--out", type=Path, default=default_out(), help="experiments and chosen runs")
    parser.add_argument("--parity", default=str(default_out().parent / "gru_parity"),
                        help="benchmarks/gru_parity.py --out of the csi300-2010 parity runs (table)")
    parser.add_argument("--qlib", default=str(default_out().parent / "qlib_gru"),
                        help="benchmarks/qlib_gru.py --out of qlib's seeds 1, 2 (table; seed 0 is the reference)")
    args = parser.parse_args()
    if args.step != "table" and not args.family:
        parser.error(f"{args.step}: name a family (a configs/search/ file's stem)")
    {"search": search, "record": record, "chosen": chosen, "table": table}[args.step](args)


if __name__ == "__main__":
    main()
