"""The cluster files are valid: the launcher YAML against Ray's own schema, the others as YAML with the keys used."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def test_cluster_launcher_yaml_matches_ray_schema() -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text()), schema)


def test_rayjob_and_runtime_env_are_well_formed() -> None:
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["spec"]["entrypoint"].startswith("distgru train")
    env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    assert set(env) <= {"pip", "env_vars", "excludes", "working_dir", "py_modules"}
