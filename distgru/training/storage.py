"""Is the run's storage the same folder on every node that can host a worker? Checked before any worker starts.

Ray Train's workers write each epoch's checkpoint under ``storage_path`` (the run directory's parent) and rank 0
appends metrics.jsonl to the run directory the driver created, so on a multi-node cluster that folder must be a
shared mount (NFS/EFS, a ReadWriteMany volume). The check is observed, not guessed: the driver writes a file with a
fresh token under the storage root, and a zero-CPU task pinned to every other node that can host a worker reads it
back. An autoscaling cluster whose worker nodes do not exist yet cannot be asked; there the root's file system type
decides (a local disk type is refused).
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from distgru.config import ConfigError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 120.0
"""A node that answers no probe in this time (a worker process that cannot start) is reported, not waited for."""
SHARED_FS_TYPES = ("nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "ceph", "cephfs", "glusterfs",
                   "beegfs", "fuse", "9p", "virtiofs", "efs", "wekafs", "panfs")
"""File system types (or prefixes of ``fuse.*``) that can be mounted on several machines at once."""
FIX = ("put --output (output_dir) on storage every node mounts at the same path (NFS/EFS, a ReadWriteMany volume), "
       "e.g. --output /mnt/cluster_storage/runs; see cluster/README.md")


def _read_probe(path: str, token: str) -> tuple[str, bool]:
    import ray

    try:
        seen = Path(path).read_text() == token
    except OSError:
        seen = False
    return ray.util.get_node_ip_address(), seen


def _worker_nodes() -> list[dict]:
    """Alive nodes, other than the driver's, with CPUs or GPUs for a worker (a ``CPU: 0`` head is not one)."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    return [n for n in ray.nodes() if n["Alive"] and n["NodeID"] != here
            and (n["Resources"].get("CPU", 0) > 0 or n["Resources"].get("GPU", 0) > 0)]


def fs_type(path: Path, mounts: str | None = None) -> str | None:
    """The type of the file system holding ``path`` (longest matching mount point of ``/proc/mounts``)."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    best, kind = "", None
    target = str(path)
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, parts[2]
    return kind


def is_shared_fs(kind: str | None) -> bool:
    return kind is not None and (kind in SHARED_FS_TYPES or kind.split(".")[0] in SHARED_FS_TYPES)


def check_shared_storage(root: str | Path, autoscaling: bool = False) -> None:
    """Fail (ConfigError naming output_dir and the fix) when a node that may host a worker cannot see ``root``.
    Ray must be initialised; a single-node cluster passes at once."""
    import ray

    root = Path(root).expanduser().resolve()
    nodes = _worker_nodes()
    if not nodes:
        kind = fs_type(root)
        if autoscaling and not is_shared_fs(kind):
            raise ConfigError(f"output_dir: {root} is on this node's own disk ({kind}), and the autoscaler will run "
                              f"the workers on other nodes, which cannot see it; {FIX}")
        return
    root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    probe = root / f".distgru-storage-probe-{token[:8]}"
    probe.write_text(token)
    try:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        task = ray.remote(num_cpus=0, max_retries=0)(_read_probe)
        refs = [task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(probe), token) for n in nodes]
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
        answers = ray.get(ready)
    finally:
        os.unlink(probe)
    blind = sorted(ip for ip, seen in answers if not seen)
    if blind:
        raise ConfigError(f"output_dir: {root} is not shared: node(s) {', '.join(blind)} do not see what this node "
                          f"writes there, and workers on them would write checkpoints and metrics where the driver "
                          f"never looks; {FIX}")
    if pending:
        log.warning("storage check: %d of %d nodes did not answer within %.0f s; %s is not known to be shared with "
                    "them", len(pending), len(refs), PROBE_TIMEOUT_S, root)
