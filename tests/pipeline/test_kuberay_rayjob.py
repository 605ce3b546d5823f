"""deploy/kuberay-rayjob.yaml: a RayJob whose entrypoint is a valid `llava-batch` command over S3, GPU workers,
credentials from a secret only."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from llava_batch.cli.main import build_parser, config_overrides
from llava_batch.jobs import JOBS
from llava_batch.pipeline.config import load_config
from tests.pipeline.test_cluster_yaml import SECRET_PATTERNS

RAYJOB = Path(__file__).resolve().parents[2] / "deploy" / "kuberay-rayjob.yaml"


def load() -> dict:
    return yaml.safe_load(RAYJOB.read_text())


def test_it_is_a_rayjob_with_a_cpu_head_and_gpu_workers():
    job = load()
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    (workers,) = cluster["workerGroupSpecs"]
    (container,) = workers["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] == container["image"] == "my-registry/llava-batch:0.1.0"


def test_the_entrypoint_parses_with_the_cli_and_its_settings_are_valid():
    argv = shlex.split(load()["spec"]["entrypoint"])
    assert argv[:2] == ["llava-batch", "caption"]
    args = build_parser().parse_args(argv[1:])
    config_class = JOBS["caption"].config_class
    config = load_config(config_class, args.config, config_overrides(args, config_class))
    assert config.input.startswith("s3://") and config.output.startswith("s3://")
    assert config.gpus_per_replica == 1
    assert (config.replicas.min, config.replicas.max) == (1, 4)
    assert config.address is None  # the job joins through the RAY_ADDRESS that Ray sets for it
    # Replicas fit the worker group: one GPU each, at most one per worker.
    assert config.replicas.max <= load()["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplicas"]


def test_credentials_come_from_a_secret_on_every_pod_and_none_are_written_in_the_file():
    import re

    cluster = load()["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for pod in pods:
        env = {item["name"]: item for item in pod["template"]["spec"]["containers"][0]["env"]}
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "llava-batch-s3", "key": name}
            assert "value" not in env[name]
    text = "\n".join(line for line in RAYJOB.read_text().splitlines() if not line.lstrip().startswith("#"))
    for pattern in SECRET_PATTERNS:
        assert not re.search(pattern, text), pattern
