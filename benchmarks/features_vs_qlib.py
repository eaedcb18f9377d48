"""distgru's feature engine against qlib's expression engine: all 158 Alpha158 features + LABEL0, CSI300.

    . .venv/bin/activate
    python benchmarks/features_vs_qlib.py --runs 3 --out /work/bench_out/features_vs_qlib

Alternates qlib and distgru ``--runs`` times each, every run a fresh child process timed end to end:

- qlib: ``$QLIB_VENV/bin/python benchmarks/qlib_features.py`` (``D.features(D.instruments("csi300"), ...)``,
  expression and dataset caches off, ``--kernels`` worker processes; the timed span is inside the child, from
  ``D.instruments`` to the frame, so qlib's import and init are not counted against it);
- distgru: this file with ``--distgru-child`` in the project venv: ``load_qlib_provider`` → ``feature_frame``
  (158 + label, the market's member rows, (instrument, datetime) order as ``D.features`` returns them) → float32
  frame, timed from before the load; the import (and numba's cached machine code loading on first call) is in.

Peak RSS: each child's own ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (qlib's also reports its largest joblib
worker, ``RUSAGE_CHILDREN``). The last frames of both
are compared cell by cell (criterion A (2)). Writes ``<out>.json`` and ``<out>.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QLIB_PY = str(Path(os.environ.get("QLIB_VENV", ROOT.parent / "qlib-venv")) / "bin" / "python")


def _child(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    from distgru.data.panel import REQUIRED_FIELDS
    from distgru.data.qlib_provider import load_qlib_provider
    from distgru.features.compute import feature_frame, referenced_fields
    t1 = time.perf_counter()
    # Only the fields the expressions read, as qlib's provider loads them (here: no factor/change files).
    extra = tuple(sorted(referenced_fields("alpha158") - set(REQUIRED_FIELDS)))
    panel = load_qlib_provider(args.provider, market="csi300", benchmark=None, fields=extra, missing_fields_ok=True)
    t2 = time.perf_counter()
    # D.features' own frame: (instrument, datetime) rows of the members, float32 columns.
    frame = feature_frame(panel, "alpha158", start=args.start, end=args.end, order="instrument")
    t3 = time.perf_counter()
    if args.frame_out:  # untimed, as qlib's side: the (datetime, instrument) order of the reference frame
        frame.swaplevel().sort_index().to_parquet(args.frame_out)
    ru = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "features_s": t3 - t2, "timed_s": t3 - t1,
                      "shape": list(frame.shape), "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
                      "peak_rss_mib": ru.ru_maxrss / 1024.0}))
    return 0


def _peak_children_mib() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def _run(cmd: list[str], env: dict | None = None) -> tuple[float, str, float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        raise RuntimeError(f"{cmd} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, p.stdout, cpu, after.ru_maxrss / 1024.0


def compare(ours_path: str, qlib_path: str) -> list[tuple[str, float, float]]:
    import numpy as np
    import pandas as pd
    q = pd.read_parquet(qlib_path)
    o = pd.read_parquet(ours_path)
    idx = q.index.union(o.index)
    q, o = q.reindex(idx), o.reindex(idx)
    rows = []
    for col in q.columns:
        a, b = o[col].to_numpy(np.float64), q[col].to_numpy(np.float64)
        na, nb = np.isnan(a), np.isnan(b)
        with np.errstate(invalid="ignore"):
            near = np.abs(a - b) <= 1e-3 * np.maximum(np.abs(b), 1e-3)
        rows.append((col, float(np.where(na & nb, True, near).mean()), float((na == nb).mean())))
    rows.sort(key=lambda r: (min(r[1], r[2]), r[0]))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--provider", default=str(ROOT.parent / "shared" / "data" / "cn_csi300"))
    p.add_argument("--start", default="2010-01-04")
    p.add_argument("--end", default="2026-05-08")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--kernels", default="2")
    p.add_argument("--skip-qlib", action="store_true", help="time distgru only; compare with --qlib-frame")
    p.add_argument("--qlib-frame", default=str(ROOT.parent / "bench_out" / "qlib_alpha158_all.parquet"),
                   help="qlib's frame to compare with (written by the qlib runs unless --skip-qlib)")
    p.add_argument("--out", default=str(ROOT.parent / "bench_out" / "features_vs_qlib"))
    p.add_argument("--distgru-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--frame-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.distgru_child:
        return _child(args)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ours_frame = str(out) + "_distgru.parquet"
    results: dict[str, list] = {"qlib": [], "distgru": []}
    for i in range(args.runs):
        if not args.skip_qlib:
            wall, stdout, cpu, rss = _run([QLIB_PY, "benchmarks/qlib_features.py", "--runs", "1", "--kernels",
                                           args.kernels, "--start", args.start, "--end", args.end,
                                           "--provider-uri", args.provider, "--out", args.qlib_frame]
                                          + ([] if i == args.runs - 1 else ["--no-write"]))
            summary = json.loads(stdout[stdout.index("{"):])
            results["qlib"].append({"timed_s": summary["wall_s"][0], "process_wall_s": wall, "cpu_s": cpu,
                                    "peak_rss_mib_self": summary["peak_rss_self_mib"],
                                    "peak_rss_mib_largest_worker": summary["peak_rss_largest_child_mib"]})
            print(f"qlib    run {i + 1}: {summary['wall_s'][0]:.1f} s timed, {wall:.1f} s process", flush=True)
        wall, stdout, cpu, rss = _run([sys.executable, __file__, "--distgru-child", "--provider", args.provider,
                                       "--start", args.start, "--end", args.end]
                                      + (["--frame-out", ours_frame] if i == args.runs - 1 else []))
        child = json.loads(stdout.strip().splitlines()[-1])
        child.update(process_wall_s=wall, cpu_s=cpu)
        results["distgru"].append(child)
        print(f"distgru run {i + 1}: {child['timed_s']:.2f} s timed (load {child['load_s']:.2f}, features "
              f"{child['features_s']:.2f}), {wall:.1f} s process, cpu {cpu:.1f} s", flush=True)

    import numpy as np
    import pandas as pd
    import torch
    med = {k: statistics.median(r["timed_s"] for r in v) for k, v in results.items() if v}
    med_proc = {k: statistics.median(r["process_wall_s"] for r in v) for k, v in results.items() if v}
    cpu_model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), platform.processor())
    agreement = compare(ours_frame, args.qlib_frame)
    summary = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu": cpu_model,
                    "loadavg_at_end": os.getloadavg()},
        "versions": {"python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__,
                     "torch": torch.__version__},
        "what": "Alpha158 (158) + LABEL0, csi300 masked, provider dir -> float32 frame; qlib caches off, "
                f"{args.kernels} kernels",
        "runs": results, "median_timed_s": med, "median_process_wall_s": med_proc,
        "ratio_qlib_over_distgru": (med["qlib"] / med["distgru"]) if "qlib" in med else None,
        "ratio_process_wall": (med_proc["qlib"] / med_proc["distgru"]) if "qlib" in med_proc else None,
        "peak_rss_mib": {k: max(r.get("peak_rss_mib", r.get("peak_rss_mib_self", 0)) for r in v)
                         for k, v in results.items() if v},
        "agreement_worst": agreement[:10],
        "agreement_min": min(min(a, n) for _, a, n in agreement),
    }
    Path(str(out) + ".json").write_text(json.dumps(summary, indent=1))
    lines = ["| engine | runs (timed s) | median s | median process s | peak RSS MiB |", "|---|---|---|---|---|"]
    for k, v in results.items():
        if v:
            lines.append(f"| {k} | {', '.join(format(r['timed_s'], '.1f') for r in v)} | {med[k]:.1f} | "
                         f"{med_proc[k]:.1f} | {summary['peak_rss_mib'][k]:.0f} |")
    if summary["ratio_qlib_over_distgru"]:
        lines.append(f"\nqlib / distgru: **{summary['ratio_qlib_over_distgru']:.1f}×** (timed spans), "
                     f"{summary['ratio_process_wall']:.1f}× (whole processes incl. imports)")
    lines.append(f"\n{summary['date']}, {cpu_model}, nproc {os.cpu_count()}, load {os.getloadavg()[0]:.1f}; "
                 + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()))
    lines.append("\nWorst per-feature agreement with qlib (tolerance, NaN pattern):\n")
    lines.append("| feature | agree | NaN pattern |\n|---|---|---|")
    lines += [f"| {c} | {a:.5f} | {n:.5f} |" for c, a, n in agreement[:8]]
    table = "\n".join(lines)
    Path(str(out) + ".md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
