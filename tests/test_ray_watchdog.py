"""A driver killed with SIGKILL leaves no process of the local Ray it started (ray_session's watchdog)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from distgru.training.ray_watchdog import start_time, tree

DRIVER = textwrap.dedent("""
    import time
    import ray  # imported first, as a user's script may: Ray's auth mode is cached from here on
    from distgru.config import ResourcesConfig
    from distgru.training.ray_train import ray_session

    with ray_session(ResourcesConfig()):
        print("READY", flush=True)
        time.sleep(300)
""")


@pytest.mark.ray
def test_sigkill_of_the_driver_leaves_no_ray_process(tmp_path) -> None:
    """Also: the local Ray starts quietly (no token-authentication notice) and with token auth on."""
    err = tmp_path / "stderr.txt"
    with open(err, "w") as stderr:
        driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        assert driver.stdout is not None and driver.stdout.readline().strip() == "READY", err.read_text()[-2000:]
        assert "Token authentication is" not in err.read_text()
        time.sleep(2)  # the agents start a moment after ray.init returns
        ray_procs = tree(driver.pid)
        names = {comm(pid) for pid in ray_procs}
        assert {"raylet", "gcs_server"} <= names, names
    finally:
        driver.kill()
        driver.wait()
    deadline = time.monotonic() + 30
    alive = ray_procs
    while alive and time.monotonic() < deadline:
        time.sleep(1)
        alive = {pid: t for pid, t in alive.items() if start_time(pid) == t}
    assert not alive, {pid: comm(pid) for pid in alive}


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def test_a_run_left_running_by_a_dead_driver_is_marked_failed_with_the_resume_command(tmp_path) -> None:
    from distgru.training.resume import mark_lost
    from distgru.training.rundir import RunDir

    run = RunDir(tmp_path)
    run.write_status("running", kind="train", resume="x", pid=4242)
    assert mark_lost(tmp_path, "train", driver=99) is None  # another driver's run is left alone
    message = mark_lost(tmp_path, "train", driver=4242)
    assert message is not None and f"resume with: distgru train --resume {tmp_path}" in message
    assert "no epoch completed yet" in message
    assert run.read_status()["state"] == "failed"
    assert mark_lost(tmp_path, "train", driver=4242) is None  # said once
