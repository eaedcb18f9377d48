"""The storage rule for multi-node runs (``training/storage.py``) and the failure message naming
``resources.max_failures``, without a cluster (tests/test_cluster_live.py runs both on one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from distgru.config import ConfigError
from distgru.training import storage
from distgru.training.ray_train import failure_message

MOUNTS = """\
overlay / overlay rw,relatime 0 0
tmpfs /tmp tmpfs rw 0 0
fs-0123.efs.us-east-1.amazonaws.com:/ /mnt/cluster_storage nfs4 rw,vers=4.1 0 0
s3fs /mnt/my\\040bucket fuse.s3fs rw 0 0
/dev/nvme1n1 /mnt/cluster_storage/local_scratch ext4 rw 0 0
"""


@pytest.mark.parametrize(("path", "kind"), [
    ("/mnt/cluster_storage/runs", "nfs4"), ("/mnt/cluster_storage", "nfs4"), ("/mnt/cluster_storagex", "overlay"),
    ("/mnt/cluster_storage/local_scratch/runs", "ext4"), ("/tmp/runs", "tmpfs"), ("/home/me/runs", "overlay"),
    ("/mnt/my bucket/runs", "fuse.s3fs"),
])
def test_fs_type_is_the_longest_mount_point_holding_the_path(path: str, kind: str) -> None:
    assert storage.fs_type(Path(path), MOUNTS) == kind


@pytest.mark.parametrize(("kind", "shared"), [("nfs4", True), ("fuse.s3fs", True), ("lustre", True),
                                               ("ext4", False), ("overlay", False), ("tmpfs", False), (None, False)])
def test_shared_file_system_types(kind: str | None, shared: bool) -> None:
    assert storage.is_shared_fs(kind) is shared


def test_no_other_node_yet_decides_by_the_file_system(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(storage, "_worker_nodes", list)
    monkeypatch.setattr(storage, "fs_type", lambda path, mounts=None: "ext4")
    storage.check_shared_storage(tmp_path)  # a single node: nothing to share with
    with pytest.raises(ConfigError, match=r"output_dir: .* on this node's own disk \(ext4\).*/mnt/cluster_storage"):
        storage.check_shared_storage(tmp_path, autoscaling=True)
    monkeypatch.setattr(storage, "fs_type", lambda path, mounts=None: "nfs4")
    storage.check_shared_storage(tmp_path, autoscaling=True)


class _Lost(Exception):
    pass


def test_failure_message_names_max_failures() -> None:
    error = type("WorkerGroupError", (Exception,), {})("Training failed due to worker errors")
    error.worker_failures = {1: _Lost("node 127.0.0.3 died")}
    fatal = failure_message(error, 0)
    assert fatal.startswith("rank(s) 1 failed (_Lost: node 127.0.0.3 died)")
    assert "resources.max_failures is 0" in fatal and "--set resources.max_failures=3" in fatal
    assert "after 2 restart(s)" in failure_message(error, 2) and "resources.max_failures (2)" in failure_message(
        error, 2)
