"""Benchmark 2: the whole pipeline (Ray Data, S3 on SeaweedFS, Parquet) vs the same work in one process, no Ray.

Run: python -m benchmarks.pipeline_vs_single_process [--images 40] [--repeats 2] [--new-tokens 8]
     (about 6-7 minutes on 2 shared cores)

Both variants read the same 640x480 JPEGs from a SeaweedFS bucket on 127.0.0.1, caption them with the CPU-sized
random-weight LLaVA-1.5 of benchmarks/generation_vs_peers.py (134 M parameters, 540 MB of float32 safetensors,
built offline by benchmarks.common.models.build_checkpoint), greedy, at most `--new-tokens`, batches of 8, and write Parquet back to the bucket.
Each run is a fresh process:
  - pipeline: `llava-batch caption` (a private local Ray: read tasks, a preprocessing actor, a model replica actor,
    per-shard commits by the driver), default settings except `--files-per-shard 8`;
  - single process: the same operators called in a plain loop: read 8 objects, decode and preprocess them
    (PreprocessForModel), generate (Generate, 8 rows per call), write one Parquet file, next 8; torch runs one
    thread (OMP_NUM_THREADS=1), as Ray gives the pipeline's replica actor (num_cpus <= 1 -> one thread).
Steady state, excluding fixed start-up costs (process and Ray start, actor start-up, model load):
  - pipeline: images / (model replica busy + idle-waiting-for-input seconds), from its own per-batch accounting
    (the `model replicas` summary line, llava_batch.operators.generation.replica.ReplicaClock). Time before the model is loaded is not
    counted; time the replica then waits for its first batch and between batches is. With the replica the
    bottleneck and idle near 0, this is the rate at which rows leave the pipeline;
  - single process: images / (time from reading the first batch to writing the last file).
The variants are interleaved within each repeat (the machine is shared with other work); the ratio is the median of
per-repeat ratios. On a shared machine the speed of model.generate itself swings with the other work, so the report
also gives each variant's steady window over its time inside model.generate, and the ratio the variants would have
at equal generate speed. Wall times (with start-up) are printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parent.parent

from benchmarks.common.inputs import MAX_IMAGE_PIXELS, write_inputs  # noqa: E402
from benchmarks.common.models import build_checkpoint  # noqa: E402  (the CPU-sized LLaVA-1.5 builder)
from benchmarks.common.report import median  # noqa: E402
from llava_batch.operators.batch import object_array  # noqa: E402
from llava_batch.operators.generation.replica import Generate  # noqa: E402
from llava_batch.operators.preprocess import PreprocessForModel  # noqa: E402
from llava_batch.pipeline.config import GenerationSettings  # noqa: E402
from llava_batch.pipeline.io.storage import StorageOptions, list_files, read_bytes, write_parquet_atomically  # noqa: E402
from llava_batch.pipeline.run.columns import to_arrow  # noqa: E402
from llava_batch.pipeline.run.commit import to_output_table  # noqa: E402
from tests.support.seaweedfs import S3Endpoint, run_seaweedfs  # noqa: E402

PROMPT = "Describe this image."
BATCH = 8
ACCESS_KEY, SECRET_KEY = "llava-batch-bench", "llava-batch-bench-secret"
REPLICA_LINE = re.compile(r"model replicas\s+(\d+): busy ([\d.]+) s, idle waiting for input ([\d.]+) s")


@dataclass
class Run:
    variant: str
    images: int
    wall_s: float  # the whole process, start-up included
    steady_s: float  # the steady-state window (see the module docstring)
    texts: dict[str, str]
    replica_busy_s: float | None = None
    replica_idle_s: float | None = None
    breakdown: dict[str, float] | None = None  # single process: seconds by step

    @property
    def rate(self) -> float:
        return self.images / self.steady_s


def run_pipeline(
    endpoint: S3Endpoint, checkpoint: Path, input_uri: str, output_uri: str, new_tokens: int
) -> Run:
    command = [
        sys.executable,
        "-m",
        "llava_batch.cli.main",
        "caption",
        "--input",
        input_uri,
        "--output",
        output_uri,
    ]
    command += ["--model", str(checkpoint), "--prompt", PROMPT, "--max-new-tokens", str(new_tokens)]
    command += ["--batch-size", str(BATCH), "--files-per-shard", str(BATCH), "--dtype", "float32"]
    env = {**os.environ, **endpoint.env(), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"pipeline run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    replica = REPLICA_LINE.search(done.stdout)
    if replica is None:
        raise RuntimeError(f"no `model replicas` line in the summary:\n{done.stdout[-2000:]}")
    busy, idle = float(replica.group(2)), float(replica.group(3))
    texts = read_texts(endpoint, output_uri)
    manifest = json.loads(endpoint.fs().cat(output_uri.removeprefix("s3://").rstrip("/") + "/_manifest.json"))
    breakdown = {"generate_s": manifest["model_replicas"]["generate_s"]}
    return Run("pipeline", len(texts), seconds, busy + idle, texts, busy, idle, breakdown)


def run_single_process_child(
    endpoint: S3Endpoint, checkpoint: Path, input_uri: str, output_uri: str, new_tokens: int
) -> Run:
    command = [sys.executable, "-m", "benchmarks.pipeline_vs_single_process", "--single-process-run"]
    command += [str(checkpoint), input_uri, output_uri, str(new_tokens)]
    env = {**os.environ, **endpoint.env(), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"single-process run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    parts = json.loads(done.stdout.strip().splitlines()[-1])
    texts = read_texts(endpoint, output_uri)
    return Run("single", len(texts), seconds, parts.pop("steady_s"), texts, breakdown=parts)


def run_single_process(
    checkpoint: Path, input_uri: str, output_uri: str, new_tokens: int
) -> dict[str, float]:
    """Read, decode, preprocess, generate and write with the pipeline's operators, one batch after another;
    returns the seconds from the first read to the last write (model loading excluded) and where they went."""
    torch.set_num_threads(1)
    options = StorageOptions()
    preprocess = PreprocessForModel(str(checkpoint), max_image_pixels=MAX_IMAGE_PIXELS)
    generate = Generate(
        str(checkpoint),
        generate_kwargs=GenerationSettings(max_new_tokens=new_tokens).generate_kwargs(),
        dtype="float32",
        rows_per_call=BATCH,
    )
    names = list_files(input_uri, options, ("jpg",))
    seconds = {"read_s": 0.0, "preprocess_s": 0.0, "generate_call_s": 0.0, "generate_s": 0.0, "write_s": 0.0}
    started = time.perf_counter()
    for start in range(0, len(names), BATCH):
        t0 = time.perf_counter()
        chunk = names[start : start + BATCH]
        sources = [f"{input_uri.rstrip('/')}/{name}" for name in chunk]
        batch = {
            "id": object_array(chunk),
            "source": object_array(sources),
            "image_bytes": object_array([read_bytes(source, options) for source in sources]),
            "prompt": object_array([PROMPT] * len(chunk)),
            "shard_id": object_array([f"{start:06d}"] * len(chunk)),
        }
        t1 = time.perf_counter()
        prepared = preprocess(batch)
        t2 = time.perf_counter()
        generated = generate(prepared)
        t3 = time.perf_counter()
        table = to_output_table(to_arrow(generated))
        write_parquet_atomically(table, f"{output_uri.rstrip('/')}/part-{start:06d}.parquet", options)
        t4 = time.perf_counter()
        seconds["generate_s"] += json.loads(generated["_replica_stats"][0])["generate_s"]
        for name, value in zip(
            ("read_s", "preprocess_s", "generate_call_s", "write_s"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3)
        ):
            seconds[name] += value
    return {"steady_s": time.perf_counter() - started, **seconds, "torch_threads": torch.get_num_threads()}


def read_texts(endpoint: S3Endpoint, output_uri: str) -> dict[str, str]:
    fs = endpoint.fs()
    texts: dict[str, str] = {}
    for path in fs.glob(output_uri.removeprefix("s3://").rstrip("/") + "/part-*.parquet"):
        with fs.open(path, "rb") as handle:
            for row in pq.read_table(handle).to_pylist():
                texts[row["id"]] = row["generated_text"]
    return texts


def upload_inputs(
    endpoint: S3Endpoint, bucket: str, work: Path, counts: list[int], seed: int
) -> dict[int, str]:
    """One prefix per image count, holding the first `count` of the same images."""
    inputs = write_inputs(work / "images", max(counts), seed=seed)
    fs = endpoint.fs()
    uris = {}
    for count in counts:
        for index in range(count):
            fs.pipe(f"{bucket}/in-{count}/{inputs.ids[index]}.jpg", inputs.payloads[index])
        uris[count] = f"s3://{bucket}/in-{count}/"
    return uris


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--single-process-run", nargs=4, help=argparse.SUPPRESS)  # the child of one run
    args = parser.parse_args(argv)
    if args.images < 1 or args.repeats < 1:
        parser.error("--images and --repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.single_process_run:
        checkpoint, input_uri, output_uri, new_tokens = args.single_process_run
        print(json.dumps(run_single_process(Path(checkpoint), input_uri, output_uri, int(new_tokens))))
        return 0
    import ray
    import transformers

    print(
        f"pipeline_vs_single_process: {os.cpu_count()} CPUs, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, ray {ray.__version__}; {args.images} images, "
        f"{args.repeats} repeat(s), at most {args.new_tokens} new tokens, batch {BATCH}",
        flush=True,
    )
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llava-e2e-bench-") as work_dir:
        work = Path(work_dir)
        checkpoint, parameters = build_checkpoint(work / "model", args.seed)
        size_mb = sum(path.stat().st_size for path in checkpoint.glob("*.safetensors")) / 1e6
        print(f"model: {parameters / 1e6:.0f} M parameters, {size_mb:.0f} MB float32 safetensors", flush=True)
        with run_seaweedfs(work / "seaweedfs", access_key=ACCESS_KEY, secret_key=SECRET_KEY) as endpoint:
            bucket = "bench"
            endpoint.fs().mkdir(bucket)
            input_uri = upload_inputs(endpoint, bucket, work, [args.images], args.seed)[args.images]
            runs: dict[str, list[Run]] = {"pipeline": [], "single": []}
            for repeat in range(args.repeats):
                order = ("pipeline", "single") if repeat % 2 == 0 else ("single", "pipeline")
                for variant in order:
                    output = f"s3://{bucket}/out-{variant}-{repeat}/"
                    runner = run_pipeline if variant == "pipeline" else run_single_process_child
                    run = runner(endpoint, checkpoint, input_uri, output, args.new_tokens)
                    if run.images != args.images:
                        raise RuntimeError(f"{variant} wrote {run.images} rows for {args.images} images")
                    runs[variant].append(run)
                    extra = (
                        f" (replica busy {run.replica_busy_s:.1f} s + idle {run.replica_idle_s:.1f} s; "
                        f"in model.generate {(run.breakdown or {}).get('generate_s', 0.0):.1f} s)"
                        if run.replica_busy_s is not None
                        else " (" + ", ".join(f"{k} {v:.1f}" for k, v in (run.breakdown or {}).items()) + ")"
                    )
                    print(
                        f"  repeat {repeat + 1} {variant:8s}: wall {run.wall_s:6.1f} s, steady window "
                        f"{run.steady_s:6.1f} s{extra} -> {run.rate:.3f} img/s",
                        flush=True,
                    )
    report = summarize(runs, args)
    print()
    print("\n".join(report["lines"]))
    print()
    print(f"total benchmark time {time.perf_counter() - began:.0f} s")
    print("SUMMARY pipeline_vs_single_process: " + json.dumps(report["summary"]))
    return 0


def summarize(runs: dict[str, list[Run]], args: argparse.Namespace) -> dict:
    rates = {variant: [run.rate for run in variant_runs] for variant, variant_runs in runs.items()}
    fixed = {
        variant: [run.wall_s - run.steady_s for run in variant_runs] for variant, variant_runs in runs.items()
    }
    ratios = [pipeline / single for pipeline, single in zip(rates["pipeline"], rates["single"])]
    # On a shared machine the speed of model.generate itself swings with other work; the share of each variant's
    # steady window spent outside model.generate (Ray, S3, decode, preprocess, Parquet, waiting) does not. The
    # ratio the variants would have at equal generate speed: (single window / its generate) / (pipeline's).
    overheads = {
        variant: [run.steady_s / run.breakdown["generate_s"] for run in variant_runs]
        for variant, variant_runs in runs.items()
    }
    normalised = [single / pipeline for pipeline, single in zip(overheads["pipeline"], overheads["single"])]
    # Same images, same model, same greedy settings: the captions must agree row for row.
    reference = runs["single"][0].texts
    same = np.mean(
        [run.texts.get(key) == text for run in runs["pipeline"] for key, text in reference.items()]
    )
    lines = [
        f"{'variant':9s} {'steady img/s per repeat':>24s} {'median':>7s} {'start-up + drain s (median)':>28s}",
        *(
            f"{variant:9s} {', '.join(f'{rate:.3f}' for rate in rates[variant]):>24s} "
            f"{median(rates[variant]):7.3f} {median(fixed[variant]):28.1f}"
            for variant in ("pipeline", "single")
        ),
        f"pipeline / single process (steady state): per repeat {', '.join(f'{r:.3f}' for r in ratios)}; "
        f"median {median(ratios):.3f} (bar: >= 0.9)",
        "steady window / time inside model.generate: "
        + "; ".join(
            f"{variant} {', '.join(f'{o:.3f}' for o in overheads[variant])}" for variant in overheads
        ),
        f"pipeline / single process at equal generate speed: per repeat {', '.join(f'{r:.3f}' for r in normalised)}; "
        f"median {median(normalised):.3f}",
        f"wall time with start-up, pipeline / single process: "
        f"{median([run.wall_s for run in runs['single']]) / median([run.wall_s for run in runs['pipeline']]):.3f}"
        " (images/s ratio)",
        f"captions equal between the variants: {100 * same:.0f}% of {len(reference)} rows",
        f"pipeline replica idle waiting for input (median): "
        f"{median([run.replica_idle_s or 0.0 for run in runs['pipeline']]):.1f} s",
    ]
    return {
        "lines": lines,
        "summary": {
            "pipeline_img_s": round(median(rates["pipeline"]), 4),
            "single_img_s": round(median(rates["single"]), 4),
            "ratio": round(median(ratios), 4),
            "ratios": [round(ratio, 4) for ratio in ratios],
            "ratio_at_equal_generate_speed": round(median(normalised), 4),
            "captions_equal": round(float(same), 4),
        },
    }


if __name__ == "__main__":
    sys.exit(main())
