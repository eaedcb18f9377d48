"""Build, run and restore the Tune experiment of a config.

    probes = check_space(cfg)                         # before any data or Ray
    data = prepare_data(cfg, probes)                  # one processed panel per distinct data config
    grid = run_experiment(cfg, data, exp_dir)         # Ray initialised; restore=True continues exp_dir

The experiment directory is Tune's (``storage_path=exp_dir.parent, name=exp_dir.name``): one ``trial_<id>/``
per trial (progress.csv, result.json, TensorBoard events, checkpoints), experiment_state-*.json for restore, and
the resolved tune config (config.yaml) that ``--resume`` reads back.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from pathlib import Path
from typing import Any

from distgru.config import Config, ConfigError
from distgru.config.tune import TuneConfig
from distgru.processing.panel import ProcessedPanel
from distgru.processing.processors import ProcessorState
from distgru.tuning.progress import TrialEpochLines
from distgru.tuning.space import base_dict, data_configs, data_key, param_space, pbt_mutations, tune_of
from distgru.tuning.trial import in_process_trial, multi_worker_trial, trial_dirname

Data = dict[str, tuple[ProcessedPanel, ProcessorState]]
"""``data_key`` → (processed panel, fitted processor state)."""
REPORT_COLUMNS = ("valid_ic", "valid_rank_ic", "valid_score", "train_loss")


def prepare_data(cfg: Config, probes: list[Config], progress: bool = True) -> Data:
    """Prepare each distinct data config once, then run the data pre-flight checks on every probe config."""
    from distgru.processing.checks import log_warnings
    from distgru.processing.pipeline import prepare_panel
    from distgru.training.preflight import check_data

    data = {key: prepare_panel(dcfg, progress) for key, dcfg in data_configs(cfg).items()}
    log_warnings([w for probe in probes for w in check_data(probe, data[data_key(probe)][0])])
    return data


def trial_resources(cfg: Config) -> dict[str, float]:
    """What a trial process reserves (a multi-worker trial's Train workers reserve theirs separately)."""
    tr, res = tune_of(cfg).resources, cfg.resources
    cpu = res.cpus_per_worker if tr.cpu is None else tr.cpu
    if res.num_workers > 1:
        return {"cpu": cpu, "gpu": 0.0}
    gpu = tr.gpu if tr.gpu is not None else (res.gpus_per_worker if res.use_gpu else 0.0)
    return {"cpu": cpu, "gpu": gpu}


def max_concurrent(cfg: Config, cluster: dict[str, float], spare_cpus: float = 0.0) -> int:
    """Trials the cluster holds at once (workers included), so none sits PENDING waiting for resources, leaving
    ``spare_cpus`` free where more than one trial fits."""
    tc, res = tune_of(cfg), cfg.resources
    if tc.max_concurrent_trials is not None:
        return tc.max_concurrent_trials
    own = trial_resources(cfg)
    need = {"CPU": own["cpu"], "GPU": own["gpu"]}
    if res.num_workers > 1:
        need["CPU"] += res.num_workers * res.cpus_per_worker
        need["GPU"] = res.num_workers * res.gpus_per_worker if res.use_gpu else 0.0
    fits = {k: math.floor(cluster.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0}
    if any(n == 0 for n in fits.values()):
        raise ConfigError(f"tune.resources: one trial needs {need['CPU']:g} CPUs and {need['GPU']:g} GPUs (workers "
                          f"included); the Ray cluster has {cluster.get('CPU', 0):g} CPUs, "
                          f"{cluster.get('GPU', 0):g} GPUs")
    if need["CPU"] > 0:
        fits["CPU"] = max(1, math.floor((cluster.get("CPU", 0.0) - spare_cpus) / need["CPU"] + 1e-9))
    return max(1, min(fits.values(), default=1))


def _scheduler(cfg: Config) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    tc = tune_of(cfg)
    s = tc.scheduler
    if s.kind == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=s.max_t or cfg.train.n_epochs,
                             grace_period=s.grace_period, reduction_factor=s.reduction_factor)
    if s.kind == "pbt":
        return PopulationBasedTraining(time_attr="training_iteration", perturbation_interval=s.perturbation_interval,
                                       hyperparam_mutations=pbt_mutations(tc), quantile_fraction=s.quantile_fraction,
                                       resample_probability=s.resample_probability)
    return FIFOScheduler()


def check_search_package(cfg: Config) -> None:
    """optuna/hyperopt are optional: fail before Ray and data when the chosen one is not installed."""
    search = tune_of(cfg).search
    if search in ("optuna", "hyperopt"):
        try:
            __import__(search)
        except ImportError:
            raise ConfigError(f"tune.search: {search!r} needs the {search} package (pip install {search}); "
                              "or use search: random") from None


def _search_alg(cfg: Config, concurrency: int) -> Any:
    """The searcher, limited to ``concurrency`` running trials (Tune ignores TuneConfig.max_concurrent_trials
    when given a BasicVariantGenerator instance, so the limit is set on each searcher itself)."""
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

    tc = tune_of(cfg)
    if tc.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=tc.seed), concurrency)
    if tc.search == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        return ConcurrencyLimiter(HyperOptSearch(random_state_seed=tc.seed), concurrency)
    return BasicVariantGenerator(random_state=tc.seed, max_concurrent=concurrency)


