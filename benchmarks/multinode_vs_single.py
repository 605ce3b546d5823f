"""A caption job on a three-node Ray cluster against the same job on one Ray node with the same CPUs (issue 14).

Run (as root: the clusters run in a private network namespace that holds only loopback, as in tests/cluster/):
    python -m benchmarks.multinode_vs_single                 (128 images, 2 repeats, about 10 minutes on 2 cores)
    python -m benchmarks.multinode_vs_single --images 64 --repeats 1

- multi-node: a CPU head of 1 CPU and two workers of 1 CPU and 1 advertised GPU each; the two replicas land on
  the workers (and run on CPU: torch sees no CUDA).
- one node: one Ray node of 3 CPUs; the two replicas on CPU (`--gpus-per-replica 0`).
Both join their cluster with `--address` (Ray's start-up is outside the timing), run the tiny random-weight
LLaVA-1.5 (built here) with 1 preprocessing worker, 2 replicas, `--batch-size 4 --max-new-tokens 12`, over the
same local PNG folder (the nodes share this machine's disk) into a fresh output. The runs alternate, and
images/s is each run's own figure from its `_manifest.json`. On one machine the nodes share its cores, so this
measures what spreading over nodes costs (object transfers between raylets, scheduling over three nodes), not
what more machines would add.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common.inputs import write_png_folder
from tests.support.loopback_cluster import LoopbackCluster, in_loopback_only_namespace

ROOT = Path(__file__).resolve().parent.parent


def caption(cluster: LoopbackCluster, model: Path, images: Path, out: Path, gpus_per_replica: int) -> dict:
    command = [
        str(Path(sys.executable).parent / "llava-batch"), "caption",
        "--address", cluster.address, "--model", str(model),
        "--input", str(images), "--output", str(out),
        "--replicas", "2", "--gpus-per-replica", str(gpus_per_replica), "--preprocess-workers", "1",
        "--files-per-shard", "16", "--batch-size", "4", "--max-new-tokens", "12", "--dtype", "float32",
    ]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(command, env=cluster.process_env(), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"caption failed ({result.returncode}):\n{(result.stdout + result.stderr)[-4000:]}")
    manifest = json.loads((out / "_manifest.json").read_text())
    return {
        "images_per_s": manifest["images_per_s"],
        "rows": manifest["counts"]["rows_written"],
        "wall_s": round(time.monotonic() - started, 1),
    }


def start(kind: str) -> LoopbackCluster:
    cluster = LoopbackCluster(head_cpus=1 if kind == "multi-node" else 3)
    cluster.start()
    if kind == "multi-node":
        cluster.add_worker(num_cpus=1, num_gpus=1)
        cluster.add_worker(num_cpus=1, num_gpus=1)
    return cluster


def measure(args: argparse.Namespace) -> dict:
    from llava_batch.pipeline.families.tiny_models import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="multinode-bench-"))
    model = build_tiny_model("llava", work / "model", seed=0)
    images = work / "images"
    write_png_folder(images, args.images, distinct=True)
    runs: dict[str, list[dict]] = {"multi-node": [], "one node": []}
    for repeat in range(args.repeats):
        for kind in runs:
            cluster = start(kind)
            try:
                run = caption(
                    cluster,
                    model,
                    images,
                    work / f"out-{kind.replace(' ', '-')}-{repeat}",
                    1 if kind == "multi-node" else 0,
                )
            finally:
                cluster.stop()
            runs[kind].append(run)
            print(f"repeat {repeat + 1}: {kind:10} {run}", flush=True)
    ratios = [m["images_per_s"] / o["images_per_s"] for m, o in zip(runs["multi-node"], runs["one node"])]
    summary = {
        "images": args.images,
        "runs": runs,
        "multi_over_one_node": [round(ratio, 3) for ratio in ratios],
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(summary, indent=2))
    print(
        "SUMMARY multinode_vs_single: images/s multi-node / one node = "
        + ", ".join(f"x{ratio:.2f}" for ratio in ratios)
        + f" ({args.images} images, 2 replicas, same 3 logical CPUs on {os.cpu_count()} cores)"
    )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if in_loopback_only_namespace() is None:
        measure(args)
        return
    if args.inside:
        raise SystemExit(f"not in a loopback-only network namespace: {in_loopback_only_namespace()}")
    # Re-run this script inside a fresh network namespace that holds only loopback (needs root).
    inner = [sys.executable, "-m", "benchmarks.multinode_vs_single", *sys.argv[1:], "--inside"]
    result = subprocess.run(
        ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *inner],
        cwd=ROOT,
        check=False,
    )
    raise SystemExit(result.returncode)


if __name__ == "__main__":
    main()
