"""The Ray side of training: Ray Data shards of sample indices, the TorchTrainer run, checkpoints and resume.

    with ray_session(cfg.resources):
        final = run_training(cfg, panel, run_dir)        # the finished TrainState

The processed panel goes into the object store once; the train dataset holds only compact (inst, day, weight)
rows that Ray Train splits across workers. Each worker reads its rows once and the loop gathers [B, T, F] windows
on its device. Valid samples are split by rank (``r::world``) instead, because Ray's equal split truncates.

The run directory doubles as the Ray Train run's storage (``storage_path=run_dir.parent, name=run_dir.name``):
epoch checkpoints land beside config.yaml, and a restarted worker group resumes from the latest of them. Every
epoch's checkpoint is the loop's full ``TrainState``; the last one is marked finished and is the run's result.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distgru.config import Config, ResourcesConfig, config_from_dict, to_dict
from distgru.processing.panel import ProcessedPanel
from distgru.training import ray_watchdog
from distgru.training.lifecycle import WorkerGroupFailed
from distgru.training.loop import SampleShard, train_loop
from distgru.training.preflight import preflight
from distgru.training.progress import EpochPrinter
from distgru.training.reweight import sample_weights
from distgru.training.rundir import RunDir
from distgru.training.state import EpochRow, TrainState

TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"
"""Where Ray logs, on every local start, that it turned token authentication on (its default since 2.59)."""
FAIL_ENV = "DISTGRU_FAIL_AT"
"""Test hook, ``rank:epoch``: that rank dies (``os._exit``) at that epoch's report, on the first attempt only (an
epoch ≥ 2, so a checkpoint exists to resume from)."""


SPARE_CPUS = 1
"""Logical CPUs a local Ray gets beyond the machine's cores, for Ray Data."""
_started_locally = [False]


@contextmanager
def ray_session(res: ResourcesConfig, verbose: bool = False) -> Iterator[None]:
    """Attach to ``resources.address`` / ``RAY_ADDRESS``, or start a local Ray; shut down only what was started
(and, should this process die first, ``ray_watchdog`` ends the local Ray's processes).

    A local Ray gets SPARE_CPUS logical CPU more than the machine's cores (at least 2) so Ray Data always has one
    free when every worker holds its CPU; ``spare_cpus`` keeps Tune from filling it with trials.
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
        # Authentication stays as Ray sets it (token auth on); only its start-up notice is dropped. Setting
        # RAY_AUTH_MODE instead would also silence it, but a process that imported ray earlier keeps its cached
        # "disabled" mode and then cannot talk to its own GCS.
        notice = logging.getLogger(TOKEN_NOTICE_LOGGER)
        level = notice.level
        notice.setLevel(logging.ERROR)
        try:
            ray.init(num_cpus=max(os.cpu_count() or 1, 2) + SPARE_CPUS, **kwargs)
            _started_locally[0] = True
        finally:
            notice.setLevel(level)
        ray_watchdog.spawn(os.getpid())  # a killed driver must not leave this Ray's agents behind
    try:
        yield
    finally:
        _started_locally[0] = False
        ray.shutdown()


def spare_cpus() -> float:
    """Logical CPUs of the Ray this process started locally that trials should leave free (0 on a cluster it
    joined): filling them would put more single-threaded trainers than cores on the machine."""
    return float(SPARE_CPUS) if _started_locally[0] else 0.0


def shared_panel(panel: ProcessedPanel) -> tuple[ProcessedPanel, Any]:
    """``panel`` put once into the object store, with the driver's read-only view of that copy and its ref: the
    driver drops its own copy of the largest thing a run holds (4.3 GB for Alpha360 on CSI300 2010–2026) and
    scores from the one the workers read. The view is valid while the Ray session lasts: score inside it."""
    import ray

    ref = ray.put(panel)
    return ray.get(ref), ref


def run_training(cfg: Config, panel: ProcessedPanel, run_dir: str | Path, *, progress: bool = True,
                 callbacks: list[Any] | None = None, panel_ref: Any = None) -> TrainState:
    """Train ``cfg`` on ``panel`` with Ray Train; returns the finished state (best weights, history, restarts).
    Ray must be initialised (see ``ray_session``); every check that can fail early runs before a worker starts.

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
                                               resources_per_worker=resources,
                                               placement_strategy=res.placement_strategy),
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
    with EpochPrinter(RunDir(run_dir).metrics, cfg.train.n_epochs, cfg.train.early_stop, progress):
        try:
            result = _fit(trainer)
        except ray.train.WorkerGroupError as e:
            raise WorkerGroupFailed(failure_message(e, res.max_failures)) from e
    with result.checkpoint.as_directory() as d:
        return TrainState.load(d)