def _reporter(cfg: Config) -> Any:
    """The live terminal table: parameters, the tune metric and the loop's headline metrics per trial."""
    from ray.tune import CLIReporter

    tc = tune_of(cfg)
    metrics = {"training_iteration": "epochs", **{m: m for m in dict.fromkeys([tc.metric, *REPORT_COLUMNS])}}
    # metric/mode come from TuneConfig (the reporter refuses both); sort_by_metric uses them.
    return CLIReporter(parameter_columns=[d.key for d in tc.dists], metric_columns=metrics, sort_by_metric=True,
                       max_report_frequency=10)


def _checkpoints_kept(tc: TuneConfig) -> int:
    """The latest state carries the best weights so far, so older ones are dead weight, except under PBT: a
    trial cloning another restores the checkpoint it saw at the exploit step, which its owner may have moved past
    by then (Tune warns below 3)."""
    return 5 if tc.scheduler.kind == "pbt" else 1


def _trial_dirname(trial: Any) -> str:
    return trial_dirname(trial.trial_id)


def _trainable(cfg: Config, data: Data, exp_dir: Path) -> Any:
    import ray
    from ray import tune

    from distgru.training.ray_train import shared_panel

    # Panel and state apart, so a multi-worker trial hands its Train workers the panel's ref, not a copy. The
    # driver's own copy gives way to the object store's view (it scores the best trial or the seeds from it).
    refs = {}
    for key, (panel, state) in data.items():
        view, panel_ref = shared_panel(panel)
        data[key] = (view, state)
        refs[key] = (panel_ref, ray.put(state))
    if cfg.resources.num_workers == 1:
        fn = tune.with_parameters(in_process_trial, base=base_dict(cfg), data_box=[refs])
    else:
        fn = tune.with_parameters(multi_worker_trial, base=base_dict(cfg), data_box=[refs], exp_dir=str(exp_dir))
    return tune.with_resources(fn, trial_resources(cfg))


def run_experiment(cfg: Config, data: Data, exp_dir: str | Path, *, restore: bool = False,
                   verbose: int = 1, epoch_lines: bool = False) -> Any:
    """Run the search into ``exp_dir`` (or continue it: finished trials are kept, unfinished ones resume from
    their last checkpoint, errored ones restart) and return Tune's ResultGrid. Ray must be initialised. ``data``'s
    panels become the object store's read-only views (one copy on the machine): score from them in this session.

    A first Ctrl-C makes Tune pause the trials and save the experiment; then ``RunInterrupted`` is raised (a
    second Ctrl-C raises KeyboardInterrupt at once)."""
    from ray import tune

    from distgru.training.capacity import autoscaling
    from distgru.training.lifecycle import RunInterrupted
    from distgru.training.storage import check_shared_storage

    tc = tune_of(cfg)
    # Tune's newer console output ignores progress_reporter; the legacy one prints our CLIReporter table.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Per-epoch checkpoints with num_to_keep=1 force a state snapshot each time (wanted: resume loses nothing);
    # Tune warns about that on every epoch.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    exp_dir = Path(exp_dir).resolve()
    check_shared_storage(exp_dir.parent, autoscaling())  # trials and their workers may run on any node
    trainable = _trainable(cfg, data, exp_dir)
    callbacks = [TrialEpochLines(cfg.train.n_epochs, [d.key for d in tc.dists])] if epoch_lines else []
    if restore:
        tuner = tune.Tuner.restore(str(exp_dir), trainable=trainable, resume_unfinished=True, restart_errored=True)
    else:
        tuner = _new_tuner(cfg, trainable, exp_dir, verbose, callbacks)
    grid, interrupted = _fit_noting_ctrl_c(tuner)
    if interrupted:
        raise RunInterrupted("Tune paused the trials and saved the experiment")
    return grid


def _second_ctrl_c(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _fit_noting_ctrl_c(tuner: Any) -> tuple[Any, bool]:
    """``tuner.fit()`` and whether a Ctrl-C (or SIGUSR1) stopped it. Tune's handler takes the first signal, saves
    the experiment, returns normally (its trials then read as terminated) and hands SIGINT back to the handler it
    replaced: finding ours installed again is the sign; a second Ctrl-C then raises KeyboardInterrupt at once."""
    if threading.current_thread() is not threading.main_thread():
        return tuner.fit(), False
    previous = signal.signal(signal.SIGINT, _second_ctrl_c)
    try:
        grid = tuner.fit()
        return grid, signal.getsignal(signal.SIGINT) is _second_ctrl_c
    finally:
        signal.signal(signal.SIGINT, previous)


def _new_tuner(cfg: Config, trainable: Any, exp_dir: Path, verbose: int, callbacks: list[Any]) -> Any:
    import ray
    from ray import tune

    from distgru.training.ray_train import spare_cpus

    tc = tune_of(cfg)
    concurrency = max_concurrent(cfg, ray.cluster_resources(), spare_cpus())
    return tune.Tuner(
        trainable, param_space=param_space(tc),
        tune_config=tune.TuneConfig(metric=tc.metric, mode=tc.resolved_mode, scheduler=_scheduler(cfg),
                                    search_alg=_search_alg(cfg, concurrency),
                                    num_samples=tc.num_samples, trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(name=exp_dir.name, storage_path=str(exp_dir.parent), verbose=verbose,
                                  progress_reporter=_reporter(cfg),
                                  failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=_checkpoints_kept(tc)),
                                  callbacks=callbacks))
