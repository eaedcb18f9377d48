"""distgru's evaluation (signal metrics + TopK-Dropout backtest) against qlib's on ONE prediction file.

    . .venv/bin/activate
    nice python benchmarks/eval_vs_qlib.py --start 2019-01-01 --end 2020-12-31 --out /work/bench_out/eval_2019
    nice python benchmarks/eval_vs_qlib.py --out /work/bench_out/eval_full           # 2019-01-01..2026-05-07

The prediction is deterministic and cheap: the 5-day reversal factor ``score = −(close/Ref(close,5) − 1)`` for
every CSI300 member day in [start, end], computed with pandas/numpy on distgru's bar panel; the label is qlib's
``Ref($close,-2)/Ref($close,-1) − 1``. (``--pred FILE`` takes a distgru predictions.parquet instead.) Both are
written as qlib's pred.pkl / label.pkl.

- qlib: ``$QLIB_VENV/bin/python benchmarks/qlib_eval.py`` (``calc_ic`` + ``backtest_daily`` with
  TopkDropoutStrategy(50, 5), limit 0.095, deal at close, costs 5/15 bp + min 5, account 1e8, SH000300);
- distgru: ``signal_metrics`` / ``daily_table`` and ``run_backtest`` + ``portfolio_metrics``, in this process.

Criteria: IC/ICIR/RankIC/RankICIR within 1e-6; daily excess return with cost within 1e-4 on ≥ 99 % of days;
annualised return within 0.005, information ratio within 0.05, max drawdown within 0.005 (absolute).
Writes ``<out>/comparison.json`` and ``<out>/comparison.md`` and prints the markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
QLIB_PY = str(Path(os.environ.get("QLIB_VENV", ROOT.parent / "qlib-venv")) / "bin" / "python")
PROVIDER = str((ROOT / "../shared/data/cn_csi300").resolve())


def reversal_predictions(panel, start: str, end: str) -> pd.DataFrame:  # noqa: ANN001
    """5-day reversal score and qlib's raw label on CSI300 member days in [start, end]."""
    close = panel.field("close").astype(np.float64)
    score = np.full_like(close, np.nan)
    label = np.full_like(close, np.nan)
    score[:, 5:] = -(close[:, 5:] / close[:, :-5] - 1.0)
    label[:, :-2] = close[:, 2:] / close[:, 1:-1] - 1.0
    cal = panel.calendar
    days = (cal >= pd.Timestamp(start)) & (cal <= pd.Timestamp(end))
    inst, day = np.nonzero(panel.membership & days[None, :] & ~np.isnan(score))
    frame = pd.DataFrame({"datetime": cal[day], "instrument": np.asarray(panel.instruments, dtype=object)[inst],
                          "score": score[inst, day], "label": label[inst, day]})
    return frame.sort_values(["datetime", "instrument"], kind="stable").reset_index(drop=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--provider", default=PROVIDER)
    p.add_argument("--start", default="2019-01-01")
    p.add_argument("--end", default="2026-05-07", help="last day (qlib's backtest needs the calendar day after "
                   "its end: 2026-05-08, the last day of the data, cannot be one)")
    p.add_argument("--pred", help="a distgru predictions.parquet instead of the reversal factor")
    p.add_argument("--out", required=True)
    p.add_argument("--reuse-qlib", action="store_true", help="reuse <out>/qlib_* from an earlier run")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from distgru.config.schema import BacktestConfig
    from distgru.data.qlib_provider import load_qlib_provider
    from distgru.evaluation.backtest import excess_returns, portfolio_metrics, run_backtest
    from distgru.evaluation.evaluate import write_qlib_pickles
    from distgru.metrics import daily_table, summarise

    t0 = time.perf_counter()
    panel = load_qlib_provider(args.provider, market="csi300", benchmark="SH000300")
    load_s = time.perf_counter() - t0
    if args.pred:
        pred = pd.read_parquet(args.pred)
        pred = pred[(pred["datetime"] >= args.start) & (pred["datetime"] <= args.end)]
    else:
        pred = reversal_predictions(panel, args.start, args.end)
    pred.to_parquet(out / "predictions.parquet", index=False)
    pred_pkl, label_pkl = write_qlib_pickles(pred, out)

    if not args.reuse_qlib:
        cmd = [QLIB_PY, str(ROOT / "benchmarks/qlib_eval.py"), "--provider", args.provider, "--pred", str(pred_pkl),
               "--label", str(label_pkl), "--start", args.start, "--end", args.end, "--out", str(out)]
        print("running:", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        qlib_wall = time.perf_counter() - t0
    else:
        qlib_wall = float("nan")
    q = json.loads((out / "qlib_eval.json").read_text())
    q_ic = pd.read_parquet(out / "qlib_ic.parquet")
    q_report = pd.read_parquet(out / "qlib_report.parquet")

    # (a) signal metrics
    t0 = time.perf_counter()
    daily = daily_table(pred)
    ours = summarise(daily)
    ic_s = time.perf_counter() - t0
    q_ic.index = pd.DatetimeIndex(q_ic.index)
    joined = daily[["IC", "RankIC"]].join(q_ic.add_suffix("_qlib"), how="outer")
    daily_diff = {c: float((joined[c] - joined[f"{c}_qlib"]).abs().max()) for c in ("IC", "RankIC")}
    nan_mismatch = int((joined[["IC", "RankIC"]].isna().to_numpy()
                        != joined[["IC_qlib", "RankIC_qlib"]].isna().to_numpy()).sum())
    signal = {k: {"distgru": ours[k], "qlib": q[k], "abs_diff": abs(ours[k] - q[k])}
              for k in ("IC", "ICIR", "RankIC", "RankICIR")}

    # (b) backtest
    t0 = time.perf_counter()
    res = run_backtest(pred[["datetime", "instrument", "score"]], panel, BacktestConfig(), args.start, args.end)
    bt_s = time.perf_counter() - t0
    report = res.report
    report.to_parquet(out / "distgru_report.parquet")
    ours_pm = portfolio_metrics(report)
    q_report.index = pd.DatetimeIndex(q_report.index)
    mine = excess_returns(report)["excess_return_with_cost"]
    theirs = (q_report["return"] - q_report["bench"] - q_report["cost"]).reindex(mine.index)
    diff = (mine - theirs).abs()
    within = float((diff <= 1e-4).mean())
    days_missing = int(theirs.isna().sum()) + len(q_report.index.difference(mine.index))
    port = {}
    for key, tol in (("annualized_return", 0.005), ("information_ratio", 0.05), ("max_drawdown", 0.005)):
        a = ours_pm["excess_return_with_cost"][key]
        b = q["excess_return_with_cost"][key]
        port[key] = {"distgru": a, "qlib": b, "abs_diff": abs(a - b), "tol": tol, "ok": abs(a - b) <= tol}
    col_diff = {c: float((report[c] - q_report[c].reindex(report.index)).abs().max())
                for c in ("return", "bench", "cost", "turnover", "account")}
    summary = {
        "window": [args.start, args.end], "n_pred": len(pred), "n_days": int(len(report)),
        "signal": signal, "daily_ic_max_abs_diff": daily_diff, "daily_ic_nan_mismatch": nan_mismatch,
        "signal_ok": all(v["abs_diff"] <= 1e-6 for v in signal.values()) and max(daily_diff.values()) <= 1e-6,
        "excess_with_cost_days_within_1e-4": within, "days_missing_on_one_side": days_missing,
        "excess_with_cost_max_abs_diff": float(diff.max()), "report_column_max_abs_diff": col_diff,
        "portfolio": port, "backtest_ok": within >= 0.99 and all(v["ok"] for v in port.values()),
        "seconds": {"distgru_load": load_s, "distgru_signal": ic_s, "distgru_backtest": bt_s,
                    "qlib_calc_ic": q.get("calc_ic_s"), "qlib_backtest": q.get("backtest_s"),
                    "qlib_child_wall": qlib_wall},
    }
    worst = diff.sort_values(ascending=False).head(5)
    summary["worst_days"] = {str(k.date()): float(v) for k, v in worst.items()}
    (out / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")
    md = [f"Window {args.start}..{args.end}: {len(pred):,} predictions, {len(report)} backtest days.", "",
          "| metric | distgru | qlib | abs diff |", "|---|---:|---:|---:|"]
    md += [f"| {k} | {v['distgru']:.8f} | {v['qlib']:.8f} | {v['abs_diff']:.1e} |" for k, v in signal.items()]
    md += [f"| {k} (excess w/ cost) | {v['distgru']:.6f} | {v['qlib']:.6f} | {v['abs_diff']:.1e} |"
           for k, v in port.items()]
    md += ["", f"Daily IC / RankIC max abs diff: {daily_diff['IC']:.1e} / {daily_diff['RankIC']:.1e}; "
           f"daily excess return with cost within 1e-4 on {within:.2%} of days (max diff {diff.max():.1e}).",
           f"signal_ok={summary['signal_ok']} backtest_ok={summary['backtest_ok']}"]
    (out / "comparison.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(json.dumps(summary["seconds"]))
    return 0 if summary["signal_ok"] and summary["backtest_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
