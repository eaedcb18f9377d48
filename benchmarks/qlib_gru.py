"""Train qlib's OWN GRU (qlib.contrib.model.pytorch_gru_ts.GRU) on the shared CSI300 data: the reference run
that distgru's GRU is compared with (accuracy and speed).

Runs ONLY inside the separate qlib venv (benchmarks/qlib_env.sh); distgru never imports qlib.

    . ${QLIB_VENV:-../qlib-venv}/bin/activate
    nice -n 15 python benchmarks/qlib_gru.py --protocol csi300-short --seed 0 --out /work/bench_out/qlib_gru --n-jobs 2

Setup = examples/benchmarks/GRU/workflow_config_gru_Alpha158.yaml with only the dates changed (see PROTOCOLS):
Alpha158 handler on csi300 (dynamic membership), label ["Ref($close, -2) / Ref($close, -1) - 1"],
infer processors FilterCol(20 features) -> RobustZScoreNorm(clip_outlier) -> Fillna, learn processors
DropnaLabel -> CSRankNorm(label), fit window = train segment; TSDatasetH step_len 20; GRU d_feat 20,
hidden 64, 2 layers, dropout 0, lr 2e-4, early_stop 10, batch 800, metric loss, loss mse, GPU 0 (CPU where
there is no CUDA), n_jobs = DataLoader workers (--n-jobs), seed = --seed (qlib: np + torch seeds).

Metrics as SigAnaRecord computes them: qlib's calc_ic(pred score, raw DK_R label of the test segment)
(SignalRecord.generate_label); IC = mean, ICIR = mean/std of the daily IC (not annualised); same for RankIC.

Resumable: one JSON per seed, ``<out>/<protocol>_seed<k>.json``; seeds whose JSON exists are skipped.
Next to it: ``_pred.parquet`` (datetime, instrument, score, label; qlib's instrument-major row order) and
``_epochs.jsonl`` (one line per epoch as it finishes: train/valid loss+score, seconds), so progress of a
long run can be followed with ``tail -f``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

PROTOCOLS = {
    # short protocol for quick comparisons on a small machine
    "csi300-short": {
        "handler": ("2014-01-01", "2019-12-31"),
        "fit": ("2014-01-01", "2016-12-31"),
        "train": ("2014-01-01", "2016-12-31"),
        "valid": ("2017-01-01", "2017-12-31"),
        "test": ("2018-01-01", "2019-12-31"),
        "n_epochs": 30,
    },
    # qlib's benchmark protocol moved to the years of the shared data (shared/data/README.md)
    "csi300-2010": {
        "handler": ("2010-01-04", "2026-05-08"),
        "fit": ("2010-01-04", "2016-12-31"),
        "train": ("2010-01-04", "2016-12-31"),
        "valid": ("2017-01-01", "2018-12-31"),
        "test": ("2019-01-01", "2026-05-08"),
        "n_epochs": 200,
    },
    # a few minutes end to end: checks the script, numbers mean nothing
    "smoke": {
        "handler": ("2016-06-01", "2016-12-31"),
        "fit": ("2016-06-01", "2016-09-30"),
        "train": ("2016-06-01", "2016-09-30"),
        "valid": ("2016-10-01", "2016-10-31"),
        "test": ("2016-11-01", "2016-12-31"),
        "n_epochs": 2,
    },
}

# FilterCol list of workflow_config_gru_Alpha158.yaml (FilterCol keeps Alpha158's native column order)
GRU_FEATURES = [
    "RESI5", "WVMA5", "RSQR5", "KLEN", "RSQR10", "CORR5", "CORD5", "CORR10", "ROC60", "RESI10",
    "VSTD5", "RSQR60", "CORR60", "WVMA60", "STD5", "RSQR20", "CORD60", "CORD10", "CORR20", "KLOW",
]  # fmt: skip
LABEL = ["Ref($close, -2) / Ref($close, -1) - 1"]


def build_dataset(proto: dict, market: str, handler_cache: str | None = None):
    import pickle

    from qlib.data.dataset import TSDatasetH
    from qlib.utils import init_instance_by_config

    fit_start, fit_end = proto["fit"]
    handler = {
        "class": "Alpha158",
        "module_path": "qlib.contrib.data.handler",
        "kwargs": {
            "start_time": proto["handler"][0],
            "end_time": proto["handler"][1],
            "fit_start_time": fit_start,
            "fit_end_time": fit_end,
            "instruments": market,
            "infer_processors": [
                {"class": "FilterCol", "kwargs": {"fields_group": "feature", "col_list": GRU_FEATURES}},
                {"class": "RobustZScoreNorm", "kwargs": {"fields_group": "feature", "clip_outlier": True}},
                {"class": "Fillna", "kwargs": {"fields_group": "feature"}},
            ],
            "learn_processors": [
                {"class": "DropnaLabel"},
                {"class": "CSRankNorm", "kwargs": {"fields_group": "label"}},
            ],
            "label": LABEL,
        },
    }
    cache = Path(handler_cache) if handler_cache else None
    if cache is not None and cache.exists():
        # the fitted + processed handler of an earlier run of the same protocol (qlib's own pickle)
        with open(cache, "rb") as f:
            h = pickle.load(f)
        print(f"handler loaded from {cache}", flush=True)
    else:
        h = init_instance_by_config(handler)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            h.to_pickle(cache, dump_all=True)  # keeps _data/_infer/_learn
    return TSDatasetH(
        handler=h,
        segments={k: proto[k] for k in ("train", "valid", "test")},
        step_len=20,
    )


def make_model(seed: int, n_epochs: int, n_jobs: int):
    from qlib.contrib.model.pytorch_gru_ts import GRU

    return GRU(
        d_feat=20,
        hidden_size=64,
        num_layers=2,
        dropout=0.0,
        n_epochs=n_epochs,
        lr=2e-4,
        early_stop=10,
        batch_size=800,
        metric="loss",
        loss="mse",
        n_jobs=n_jobs,
        GPU=0,
        seed=seed,
    )


def instrument_timing(model, dataset, epochs_path: Path, t_fit0: list[float]):
    """Wrap (without changing) the model's per-epoch methods and the dataset's prepare to time epochs and
    count samples. fit() calls self.train_epoch(train) then self.test_epoch(train), self.test_epoch(valid)."""
    st = {"epoch": 0, "n_test": 0, "t0": 0.0, "t_train": 0.0, "train": None, "records": [], "sizes": {}}
    orig_train, orig_test, orig_prepare = model.train_epoch, model.test_epoch, dataset.prepare

    def train_epoch(loader):
        st["t0"] = time.perf_counter()
        st["n_test"] = 0
        r = orig_train(loader)
        st["t_train"] = time.perf_counter() - st["t0"]
        return r

    def test_epoch(loader):
        r = orig_test(loader)
        st["n_test"] += 1
        if st["n_test"] == 1:
            st["train"] = r
        elif st["n_test"] == 2:
            now = time.perf_counter()
            rec = {
                "epoch": st["epoch"],
                "train_loss": float(st["train"][0]),
                "train_score": float(st["train"][1]),
                "valid_loss": float(r[0]),
                "valid_score": float(r[1]),
                "train_pass_s": st["t_train"],
                "epoch_s": now - st["t0"],
                "since_fit_start_s": now - t_fit0[0],
            }
            st["records"].append(rec)
            with open(epochs_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(
                f"epoch {rec['epoch']}: train {rec['train_score']:.6f} valid {rec['valid_score']:.6f} "
                f"({rec['epoch_s']:.1f} s, train pass {rec['train_pass_s']:.1f} s)",
                flush=True,
            )
            st["epoch"] += 1
        return r

    def prepare(segments, *a, **k):
        r = orig_prepare(segments, *a, **k)
        if isinstance(segments, str) and hasattr(r, "__len__"):
            st["sizes"][segments] = len(r)
        return r

    model.train_epoch, model.test_epoch, dataset.prepare = train_epoch, test_epoch, prepare
    st["restore"] = lambda: delattr(dataset, "prepare")  # back to the class's own method
    return st


def run_seed(args, proto: dict, dataset, data_s: float, seed: int, out: Path) -> dict:
    import numpy as np
    import pandas as pd
    import torch
    from qlib.contrib.eva.alpha import calc_ic
    from qlib.workflow.record_temp import SignalRecord

    stem = out / f"{args.protocol}_seed{seed}"
    epochs_path = stem.with_name(stem.name + "_epochs.jsonl")
    n_epochs = args.max_epochs if args.max_epochs is not None else proto["n_epochs"]

    model = make_model(seed, n_epochs, args.n_jobs)
    fit_ckpt = stem.with_name(stem.name + "_fit.pt")
    if fit_ckpt.exists():
        # training finished earlier but the run died after it: reuse the fitted weights, skip training
        ck = torch.load(fit_ckpt, weights_only=False)
        model.GRU_model.load_state_dict(ck["state_dict"])
        model.fitted = True
        evals, fit_s, sizes, records = ck["evals"], ck["fit_s"], ck["sizes"], ck["records"]
        print(f"seed {seed}: reusing fitted model from {fit_ckpt.name}", flush=True)
    else:
        epochs_path.unlink(missing_ok=True)  # a partial log of an interrupted run is restarted
        t_fit0 = [0.0]
        st = instrument_timing(model, dataset, epochs_path, t_fit0)
        evals = {}
        t_fit0[0] = time.perf_counter()
        model.fit(dataset, evals_result=evals)
        fit_s = time.perf_counter() - t_fit0[0]
        st["restore"]()
        sizes, records = st["sizes"], st["records"]
        torch.save(
            {"state_dict": model.GRU_model.state_dict(), "evals": evals, "fit_s": fit_s, "sizes": sizes,
             "records": records},
            fit_ckpt,
        )  # fmt: skip

    t0 = time.perf_counter()
    pred = model.predict(dataset)
    predict_s = time.perf_counter() - t0

    raw_label = SignalRecord.generate_label(dataset)  # DK_R label of the test segment (DataFrame)
    ic, ric = calc_ic(pred, raw_label.iloc[:, 0])

    epochs = len(evals["valid"])
    best_epoch = int(np.argmax(evals["valid"]))  # fit keeps the first strict improvement
    n_train = sizes.get("train")
    res = {
        "protocol": args.protocol,
        "segments": {k: proto[k] for k in ("handler", "fit", "train", "valid", "test")},
        "seed": seed,
        "epochs": epochs,
        "max_epochs": n_epochs,
        "best_epoch": best_epoch,
        "best_valid_score": float(evals["valid"][best_epoch]),
        "n_train": n_train,
        "n_valid": sizes.get("valid"),
        "n_test": int(len(pred)),
        "data_s": data_s,
        "fit_s": fit_s,
        "s_per_epoch": fit_s / epochs,
        "fit_s_per_epoch": fit_s / epochs,  # same value, the name used by shared/reference JSONs
        "epoch_s_median": float(np.median([r["epoch_s"] for r in records])),
        "train_samples_per_s": (n_train * epochs / fit_s) if n_train else None,
        "predict_s": predict_s,
        "IC": float(ic.mean()),
        "ICIR": float(ic.mean() / ic.std()),
        "RankIC": float(ric.mean()),
        "RankICIR": float(ric.mean() / ric.std()),
        "epoch_log": records,
        "evals_result": {k: [float(x) for x in v] for k, v in evals.items()},
        "n_jobs": args.n_jobs,
        "torch_threads": torch.get_num_threads(),
        "handler_cache": args.handler_cache,
        "device": str(model.device),
        "cpu_count": os.cpu_count(),
        "peak_rss_self_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "versions": {
            "python": platform.python_version(),
            "pyqlib": __import__("qlib").__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "pandas": pd.__version__,
        },
    }
    df = pd.DataFrame({"score": pred.astype("float32"), "label": raw_label.iloc[:, 0].reindex(pred.index)})
    df.index = df.index.set_names(["datetime", "instrument"])
    df.reset_index().to_parquet(stem.with_name(stem.name + "_pred.parquet"), index=False)
    # JSON last: its presence marks the seed as done
    tmp = stem.with_name(stem.name + ".json.tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(stem.with_name(stem.name + ".json"))
    fit_ckpt.unlink(missing_ok=True)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default="csi300-short")
    p.add_argument("--seed", type=int, nargs="+", default=[0], help="one or more seeds, run one after another")
    p.add_argument("--out", required=True, help="output folder (outside the repo)")
    p.add_argument("--n-jobs", type=int, default=2, help="DataLoader workers (qlib GRU's n_jobs; YAML: 20)")
    p.add_argument("--max-epochs", type=int, default=None, help="n_epochs (default: 30 short, 200 for 2010)")
    p.add_argument("--kernels", type=int, default=2, help="qlib processes computing the Alpha158 features")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="torch intra-op threads in the training process (0 = torch default). On an oversubscribed "
        "box 2 threads were ~12x slower per batch than 1 (OpenMP threads waiting on preempted peers)",
    )
    p.add_argument(
        "--handler-cache",
        default=None,
        help="pickle of the fitted, processed Alpha158 handler (written on first use, read after), so "
        "a rerun or resume skips qlib's feature computation; per protocol: use a separate file each",
    )
    p.add_argument("--provider-uri", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cn_csi300"))
    p.add_argument("--market", default="csi300")
    args = p.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [s for s in args.seed if not (out / f"{args.protocol}_seed{s}.json").exists()]
    for s in sorted(set(args.seed) - set(todo)):
        print(f"seed {s}: {args.protocol}_seed{s}.json exists, skipped")
    if not todo:
        return 0

    import qlib
    import torch

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    qlib.init(provider_uri=args.provider_uri, region="cn", kernels=args.kernels)
    proto = PROTOCOLS[args.protocol]
    t0 = time.perf_counter()
    dataset = build_dataset(proto, args.market, args.handler_cache)
    data_s = time.perf_counter() - t0
    print(f"dataset ready in {data_s:.1f} s", flush=True)

    for seed in todo:
        res = run_seed(args, proto, dataset, data_s, seed, out)
        keys = ("protocol", "seed", "epochs", "best_epoch", "n_train", "n_test", "fit_s", "s_per_epoch",
                "train_samples_per_s", "IC", "ICIR", "RankIC", "RankICIR")  # fmt: skip
        print(json.dumps({k: res[k] for k in keys}, indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
