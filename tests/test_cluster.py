"""The cluster files are valid and consistent: the launcher YAML against Ray's own schema, the KubeRay RayJob and
RayCluster against the vendored KubeRay CRDs (strictly: unknown fields fail, as ``kubectl apply`` does), and the
rules distgru depends on (``python -m distgru`` entrypoints, shared storage, declared GPU worker resources, no torch
from a runtime env, ``max_failures`` on spot)."""

from __future__ import annotations

import functools
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from distgru.training.capacity import autoscaler_ceiling

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
SHARED = "/mnt/cluster_storage"
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(name: str) -> dict:
    return yaml.load((CLUSTER / name).read_text(), Loader=Loader)


@functools.cache
def crd_schema(crd_file: str, api_version: str, kind: str) -> dict:
    crd = load(f"crds/{crd_file}")
    group, version = api_version.split("/")
    assert (group, kind) == (crd["spec"]["group"], crd["spec"]["names"]["kind"])
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    schema = strict(served["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = {"type": "object"}  # ObjectMeta is validated by the API server itself
    return schema


def strict(schema: object) -> object:
    """A CRD's structural schema with unknown fields rejected (kubectl's strict field validation)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if ("properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def crd_validate(doc: dict, crd_file: str) -> None:
    jsonschema.validate(doc, crd_schema(crd_file, doc["apiVersion"], doc["kind"]), cls=jsonschema.Draft7Validator)


def gpu_group(spec: dict) -> dict:
    (group,) = spec["workerGroupSpecs"]
    return group


def entrypoints() -> list[tuple[str, str]]:
    """Every ``distgru`` command line in the cluster files, cluster/README.md and the README (where, command)."""
    found = [("cluster/rayjob.yaml spec.entrypoint", load("rayjob.yaml")["spec"]["entrypoint"])]
    for path in [*sorted(CLUSTER.glob("*.yaml")), CLUSTER / "README.md", ROOT / "README.md"]:
        text = re.sub(r"\\\n\s*#?\s*", " ", path.read_text())  # join continued lines, in comments too
        for cmd in re.findall(r"ray job submit[^\n`]*?--\s+([^\n`]+)", text):
            found.append((path.relative_to(ROOT).as_posix(), cmd.strip()))
    return found


# --- schemas ---------------------------------------------------------------------------------------------------

def test_cluster_launcher_yaml_matches_ray_schema() -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(load("aws-gpu.yaml"), schema)


@pytest.mark.parametrize(("name", "crd"), [("rayjob.yaml", "ray.io_rayjobs.yaml"),
                                            ("raycluster.yaml", "ray.io_rayclusters.yaml")])
def test_kuberay_manifests_match_the_crds(name: str, crd: str) -> None:
    crd_validate(load(name), crd)


def test_crd_validation_can_fail() -> None:
    job = load("rayjob.yaml")
    gpu_group(job["spec"]["rayClusterSpec"])["replica"] = 4  # a typo kubectl rejects
    with pytest.raises(jsonschema.ValidationError, match="replica"):
        crd_validate(job, "ray.io_rayjobs.yaml")
    job = load("rayjob.yaml")
    job["spec"]["shutdownAfterJobFinishes"] = "yes"
    with pytest.raises(jsonschema.ValidationError):
        crd_validate(job, "ray.io_rayjobs.yaml")


def test_crds_are_vendored_with_their_version() -> None:
    readme = (CLUSTER / "crds" / "README.md").read_text()
    assert re.search(r"KubeRay v\d+\.\d+\.\d+", readme) and "ray-operator/config/crd/bases" in readme


# --- what distgru needs from a cluster -------------------------------------------------------------------------

def test_every_entrypoint_runs_python_m_distgru_on_the_shared_mount() -> None:
    cmds = entrypoints()
    assert {where for where, _ in cmds} >= {"cluster/rayjob.yaml spec.entrypoint", "cluster/raycluster.yaml",
                                            "cluster/aws-gpu.yaml", "cluster/README.md", "README.md"}
    for where, cmd in cmds:
        argv = shlex.split(cmd)
        assert argv[:3] == ["python", "-m", "distgru"], (where, cmd)
        if argv[3] in ("train", "tune") and "--resume" not in argv:
            assert "--output" in argv and argv[argv.index("--output") + 1].startswith(SHARED + "/"), (where, cmd)
            paths = [a.split("=", 1)[1] for a in argv if a.startswith(("data.provider=", "data.cache_dir="))]
            assert all(p.startswith(SHARED + "/") for p in paths), (where, cmd)


def test_launcher_mounts_shared_storage_and_installs_no_torch_from_pypi() -> None:
    cfg = load("aws-gpu.yaml")
    host = " ".join(cfg["initialization_commands"])
    assert "mount -t nfs4" in host and SHARED in host
    assert f"-v {SHARED}:{SHARED}" in cfg["docker"]["run_options"]
    for cmd in cfg["setup_commands"]:
        if re.search(r"pip install[^|;&]*\btorch\b", cmd):
            assert "--index-url https://download.pytorch.org/" in cmd, cmd
    assert any("pip install" in c and "/home/ray/distgru" in c for c in cfg["setup_commands"])


def test_gpu_worker_declares_resources_so_preflight_knows_the_ceiling(tmp_path: Path) -> None:
    cfg = load("aws-gpu.yaml")
    head, gpu = cfg["available_node_types"]["head"], cfg["available_node_types"]["gpu_worker"]
    assert gpu["node_config"]["InstanceType"] == "g5.2xlarge" and gpu["resources"] == {"CPU": 8, "GPU": 1}
    assert head["resources"] == {"CPU": 0}
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    bootstrap.write_text((CLUSTER / "aws-gpu.yaml").read_text())
    assert autoscaler_ceiling(bootstrap) == {"CPU": 64.0, "GPU": 8.0}


def test_kuberay_gpu_pods_match_the_launcher_node_shape() -> None:
    shape = load("aws-gpu.yaml")["available_node_types"]["gpu_worker"]["resources"]
    for spec in (load("rayjob.yaml")["spec"]["rayClusterSpec"], load("raycluster.yaml")["spec"]):
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        group = gpu_group(spec)
        (worker,) = group["template"]["spec"]["containers"]
        limits = worker["resources"]["limits"]
        assert (int(limits["cpu"]), int(limits["nvidia.com/gpu"])) == (shape["CPU"], shape["GPU"])
        assert group["rayStartParams"] == {"num-cpus": str(shape["CPU"]), "num-gpus": str(shape["GPU"])}
        assert spec["authOptions"]["mode"] == "token"


def test_kuberay_storage_is_a_read_write_many_claim_on_every_pod() -> None:
    pvc = load("pvc.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for spec in (load("rayjob.yaml")["spec"]["rayClusterSpec"], load("raycluster.yaml")["spec"]):
        for template in [spec["headGroupSpec"]["template"], gpu_group(spec)["template"]]:
            claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                      for v in template["spec"]["volumes"] if "persistentVolumeClaim" in v}
            mounts = {m["mountPath"]: m["name"] for c in template["spec"]["containers"] for m in c["volumeMounts"]}
            assert claims.get(mounts.get(SHARED)) == pvc["metadata"]["name"]


def torch_free(env: dict) -> None:
    assert set(env) <= {"pip", "uv", "env_vars", "excludes", "working_dir", "py_modules", "config"}
    pip = env.get("pip") or env.get("uv") or []
    packages = pip.get("packages", []) if isinstance(pip, dict) else pip
    assert not [p for p in packages if re.match(r"torch\b", str(p).strip(), re.IGNORECASE)], packages


def test_no_runtime_env_installs_torch() -> None:
    env = load("runtime_env.yaml")
    torch_free(env)
    assert "pip" not in env  # no per-node virtualenv: the nodes have distgru's dependencies
    job_env = yaml.safe_load(load("rayjob.yaml")["spec"]["runtimeEnvYAML"])
    torch_free(job_env)
    assert job_env["env_vars"] == env["env_vars"]
    with pytest.raises(AssertionError):
        torch_free({"pip": {"packages": ["numba", "torch==2.6"]}})


def test_spot_workers_come_with_max_failures() -> None:
    cfg = load("aws-gpu.yaml")
    assert cfg["available_node_types"]["gpu_worker"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    for where, cmd in entrypoints():
        argv = shlex.split(cmd)
        if argv[3] in ("train", "tune") and "--resume" not in argv:
            failures = [int(a.split("=", 1)[1]) for a in argv if a.startswith("resources.max_failures=")]
            assert failures and failures[0] >= 1, (where, cmd)


def test_every_job_submission_is_the_one_the_cluster_tests_run() -> None:
    from tests.test_cluster_live import readme_entrypoint

    tested = readme_entrypoint()  # what tests/test_cluster_live.py submits, up to `python -m distgru train`
    options = tested[2:tested.index("python")]
    found = 0
    for path in (CLUSTER / "README.md", ROOT / "README.md"):
        text = re.sub(r"\\\n\s*", " ", path.read_text())
        for opts in re.findall(r"ray job submit ([^\n`]*?)python -m distgru", text):
            assert [a for a in shlex.split(opts) if a != "--no-wait"] == options, (path.name, opts)
            found += 1
    assert found >= 4
