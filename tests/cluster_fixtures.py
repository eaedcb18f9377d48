"""A real multi-node Ray cluster on loopback for the ``cluster`` tests: a head and two worker nodes, each a
``ray start --block`` process of its own (own ``--temp-dir``, node IP 127.0.0.x, non-default ports), stopped by
killing the process groups this module started (never ``ray stop``: it ends every Ray on the machine).

The nodes run a Python that has torch and Ray but not distgru, as a stock Ray image has: jobs get the code only from
``ray job submit --working-dir .``. Node ``b`` lives in a mount namespace of its own where ``<base>/local`` is a
private tmpfs: a folder every node has, but whose content node ``b`` does not share (node-local storage), while
``<base>/shared`` is the same folder everywhere (shared storage). Token authentication is on, with a token of the
cluster's own, as cluster/README.md sets it up.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CPUS_PER_WORKER_NODE = 2
START_TIMEOUT_S = 180.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python_without_distgru(dest: Path) -> Path:
    """A venv that sees this environment's packages (its site-packages as a plain path, so their ``.pth`` files,
    distgru's editable-install hook among them, are not run) but cannot import distgru."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(dest)], check=True)
    (view_site,) = (dest / "lib").glob("python*/site-packages")
    (view_site / "_packages_of_the_test_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    python = dest / "bin" / "python"
    probe = subprocess.run([python, "-c", "import importlib.util as u, ray, torch, numba; "
                            "print(u.find_spec('distgru') is None)"], cwd=dest, capture_output=True, text=True)
    assert probe.stdout.strip() == "True", f"the nodes' Python must lack distgru and have Ray: {probe}"
    return python


class NodeExited(RuntimeError):
    """A ``ray start`` process ended while the cluster waited for its node."""


@dataclass
class Node:
    name: str
    ip: str
    temp: Path
    """Its ``--temp-dir`` (logs under ``session_*/logs``)."""
    args: list[str]
    private_tmpfs: Path | None = None
    proc: subprocess.Popen | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class LocalCluster:
    base: Path
    python: Path
    env: dict[str, str]
    head: Node
    workers: dict[str, Node] = field(default_factory=dict)
    dashboard: str = ""

    @property
    def client_env(self) -> dict[str, str]:
        """A client machine's environment: the cluster's token and address, and this test environment's PATH,
        where ``ray`` and distgru are installed."""
        return {**self.env, "RAY_ADDRESS": self.dashboard, "PATH": os.environ["PATH"]}

    @property
    def shared(self) -> Path:
        return self.base / "shared"

    @property
    def local(self) -> Path:
        return self.base / "local"

    def start(self, node: Node) -> None:
        # Ahead of other work on the machine: a raylet waits 15 s (not configurable in Ray 2.60) for its dashboard
        # agent's ports and aborts when a busy machine imports the agent slower than that.
        cmd = ["nice", "-n", "-10", str(self.python), "-m", "ray.scripts.scripts", "start", "--block", *node.args]
        if node.private_tmpfs is not None:
            # Its own mount namespace: the tmpfs over this folder exists for this node's processes only.
            cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   f'mount -t tmpfs tmpfs "{node.private_tmpfs}" && exec "$@"', "node", *cmd]
        log = open(self.base / f"{node.name}.log", "ab")  # noqa: SIM115 (kept open for the process's life)
        node.proc = subprocess.Popen(cmd, env=self.env, cwd=self.base, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def kill(self, node: Node) -> None:
        """The node vanishes: its whole process group (``ray start``, raylet, agents, workers) is SIGKILLed."""
        if node.proc is not None and node.proc.poll() is None:
            os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait()

    def stop(self) -> None:
        for node in [*self.workers.values(), self.head]:
            if node.proc is not None and node.proc.poll() is None:
                os.killpg(node.proc.pid, signal.SIGTERM)  # ray start --block then ends its own processes
        for node in [*self.workers.values(), self.head]:
            if node.proc is None:
                continue
            try:
                node.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(node.proc.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):  # any of the group left behind (an unreaped worker)
                os.killpg(node.proc.pid, signal.SIGKILL)

    def ensure_workers(self) -> None:
        """Start each worker node that is not running and wait until it is in the cluster."""
        for node in self.workers.values():
            if not node.alive:
                self.bring_up(node)

    def bring_up(self, node: Node) -> None:
        """Start ``node`` and wait for it, one node at a time (a loaded 2-core machine times out a node that
        registers while another is starting), up to three times: a raylet aborts when its dashboard agent takes
        longer than 15 s to start (a fixed wait in Ray 2.60), which a busy machine sometimes makes it."""
        for attempt in (1, 2, 3):
            self.start(node)
            try:
                self.wait_nodes(self.expected())
                return
            except NodeExited:
                with contextlib.suppress(ProcessLookupError):  # what the failed start left (its GCS, agents)
                    os.killpg(node.proc.pid, signal.SIGKILL)
                if attempt == 3:
                    raise

    def why(self, node: Node) -> str:
        """The ``ray start`` output's end and the raylet's fatal lines, for a node that did not come up."""
        fatal = [line[:400] for path in sorted(node.temp.glob("session_*/logs/raylet*.out"))
                 for line in path.read_text(errors="replace").splitlines() if "] (raylet)" in line and " C " in line]
        return (self.base / f"{node.name}.log").read_text(errors="replace")[-1500:] + "\n" + "\n".join(fatal[-5:])

    def expected(self) -> int:
        return sum(1 for n in [self.head, *self.workers.values()] if n.alive)

    def wait_nodes(self, n: int) -> None:
        import json
        import urllib.request

        deadline = time.monotonic() + START_TIMEOUT_S
        request = urllib.request.Request(f"{self.dashboard}/nodes?view=summary",
                                         headers={"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"})
        while True:
            for node in [self.head, *self.workers.values()]:
                if node.proc is not None and node.proc.poll() is not None and node.proc.returncode != -9:
                    raise NodeExited(f"Ray node {node.name} exited:\n{self.why(node)}")
            try:
                with urllib.request.urlopen(request, timeout=5) as r:
                    summary = json.load(r)["data"]["summary"]
                alive = sum(1 for s in summary if s["raylet"]["state"] == "ALIVE")
                if alive >= n:
                    return
            except (OSError, KeyError, ValueError):
                pass
            assert time.monotonic() < deadline, f"{n} Ray nodes not up after {START_TIMEOUT_S:.0f} s"
            time.sleep(1)

    def ray(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """The ``ray`` CLI as a user on a client machine runs it (this test's environment, the cluster's token)."""
        out = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], env=self.client_env, cwd=REPO,
                             capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            pytest.fail(f"ray {' '.join(args)} exited {out.returncode}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
        return out


def _node_args(ip: str, head_port: int | None, cpus: int, temp: Path, first_worker_port: int) -> list[str]:
    ports = {"--node-manager-port": _free_port(), "--object-manager-port": _free_port(),
             "--metrics-export-port": _free_port(), "--runtime-env-agent-port": _free_port(),
             "--dashboard-agent-listen-port": _free_port(), "--dashboard-agent-grpc-port": _free_port()}
    args = ["--node-ip-address", ip, "--num-cpus", str(cpus), "--temp-dir", str(temp), "--disable-usage-stats",
            "--object-store-memory", str(300 * 2**20), "--min-worker-port", str(first_worker_port),
            "--max-worker-port", str(first_worker_port + 199), *[str(x) for kv in ports.items() for x in kv]]
    if head_port is None:
        return args
    return [*args, "--address", f"127.0.0.1:{head_port}"]


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.fail("the cluster tests need root and unshare(1) (a private mount namespace for node b)")
    # Short paths: Ray's Unix sockets live under --temp-dir and a socket path must fit in 107 bytes.
    base = Path(tempfile.mkdtemp(prefix="dgc", dir="/tmp"))
    for d in ("shared", "local", "h", "a", "b", "py"):
        (base / d).mkdir()
    python = python_without_distgru(base / "py")
    token = secrets.token_hex(32)
    path = os.pathsep.join([str(python.parent), *[p for p in os.environ["PATH"].split(os.pathsep)
                                                  if Path(p).resolve() != Path(sys.executable).parent.resolve()]])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTHON", "VIRTUAL_ENV"))}
    # A killed node is declared dead after ~5 s instead of Ray's default ~15 s (its checks then fail at once;
    # a slow but living raylet still gets 5 s an answer).
    env.update(PATH=path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5",
               RAY_health_check_period_ms="1000", RAY_health_check_timeout_ms="5000",
               RAY_health_check_failure_threshold="5")
    gcs_port, dash_port = _free_port(), _free_port()
    # Worker port ranges (3 × 200) below Linux's ephemeral range (32768+), where _free_port's ports come from.
    first = 12000 + secrets.randbelow(30) * 600
    head = Node("head", "127.0.0.1", base / "h", ["--head", "--port", str(gcs_port), "--include-dashboard", "true",
                                      "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash_port),
                                      "--ray-client-server-port", str(_free_port()),
                                      *_node_args("127.0.0.1", None, 0, base / "h", first)])
    cluster = LocalCluster(base, python, env, head, dashboard=f"http://127.0.0.1:{dash_port}")
    for i, name in enumerate(("a", "b"), start=2):
        ip = f"127.0.0.{i}"
        args = _node_args(ip, gcs_port, CPUS_PER_WORKER_NODE, base / name, first + 200 * (i - 1))
        cluster.workers[name] = Node(name, ip, base / name, args, private_tmpfs=cluster.local if name == "b" else None)
    try:
        cluster.bring_up(head)
        cluster.ensure_workers()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