def failure_message(error: BaseException, max_failures: int) -> str:
    """What failed and the setting that decides whether Ray Train restarts the group."""
    causes = getattr(error, "worker_failures", {}) or {}
    first = next(iter(causes.values()), error)
    cause = f"{type(first).__name__}: {first}".strip().splitlines()[0][:300]
    ranks = f"rank(s) {', '.join(str(r) for r in sorted(causes))}" if causes else "the worker group"
    if max_failures == 0:
        return (f"{ranks} failed ({cause}) and resources.max_failures is 0, so Ray Train did not restart the "
                "group; where nodes can go away (spot or preemptible capacity) set resources.max_failures, e.g. "
                "--set resources.max_failures=3, and a lost node's group restarts from the last checkpoint on "
                "the nodes left")
    return (f"{ranks} failed ({cause}) after {max_failures} restart(s), the most resources.max_failures "
            f"({max_failures}) allows; raise it if failures are expected (spot capacity)")


def _fit(trainer: Any) -> Any:
    """``trainer.fit()`` in a helper thread: Ray Train's own Ctrl-C handler (graceful abort, exit after three)
    is then not installed, and a Ctrl-C reaches this thread as KeyboardInterrupt at once. Leaving
    ``ray_session`` then shuts the local Ray down; the run's checkpoints are complete epochs only."""
    if threading.current_thread() is not threading.main_thread():
        return trainer.fit()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True, name="distgru-fit")
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
    if "error" in box:
        raise box["error"]
    return box["result"]


def _read_rows(iterator: Any) -> dict[str, np.ndarray]:
    parts = list(iterator.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0))
    return {k: np.concatenate([p[k] for p in parts]) for k in ("inst", "day", "weight")}


def _gather_devices(device: torch.device) -> list[str]:
    import ray
    import torch.distributed as dist

    # The node's IP as well: two Ray nodes may share a host name (containers, a simulated cluster).
    mine = f"{device}@{socket.gethostname()}/{ray.util.get_node_ip_address()}"
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return [str(x) for x in out]


class _Reporter:
    """The loop's Reporter: every rank reports every epoch (a barrier); rank 0 attaches the state as the epoch's
    checkpoint and appends the epoch to metrics.jsonl (Train V2 keeps no metrics history of its own)."""

    def __init__(self, rank: int, run_dir: str, attempt: int, devices: list[str], fail_at: str | None) -> None:
        self.rank, self.run_dir, self.attempt, self.devices = rank, RunDir(run_dir), attempt, devices
        self.fail = tuple(int(x) for x in fail_at.split(":")) if fail_at and attempt == 0 else None

    def __call__(self, row: EpochRow, state: TrainState | None) -> None:
        import ray.train

        if self.fail == (self.rank, int(row["epoch"])):
            os._exit(1)  # a hard crash: no exception for Ray to catch, as a lost node looks
        if self.rank == 0:
            self.run_dir.append_metrics({**row, "attempt": self.attempt})
        if state is None:
            ray.train.report(row, checkpoint=None)
            return
        state.attempt, state.devices = self.attempt, self.devices
        with tempfile.TemporaryDirectory(prefix="distgru-ckpt-") as tmp:
            state.save(tmp)
            # report() copies the directory to the run's storage before it returns.
            ray.train.report(row, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _train_worker(config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    import ray
    import ray.train
    import ray.train.torch

    started = time.perf_counter()  # start-up counts reading the panel and the shard
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
            resume = TrainState.load(d)
        attempt = resume.attempt + 1
        if resume.finished:
            return  # the run had finished; its last checkpoint already holds the result
    device = ray.train.torch.get_device()
    reporter = _Reporter(rank, config["run_dir"], attempt, _gather_devices(device), config["fail_at"])
    train_loop(cfg, panel, shard, reporter, resume=resume, device=device, started=started)
