"""distgru on a real multi-node Ray cluster (``tests/cluster_fixtures.py``: a head with no CPUs and two worker nodes on
loopback, whose Python has Ray and torch but not distgru), driven as a cluster user drives it: README's
``ray job submit`` command. One worker lands on each node; node-local storage is refused before training; a node
lost mid-run is recovered to the same metrics with ``resources.max_failures``, and without it the run fails naming
that setting."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from distgru.training.rundir import read_result
from distgru.version import source_digest
from tests.cluster_fixtures import LocalCluster, local_cluster  # noqa: F401
from tests.test_train_cli import TINY_RUN

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[1]
RUN = {
    **TINY_RUN, "name": "job",
    "data": {"synthetic": {"n_instruments": 60, "n_days": 300, "seed": 5}},
    "dataset": {"train": ["2020-04-01", "2020-09-30"], "valid": ["2020-10-01", "2020-11-13"],
                "test": ["2020-11-16", "2021-02-26"]},
    "model": {"hidden_size": 32, "num_layers": 1},
    "train": {"n_epochs": 4, "early_stop": 4, "batch_size": 256, "lr": 1e-3, "deterministic": True, "seed": 2},
    "resources": {"num_workers": 2, "placement_strategy": "SPREAD"},
}
PER_EPOCH = ("epoch", "train_loss", "grad_norm", "valid_score", "valid_mse", "valid_ic", "valid_rank_ic", "best_epoch")


def readme_entrypoint() -> list[str]:
    """README's cluster command up to ``python -m distgru train``: what the tests submit, flag for flag."""
    text = (REPO / "README.md").read_text().replace("\\\n", " ")
    match = re.search(r"ray job submit (.*?)python -m distgru train", text)
    assert match, "README has no `ray job submit ... python -m distgru train` command"
    return ["job", "submit", *shlex.split(match.group(1)), "python", "-m", "distgru", "train"]


def job_config(cluster: LocalCluster, **resources: object) -> Path:
    run = {**RUN, "resources": {**RUN["resources"], **resources},
           "data": {**RUN["data"], "cache_dir": str(cluster.shared / "cache")}}
    path = cluster.shared / f"job_{len(list(cluster.shared.glob('job_*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


def submit_args(config: Path, output: Path) -> list[str]:
    return [*readme_entrypoint(), str(config), "--output", str(output)]


def run_dir(output: Path) -> Path:
    (path,) = [p for p in output.iterdir() if p.is_dir()]
    return path


def epochs(path: Path) -> dict[int, dict]:
    """metrics.jsonl by epoch (an epoch replayed after a restart appears twice; both copies must agree)."""
    rows: dict[int, dict] = {}
    for line in (path / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        same = {k: row[k] for k in PER_EPOCH}
        assert rows.setdefault(row["epoch"], same) == same
    return rows


@pytest.fixture(scope="module")
def reference(local_cluster: LocalCluster) -> tuple[Path, subprocess.CompletedProcess]:  # noqa: F811
    """One uninterrupted 2-worker job, submitted with README's command."""
    local_cluster.ensure_workers()
    output = local_cluster.shared / "reference"
    job = local_cluster.ray(*submit_args(job_config(local_cluster), output))
    return run_dir(output), job


def test_job_submit_runs_one_worker_per_node_on_nodes_without_distgru(reference) -> None:
    path, job = reference
    result = read_result(path)
    assert (path / "result.json").is_file() and result.epochs == RUN["train"]["n_epochs"]
    assert result.restarts == 0
    # one rank on each worker node (the head has no CPUs)
    assert sorted(d.rsplit("/", 1)[1] for d in result.provenance.devices) == ["127.0.0.2", "127.0.0.3"]
    # the uploaded copy has no .git: the source digest names the code, and it is this checkout's
    assert result.provenance.git_commit is None
    assert result.provenance.source_sha256 == source_digest()
    # ``python -m distgru train``: sys.argv[0] is the uploaded package's __main__.py
    assert "distgru/__main__.py train " in result.provenance.command


def test_node_local_storage_is_refused_before_training(local_cluster: LocalCluster) -> None:  # noqa: F811
    local_cluster.ensure_workers()
    output = local_cluster.local / "runs"
    job = local_cluster.ray(*submit_args(job_config(local_cluster), output), check=False)
    logs = job.stdout + job.stderr
    assert job.returncode != 0, logs[-3000:]
    assert "output_dir:" in logs and "is not shared" in logs and "127.0.0.3" in logs, logs[-3000:]
    assert "/mnt/cluster_storage" in logs  # the fix is named
    assert not output.exists() or not any(p.is_dir() for p in output.iterdir())  # no run directory was made


def _submit_and_kill(cluster: LocalCluster, output: Path, node: str, **resources: object) -> tuple[int, str]:
    """Submit a job, remove ``node`` once the run has reported its first epoch, return the job's exit and logs."""
    job = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts",
                            *submit_args(job_config(cluster, **resources), output)],
                           env=cluster.client_env,
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not list(output.glob("*/metrics.jsonl")) or not list(output.glob("*/metrics.jsonl"))[0].read_text():
        assert job.poll() is None, f"the job ended before its first epoch:\n{job.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, "no epoch within 300 s"
        time.sleep(0.2)
    cluster.kill(cluster.workers[node])
    logs, _ = job.communicate(timeout=600)
    return job.returncode, logs


def test_lost_node_resumes_to_the_same_metrics(local_cluster: LocalCluster, reference) -> None:  # noqa: F811
    local_cluster.ensure_workers()
    output = local_cluster.shared / "node_lost"
    code, logs = _submit_and_kill(local_cluster, output, "b", max_failures=1)
    assert code == 0, logs[-4000:]
    path, ref = run_dir(output), reference[0]
    result, expected = read_result(path), read_result(ref)
    rows = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert max(r["attempt"] for r in rows) == 1, "the group did not restart"
    # what is left is node a: both ranks restarted there
    assert {d.rsplit("/", 1)[1] for d in result.provenance.devices} == {"127.0.0.2"}
    assert epochs(path) == epochs(ref)
    assert (result.best_epoch, result.epochs, result.test, result.valid) == \
        (expected.best_epoch, expected.epochs, expected.test, expected.valid)


def test_lost_node_without_max_failures_fails_naming_the_setting(local_cluster: LocalCluster) -> None:  # noqa: F811
    if not any(n.alive for n in local_cluster.workers.values()):
        local_cluster.ensure_workers()
    alive = next(name for name, n in local_cluster.workers.items() if n.alive)
    output = local_cluster.shared / "node_lost_fatal"
    code, logs = _submit_and_kill(local_cluster, output, alive, max_failures=0)
    assert code != 0
    assert "resources.max_failures" in logs and "--set resources.max_failures=" in logs, logs[-4000:]
    status = json.loads((run_dir(output) / "status.json").read_text())
    assert status["state"] == "failed" and "resources.max_failures" in status["message"]
    assert "--resume" in status["resume"]
