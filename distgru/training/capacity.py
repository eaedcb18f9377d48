"""Can the Ray cluster ever host the worker group? Checked before any worker starts.

A fixed cluster can host what its logical resources add up to. An autoscaling cluster can grow: its ceiling is
read from the autoscaler's own config, which ``ray up`` leaves on the head node (``~/ray_bootstrap_config.yaml``;
``ray job submit`` runs the driver there). Where that file is missing, or a node type leaves its resources to
be detected from the instance type, the ceiling is unknown and the check is skipped rather than guessed.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from distgru.config import ConfigError, ResourcesConfig

BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")


def autoscaling() -> bool:
    """Whether an autoscaler may add nodes to the connected cluster."""
    try:
        from ray._private import ray_constants
        from ray.autoscaler.v2.utils import is_autoscaler_v2
        from ray.experimental.internal_kv import _internal_kv_get

        if is_autoscaler_v2():
            return True
        # Every Ray head runs the v1 monitor; without a cluster config it reports itself "legacy" (read-only).
        status = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        return bool(status) and not json.loads(status)["autoscaler_report"].get("legacy", False)
    except Exception:  # private API: any change in it means "no autoscaler known"
        return False


def autoscaler_ceiling(path: str | Path = BOOTSTRAP_CONFIG) -> dict[str, float] | None:
    """The most of each resource the cluster can reach under its autoscaler config, or None if unknown.

    Per resource: the head node's, plus the worker node types richest in it, each up to its ``max_workers``,
    at most the config's global ``max_workers`` nodes in all — an upper bound, so a group it rules out can
    never start.
    """
    path = Path(path).expanduser()
    try:
        config = yaml.safe_load(path.read_text())
        types = config["available_node_types"]
        head = types[config["head_node_type"]]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    workers = [t for name, t in types.items() if name != config["head_node_type"] and t.get("max_workers", 0)]
    if any(not t.get("resources") for t in [head, *workers]):
        return None  # resources detected from the instance type at launch: not in the config
    budget = int(config.get("max_workers", sum(t["max_workers"] for t in workers)))
    ceiling: dict[str, float] = {}
    for key in {k for t in [head, *workers] for k in t["resources"]}:
        total, left = float(head["resources"].get(key, 0)), budget
        for t in sorted(workers, key=lambda t: -float(t["resources"].get(key, 0))):
            n = min(int(t["max_workers"]), left)
            total += n * float(t["resources"].get(key, 0))
            left -= n
        ceiling[key] = total
    return ceiling


def check_resources(res: ResourcesConfig, cluster: dict[str, float], autoscaling: bool = False,
                    ceiling: dict[str, float] | None = None) -> None:
    """Fail when the cluster can never host the worker group: its resources now, or with an autoscaler
    (``autoscaling``) the ``ceiling`` it can grow to (None: unknown, nothing is checked)."""
    if autoscaling and ceiling is None:
        return
    limit = cluster if not autoscaling else {k: max(cluster.get(k, 0.0), v) for k, v in ceiling.items()}
    what = "the Ray cluster has" if not autoscaling else "its autoscaler can reach at most"
    cpus, gpus = limit.get("CPU", 0.0), limit.get("GPU", 0.0)
    if res.use_gpu and gpus == 0:
        raise ConfigError(f"resources.use_gpu: true, but {what} no GPU; drop --gpu or attach to a cluster with "
                          "GPUs (resources.address)")
    need_cpu = res.num_workers * res.cpus_per_worker
    if need_cpu > cpus:
        raise ConfigError(f"resources.num_workers: {res.num_workers} workers × {res.cpus_per_worker} CPUs "
                          f"(resources.cpus_per_worker) need {need_cpu:g} CPUs; {what} {cpus:g}")
    if res.use_gpu and res.num_workers * res.gpus_per_worker > gpus:
        raise ConfigError(f"resources.num_workers: {res.num_workers} workers × {res.gpus_per_worker} GPUs "
                          f"(resources.gpus_per_worker) need {res.num_workers * res.gpus_per_worker:g} GPUs; "
                          f"{what} {gpus:g}")
