"""The Ray side of training: Ray Data shards of sample indices, the TorchTrainer run, checkpoints and resume.

    with ray_session(cfg.resources):
        outcome = run_training(cfg, panel, state, run_dir)

The processed panel goes into the object store once; the train dataset holds only compact (inst, day, weight)
rows that Ray Train splits across workers. Each worker reads its rows once and the loop gathers [B, T, F] windows
on its device. Valid samples are split by rank (``r::world``) instead, because Ray's equal split truncates.

The run directory doubles as the Ray Train run's storage (``storage_path=run_dir.parent, name=run_dir.name``):
epoch checkpoints land beside config.yaml, and a restarted worker group resumes from the latest of them.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distgru.config import Config, ConfigError, ResourcesConfig, config_from_dict, to_dict
from distgru.features.table import ProcessedPanel
from distgru.processing.processors import ProcessorState
from distgru.training.capacity import autoscaler_ceiling, autoscaling, check_resources
from distgru.training.checkpoint import load_state, save_best, state_checkpoint
from distgru.training.loop import SampleShard, train_loop, window_len
from distgru.training.reweight import sample_weights
from distgru.training.rundir import METRICS_FILE, append_metrics
from distgru.training.windows import sample_index

FAIL_ENV = "DISTGRU_FAIL_AT"
"""Test hook, ``rank:epoch``: that rank dies (``os._exit``) at that epoch's report on the first attempt only, i.e.
while no checkpoint exists to resume from (so the epoch must be ≥ 1)."""
FINAL_KEY = "final"
ATTEMPT_KEY = "attempt"


@dataclass
class TrainOutcome:
    best_epoch: int
    best_score: float
    epochs_run: int
    stopped_early: bool
    best_state: dict[str, torch.Tensor]
    """CPU weights of the best epoch."""
    history: list[dict[str, float]]
    """The loop's per-epoch metrics (as metrics.jsonl)."""
    samples: dict[str, int]
    train_samples_per_s: float
    train_wall_s: float
    restarts: int
    devices: list[str] = field(default_factory=list)
    """``device@host`` of each worker, by rank."""


Samples = dict[str, tuple[np.ndarray, np.ndarray]]


def segment_samples(panel: ProcessedPanel) -> Samples:
    """(inst, day) of train and valid (learn rows, as the loop trains on) and test (infer rows, all scored)."""
    return {"train": sample_index(panel, "train", "learn"), "valid": sample_index(panel, "valid", "learn"),
            "test": sample_index(panel, "test", "infer")}


def check_data(cfg: Config, panel: ProcessedPanel) -> Samples:
    """Pre-flight checks that need only the data; errors name the config key to change."""
    samples = segment_samples(panel)
    for seg, (inst, _) in samples.items():
        if len(inst) == 0:
            raise ConfigError(f"dataset.{seg}: {getattr(cfg.dataset, seg)} holds no {seg} samples in the data "
                              f"({panel.calendar[0]:%Y-%m-%d} .. {panel.calendar[-1]:%Y-%m-%d})")
    n_train, world = len(samples["train"][0]), cfg.resources.num_workers
    if cfg.train.batch_size > n_train:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is larger than the {n_train} training samples")
    if cfg.train.batch_size < world:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is the global batch; it must be at least "
                          f"resources.num_workers ({world})")
    n_feat = len(panel.feature_names)
    if n_feat != cfg.model.d_feat if cfg.model.input == "window" else n_feat % cfg.model.d_feat:
        raise ConfigError(f"model.d_feat: {cfg.model.d_feat} does not fit the data's {n_feat} features per day "
                          f"(model.input {cfg.model.input!r})")
    return samples


def preflight(cfg: Config, panel: ProcessedPanel) -> Samples:
    """Every check that can fail before a worker starts: the data's, then the connected cluster's resources."""
    import ray

    samples = check_data(cfg, panel)
    scaling = autoscaling()
    check_resources(cfg.resources, ray.cluster_resources(), scaling, autoscaler_ceiling() if scaling else None)
    return samples


