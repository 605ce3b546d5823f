"""cluster.yaml is a valid Ray cluster-launcher config: Ray's own schema, a CPU head, GPU workers, no secrets."""

from __future__ import annotations

import copy
import importlib.resources
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO_ROOT / "cluster.yaml"

SECRET_PATTERNS = [
    r"aws_access_key_id",
    r"aws_secret_access_key",
    r"aws_session_token",
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
    r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])",  # the shape of an AWS secret key
    r"ssh_private_key",
    r"(?i)password|hf_[A-Za-z0-9]{20,}",
]


def ray_cluster_schema() -> dict[str, Any]:
    """The JSON schema `ray up` validates configs against, from the installed ray package."""
    return json.loads((importlib.resources.files("ray") / "autoscaler" / "ray-schema.json").read_text())


def schema_errors(config: Any) -> list[str]:
    validator = jsonschema.Draft7Validator(ray_cluster_schema())
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<top>'}: {error.message}"
        for error in validator.iter_errors(config)
    ]


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_matches_rays_schema(config: dict[str, Any]) -> None:
    assert schema_errors(config) == []


def test_ray_accepts_it_after_filling_in_its_defaults(config: dict[str, Any]) -> None:
    # What `ray up` does before it talks to AWS: merge the provider defaults, then validate.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert "docker" not in config, "the nodes run without docker"


def test_a_broken_copy_fails_validation(config: dict[str, Any]) -> None:
    misspelled = copy.deepcopy(config)
    misspelled["avaliable_node_types"] = misspelled.pop("available_node_types")
    assert any("avaliable_node_types" in error for error in schema_errors(misspelled))
    with pytest.raises(jsonschema.ValidationError, match="avaliable_node_types"):
        jsonschema.validate(misspelled, ray_cluster_schema())

    fractional_gpu = copy.deepcopy(config)
    worker = next(name for name in fractional_gpu["available_node_types"] if name != config["head_node_type"])
    fractional_gpu["available_node_types"][worker]["resources"]["GPU"] = 0.5
    assert any(
        f"available_node_types/{worker}/resources/GPU" in error for error in schema_errors(fractional_gpu)
    )

    no_provider = {key: value for key, value in config.items() if key != "provider"}
    assert any("'provider' is a required property" in error for error in schema_errors(no_provider))


def test_head_has_no_gpus_and_workers_have_gpus_from_zero(config: dict[str, Any]) -> None:
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    assert head["resources"].get("CPU", 0) > 0

    workers = {name: spec for name, spec in node_types.items() if name != config["head_node_type"]}
    gpu_workers = {name: spec for name, spec in workers.items() if spec["resources"].get("GPU", 0) >= 1}
    assert gpu_workers, "no worker type offers GPUs"
    assert any(spec["resources"]["GPU"] >= 4 for spec in gpu_workers.values()), "no type fits a 4-GPU replica"
    for name, spec in gpu_workers.items():
        assert spec.get("min_workers", 0) == 0, f"{name} should scale from zero"
        assert spec["max_workers"] >= 1, name
    assert sum(spec["max_workers"] for spec in workers.values()) <= config["max_workers"]


def test_header_says_how_to_launch_and_maps_worker_types_to_gpus_per_replica(config: dict[str, Any]) -> None:
    text = CLUSTER_YAML.read_text()
    header = text[: text.index("cluster_name:")]
    assert header.startswith("# Launch")
    assert "ray up cluster.yaml" in header
    for name, spec in config["available_node_types"].items():
        if spec["resources"].get("GPU", 0) >= 1:
            lines = [line for line in header.splitlines() if name in line]
            assert lines, f"the header does not mention worker type {name}"
            assert "--gpus-per-replica" in lines[0], f"the header does not map {name} to --gpus-per-replica"


def test_nodes_install_this_project_from_the_mounted_working_tree(config: dict[str, Any]) -> None:
    (remote, local), *_ = config["file_mounts"].items()
    # `ray up` resolves local paths against the directory it runs in: the repository root.
    assert (REPO_ROOT / local / "pyproject.toml").is_file()
    assert any(
        re.search(rf"pip install -e {re.escape(remote)}(\s|$)", command)
        for command in config["setup_commands"]
    )
    assert ".venv" in config["rsync_exclude"] and ".git" in config["rsync_exclude"]


def test_no_credentials_in_the_file() -> None:
    text = CLUSTER_YAML.read_text()
    for pattern in SECRET_PATTERNS:
        assert not re.search(pattern, text), f"cluster.yaml matches the secret pattern {pattern!r}"


def test_the_secret_check_would_catch_a_key() -> None:
    planted = (
        "provider:\n  aws_access_key_id: AKIAABCDEFGHIJKLMNOP\n  secret: "
        + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
        + "\n"
    )
    assert sum(bool(re.search(pattern, planted)) for pattern in SECRET_PATTERNS) == 3


def test_the_autoscaling_test_config_has_cluster_yamls_node_types(config: dict[str, Any]) -> None:
    """tests/cluster/test_autoscaling.py runs the real autoscaler over tests/cluster/fake_multinode.yaml: it proves
    something about cluster.yaml only while the two have the same node types (CPUs aside, scaled to 2 cores)."""
    fake = yaml.safe_load((REPO_ROOT / "tests" / "cluster" / "fake_multinode.yaml").read_text())

    def worker_types(cluster: dict[str, Any]) -> dict[str, tuple]:
        return {
            name: (spec["resources"].get("GPU", 0), spec.get("min_workers", 0), spec.get("max_workers"))
            for name, spec in cluster["available_node_types"].items()
            if name != cluster["head_node_type"]
        }

    assert worker_types(fake) == worker_types(config)
    assert all(gpus > 0 and min_workers == 0 for gpus, min_workers, _ in worker_types(config).values())
    for cluster in (fake, config):
        assert cluster["available_node_types"][cluster["head_node_type"]]["resources"].get("GPU") == 0
    assert fake["max_workers"] == config["max_workers"]
    assert fake["upscaling_speed"] == config["upscaling_speed"]
    assert fake["provider"]["type"] == "fake_multinode"
    assert schema_errors(fake) == []
