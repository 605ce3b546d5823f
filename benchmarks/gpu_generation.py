"""Benchmark: batched generation with the real shapes of three LLaVA checkpoints (random weights), on a GPU.

Run on a GPU machine (needs no network and no Ray; written for transformers >= 5.17 and torch >= 2.11, the stack
of the lent GPU machines; its tiny configuration is checked on CPU with transformers 5.17 and 5.23):
    python -m benchmarks.gpu_generation --json-out gpu_generation.json
    python -m benchmarks.gpu_generation --families llava --batch-sizes 1 8 32 64 --dtype float16
Run the CPU smoke test (a tiny model of the same shape; what tests/benchmarks/test_gpu_script.py runs):
    python -m benchmarks.gpu_generation --config tiny
Add --quick for one repeat and fewer images; --prompts-per-image K asks every image K questions (rows are then
(image, prompt) pairs, and "images" in the report count rows), where the operator prefills each image once;
--varied-lengths lets rows stop at different lengths (at most --new-tokens), where the operator's continuous
batching refills the slots of finished rows and `generate` decodes every batch to its longest row:
    python -m benchmarks.gpu_generation --families llava --batch-sizes 32 64 --varied-lengths --min-images 256

For each family it builds a model with the REAL configuration of the checkpoint (written out below, no download)
directly on the device in float16/bfloat16 with random weights, then measures, at each batch size:
  - operator: the project's PreprocessForModel (CPU, timed apart) + Generate (left-padded, continuous batching
    through `batch size` slots, fed windows of --length-window batches as the caption job feeds a replica);
  - pipeline: transformers.pipeline("image-text-to-text") with the same model, processor and batch_size;
  - loop: the per-image `processor(...)` + `model.generate` loop most captioning scripts use (batch size 1).
By default every variant generates exactly --new-tokens tokens per image (greedy, min_new_tokens =
max_new_tokens), so images/s compare like for like; output tokens/s counts each row's tokens to its stop token. The operator's images/s counts its
generate calls only (in the Ray job preprocessing runs on other CPU actors, in parallel); its end-to-end figure
(preprocess + generate in one process) is reported beside it.

Random weights make the text meaningless but not the cost: the compute per token depends on the shapes only.
The tokenizer is a small byte-level BPE trained offline (llava_batch.pipeline.families.tiny_models.build_tokenizer); the real
configurations keep their real vocabulary sizes (the lm_head cost matters), and ids the small tokenizer does not
know decode to nothing, for every variant alike.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common.inputs import MAX_IMAGE_PIXELS, PROMPTS, images_for, write_inputs
from benchmarks.common.models import (
    REAL_SPECS,
    ModelSpec,
    build_model,
    build_processor,
    generate_operator_around,
    model_specs,
    parameter_count,
)
from benchmarks.common.report import environment, format_table, summarize, summary_line, token_spread_lines
from benchmarks.common.variants import fixed_length_kwargs, measure_variants, varied_length_kwargs
from llava_batch.operators.generation.loading import resolve_dtype
from llava_batch.operators.preprocess import PreprocessForModel


def measure_family(
    spec: ModelSpec,
    *,
    device: str,
    dtype: torch.dtype,
    batch_sizes: list[int],
    new_tokens: int,
    min_images: int,
    loop_images: int,
    repeats: int,
    work_dir: Path,
    log: Callable[[str], None],
    prompts_per_image: int = 1,
    varied_lengths: bool = False,
    window: int = 1,
) -> dict[str, Any]:
    """Builds the family's random model in memory, runs operator, pipeline and loop; returns the JSON rows.
    `varied_lengths`: rows stop at a probed stop token instead of all running `new_tokens`; `window`: batches
    per operator call (the job's --length-window)."""
    began = time.perf_counter()
    processor = build_processor(spec)
    checkpoint_dir = work_dir / spec.family
    processor.save_pretrained(checkpoint_dir)  # PreprocessForModel and Generate read the processor from here
    model = build_model(spec, processor.tokenizer, device=device, dtype=dtype)
    log(
        f"{spec.family} ({spec.checkpoint}): {parameter_count(model) / 1e6:.0f} M parameters, {dtype}, "
        f"{device}, built in {time.perf_counter() - began:.1f} s"
    )
    # The peers (transformers.pipeline, the per-image loop) decode images in full: the operator does too, so
    # that outputs are compared on equal pixels and the timings measure generation, not decoding.
    preprocess = PreprocessForModel(str(checkpoint_dir), max_image_pixels=MAX_IMAGE_PIXELS, exact_decode=True)
    largest = max(images_for(size, min_images) for size in batch_sizes)
    images = -(-max(largest, loop_images) // prompts_per_image)
    inputs = write_inputs(work_dir / f"{spec.family}-images", images).with_prompts_per_image(
        prompts_per_image
    )
    decoding = (
        varied_length_kwargs(model, processor, inputs, new_tokens)
        if varied_lengths
        else fixed_length_kwargs(new_tokens)
    )
    log(f"decoding: {decoding}")
    operator = generate_operator_around(model, checkpoint_dir, decoding)
    runs = measure_variants(
        model=model,
        processor=processor,
        preprocess=preprocess,
        operator=operator,
        inputs=inputs,
        batch_sizes=batch_sizes,
        decoding=decoding,
        min_images=min_images,
        loop_images=loop_images,
        repeats=repeats,
        log=log,
        window=window,
    )
    del operator, model, preprocess
    gc.collect()  # the next family's 7B model must not share the GPU with this one
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return summarize(spec, runs, batch_sizes)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=("real", "tiny"), default="real")
    parser.add_argument("--families", nargs="+", choices=sorted(REAL_SPECS), default=list(REAL_SPECS))
    parser.add_argument(
        "--batch-sizes", nargs="+", type=int, default=None, help="default 1 8 32 64 (tiny: 1 4)"
    )
    parser.add_argument(
        "--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU) or a torch dtype"
    )
    parser.add_argument("--device", default=None, help="default cuda when available, else cpu")
    parser.add_argument("--new-tokens", type=int, default=None, help="default 64 (tiny: 8)")
    parser.add_argument(
        "--min-images", type=int, default=None, help="images per run at least; default 8 (tiny 4)"
    )
    parser.add_argument("--loop-images", type=int, default=None, help="default 8 (tiny 4)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads; default torch's own (tiny: 1, as ops that small only wait on a second thread)",
    )
    parser.add_argument(
        "--prompts-per-image",
        type=int,
        default=1,
        help=f"questions per image, 1 to {len(PROMPTS)}: rows are (image, prompt) pairs",
    )
    parser.add_argument(
        "--varied-lengths",
        action="store_true",
        help="rows stop at a probed stop token (varied lengths, at most --new-tokens) instead of all at --new-tokens",
    )
    parser.add_argument(
        "--length-window",
        type=int,
        default=4,
        help="batches per operator call, as the caption job's --length-window (default 4, the job's default)",
    )
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="one repeat, fewer images: a smoke run")
    args = parser.parse_args(argv)
    tiny = args.config == "tiny"
    if args.batch_sizes is None:
        args.batch_sizes = [1, 4] if tiny else [1, 8, 32, 64]
    if args.new_tokens is None:
        args.new_tokens = 8 if tiny else 64
    if args.min_images is None:
        args.min_images = 4 if tiny else 8
    if args.loop_images is None:
        args.loop_images = 4 if tiny else 8
    if args.threads is None and tiny:
        args.threads = 1
    if args.quick:
        args.repeats = 1
        args.min_images = min(args.min_images, 2)
        args.loop_images = min(args.loop_images, 2)
    if any(size < 1 for size in args.batch_sizes):
        parser.error(f"--batch-sizes must be positive, got {args.batch_sizes}")
    if args.new_tokens < 1 or args.repeats < 1 or args.loop_images < 1 or args.min_images < 1:
        parser.error("--new-tokens, --repeats, --loop-images and --min-images must be at least 1")
    if not 1 <= args.prompts_per_image <= len(PROMPTS):
        parser.error(f"--prompts-per-image: 1 to {len(PROMPTS)}, got {args.prompts_per_image}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(args.dtype, device)
    env = environment(device, dtype)
    print(
        f"gpu_generation: config {args.config}, {env['device']}, {env['dtype']}, torch {env['torch']}, "
        f"transformers {env['transformers']}, {args.new_tokens} new tokens per image, "
        f"batch sizes {args.batch_sizes}, {args.repeats} repeat(s), {args.prompts_per_image} prompt(s) per image",
        flush=True,
    )
    specs = model_specs(args.config)
    results: list[dict[str, Any]] = []
    agreements: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="llava-gpu-bench-") as work:
        for family in args.families:
            measured = measure_family(
                specs[family],
                device=device,
                dtype=dtype,
                batch_sizes=args.batch_sizes,
                new_tokens=args.new_tokens,
                min_images=args.min_images,
                loop_images=args.loop_images,
                repeats=args.repeats,
                prompts_per_image=args.prompts_per_image,
                varied_lengths=args.varied_lengths,
                window=args.length_window,
                work_dir=Path(work),
                log=lambda line: print(line, flush=True),
            )
            results.extend(measured["results"])
            agreements.extend(measured["agreement"])
    print()
    print(format_table(results, agreements))
    print()
    print("new tokens per row (operator):")
    print("\n".join(token_spread_lines(results)))
    print()
    print(summary_line("gpu_generation", results))
    if args.json_out is not None:
        report = {
            "benchmark": "gpu_generation",
            "config": args.config,
            "new_tokens": args.new_tokens,
            "prompts_per_image": args.prompts_per_image,
            "varied_lengths": args.varied_lengths,
            "length_window": args.length_window,
            "batch_sizes": args.batch_sizes,
            "repeats": args.repeats,
            "environment": env,
            "results": results,
            "agreement": agreements,
        }
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