@contextmanager
def ray_session(res: ResourcesConfig, verbose: bool = False) -> Iterator[None]:
    """Attach to ``resources.address`` / ``RAY_ADDRESS``, or start a local Ray; shut down only what was started.

    A local Ray gets one logical CPU more than the machine's cores (at least 2) so Ray Data always has one free
    when every worker holds its CPU.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    address = res.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"log_to_driver": verbose}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=max(os.cpu_count() or 1, 2) + 1, **kwargs)
    try:
        yield
    finally:
        ray.shutdown()


def run_training(cfg: Config, panel: ProcessedPanel, state: ProcessorState, run_dir: str | Path, *,
                 progress: bool = True, callbacks: list[Any] | None = None, panel_ref: Any = None) -> TrainOutcome:
    """Train ``cfg`` on ``panel`` with Ray Train and write ``run_dir/best/``. Ray must be initialised (see
    ``ray_session``); every check that can fail early runs before a worker starts.

    ``callbacks`` are Ray Train ``UserCallback``s (Tune forwards reports with one); ``panel_ref`` is ``panel``
    already in the object store (Tune shares one copy across trials)."""
    import pyarrow as pa
    import ray
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    samples = preflight(cfg, panel)
    run_dir = Path(run_dir).resolve()
    res = cfg.resources
    world = res.num_workers

    t_inst, t_day = samples["train"]
    weight = sample_weights(cfg.train.reweighter, panel, t_inst, t_day).astype(np.float32)
    # `world` equal blocks, rank r's the strided share make_shard gives it (so a 1-worker run trains on exactly
    # what an in-process Tune trial does): the splitter hands block r to rank r whole (no re-splitting task, so
    # no CPU needed), the same way on every attempt, so a resumed run sees the same shards.
    per_rank = len(t_inst) // world
    blocks = [np.arange(r, len(t_inst), world)[:per_rank] for r in range(world)]
    train_ds = ray.data.from_arrow([pa.table({"inst": t_inst[b], "day": t_day[b], "weight": weight[b]})
                                    for b in blocks])
    # Train captures the driver's DataContext; the splitter's bars would interleave with the epoch lines.
    ray.data.DataContext.get_current().enable_progress_bars = False

    resources = {"CPU": res.cpus_per_worker, **({"GPU": res.gpus_per_worker} if res.use_gpu else {})}
    loop_config = {
        "cfg": to_dict(cfg), "run_dir": str(run_dir), "fail_at": os.environ.get(FAIL_ENV),
        # Boxed in lists: Ray resolves top-level ObjectRefs in some config paths, and workers want the ref.
        "panel_box": [panel_ref if panel_ref is not None else ray.put(panel)], "valid_box": [ray.put(samples["valid"])],
    }
    trainer = TorchTrainer(
        _train_worker, train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=world, use_gpu=res.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=run_dir.name, storage_path=str(run_dir.parent), callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=res.max_failures),
            # num_to_keep=1 with a score keeps the best checkpoint, and Ray always keeps the latest too.
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="valid_score",
                                                         checkpoint_score_order="max")),
        datasets={"train": train_ds},
        # Locality hints would let block placement decide which rank gets which rows; determinism matters more.
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"], enable_shard_locality=False),
    )
    printer = _Progress(run_dir / METRICS_FILE, cfg.train.n_epochs, cfg.train.early_stop, progress)
    printer.start()
    t0 = time.perf_counter()
    try:
        result = trainer.fit()
    finally:
        printer.finish()
    train_wall = time.perf_counter() - t0
    with result.checkpoint.as_directory() as d:
        final = load_state(d)
    summary = final[FINAL_KEY]
    history = summary["history"]
    outcome = TrainOutcome(
        best_epoch=summary["best_epoch"], best_score=summary["best_score"], epochs_run=summary["epochs_run"],
        stopped_early=summary["stopped_early"], best_state=final["best_state"], history=history,
        samples={k: len(v[0]) for k, v in samples.items()} | {"train_used": per_rank * world},
        train_samples_per_s=_throughput(history), train_wall_s=train_wall, restarts=final[ATTEMPT_KEY],
        devices=summary["devices"])
    save_best(run_dir, cfg, outcome.best_state, state,
              {"step_len": window_len(cfg), "feature_names": list(panel.feature_names),
               "best_epoch": outcome.best_epoch, "best_score": outcome.best_score})
    return outcome


def _throughput(history: list[dict[str, float]]) -> float:
    """Samples/s over all epochs (harmonic mean: total samples over total train time)."""
    rates = [h["samples_per_s"] for h in history if h.get("samples_per_s", 0) > 0]
    return len(rates) / sum(1.0 / r for r in rates) if rates else float("nan")


def _read_rows(iterator: Any) -> dict[str, np.ndarray]:
    parts = list(iterator.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0))
    return {k: np.concatenate([p[k] for p in parts]) for k in ("inst", "day", "weight")}


def _gather_devices(device: torch.device) -> list[str]:
    import torch.distributed as dist

    mine = f"{device}@{socket.gethostname()}"
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return [str(x) for x in out]


class _Reporter:
    """The loop's Reporter: every rank reports every epoch (a barrier); rank 0 attaches the checkpoint and
    appends the epoch to metrics.jsonl (Train V2 keeps no metrics history of its own)."""

    def __init__(self, rank: int, run_dir: str, attempt: int, fail_at: str | None) -> None:
        self.rank, self.run_dir, self.attempt = rank, run_dir, attempt
        self.fail = tuple(int(x) for x in fail_at.split(":")) if fail_at and attempt == 0 else None

    def __call__(self, metrics: dict[str, float], state: dict | None) -> None:
        import ray.train

        if self.fail == (self.rank, int(metrics["epoch"])):
            os._exit(1)  # a hard crash: no exception for Ray to catch, as a lost node looks
        if self.rank == 0:
            append_metrics(self.run_dir, {**metrics, "attempt": self.attempt, "time": time.time()})
        if state is not None:
            state = {**state, ATTEMPT_KEY: self.attempt}
        with state_checkpoint(state) as checkpoint:
            ray.train.report(metrics, checkpoint=checkpoint)


def _train_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray
    import ray.train
    import ray.train.torch

    cfg = config_from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    # Ray sets OMP_NUM_THREADS from the CPU reservation, but torch reads it only at its own import.
    torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
    panel: ProcessedPanel = ray.get(config["panel_box"][0])
    v_inst, v_day = ray.get(config["valid_box"][0])
    rows = _read_rows(ray.train.get_dataset_shard("train"))
    shard = SampleShard(rows["inst"], rows["day"], rows["weight"], v_inst[rank::world], v_day[rank::world])

    resume, attempt = None, 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = load_state(d)
        attempt = int(resume.get(ATTEMPT_KEY, 0)) + 1
        if FINAL_KEY in resume:
            return  # the run had finished; its final checkpoint already holds the result
    device = ray.train.torch.get_device()
    devices = _gather_devices(device)
    reporter = _Reporter(rank, config["run_dir"], attempt, config["fail_at"])
    with warnings.catch_warnings():
        # The panel arrays are read-only views of the object store; the loop copies them to the device and
        # never writes them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        result = train_loop(cfg, panel, shard, reporter, resume=resume, device=device)

    final = None
    if rank == 0:
        final = {FINAL_KEY: {"best_epoch": result.best_epoch, "best_score": result.best_score,
                             "epochs_run": result.epochs_run, "stopped_early": result.stopped_early,
                             "history": result.history, "devices": devices},
                 "best_state": result.best_state, ATTEMPT_KEY: attempt}
    with state_checkpoint(final) as ckpt:
        ray.train.report({"epoch": result.epochs_run, "valid_score": result.best_score}, checkpoint=ckpt)


class _Progress:
    """Prints one line per epoch on the driver by following metrics.jsonl (worker stdout is noisy and prefixed)."""

    def __init__(self, path: Path, n_epochs: int, early_stop: int, enabled: bool) -> None:
        self.path, self.n_epochs, self.early_stop, self.enabled = path, n_epochs, early_stop, enabled
        self.offset = 0
        self.seconds: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="distgru-progress")

    def start(self) -> None:
        if self.enabled:
            self.thread.start()

    def finish(self) -> None:
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
        epoch = int(row["epoch"])
        self.seconds.append(float(row.get("epoch_s") or 0.0))
        recent = self.seconds[1:] or self.seconds  # the first epoch carries warm-up
        per_epoch = sum(recent) / len(recent)
        left = self.n_epochs - epoch - 1
        patience_left = int(row["best_epoch"]) + self.early_stop - epoch
        retry = f" (attempt {int(row['attempt']) + 1})" if row.get("attempt") else ""
        return (f"epoch {epoch + 1:>3}/{self.n_epochs}  train_loss {row['train_loss']:.4f}  "
                f"valid_ic {row['valid_ic']:+.4f}  score {row['valid_score']:+.5f}  best {int(row['best_epoch']) + 1}"
                f"  {row['samples_per_s']:,.0f} samples/s  {row['epoch_s']:.1f}s/epoch  "
                f"ETA ≤ {_duration(left * per_epoch)} (early stop in {max(patience_left, 0)} without gain)"
                + retry)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
