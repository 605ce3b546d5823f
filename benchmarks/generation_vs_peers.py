"""Benchmark: the project's generation operator vs transformers.pipeline vs a per-image generate loop, on CPU.

Run: python -m benchmarks.generation_vs_peers [--quick] [--batch-sizes 1 8 16] [--repeats 3] [--new-tokens 32]
     [--threads 1] [--prompts-per-image K]   (about 6 minutes on 2 shared cores; --quick: about 1 minute)

`--prompts-per-image K` (default 1) asks each image K different questions, image-major, as a prompt set or
`instruct` does; every variant then answers (image, prompt) rows and "images" below count those rows. The operator
prefills each image once per call and continues every question from it (operators/generation/prefix_sharing.py); the
pipeline and the loop run every row whole.

The model is a random-weight LLaVA-1.5 built offline with the transformers config classes and saved to a temp
dir (Llama text model: hidden 1024, 8 layers; CLIP vision tower: hidden 768, 4 layers, 224 px in 14 px patches,
so 256 image tokens; the offline BPE tokenizer of llava_batch.pipeline.families.tiny_models), large enough that the model, not the
Python around it, takes the time. The same model object, processor and 640x480 JPEGs serve three variants:
  - operator: PreprocessForModel + Generate, in batches of `batch size` rows as Ray Data hands them over;
    Generate loads the checkpoint from the temp dir with its own loader (llava_batch.operators.generation.loading.load_model);
  - pipeline: transformers.pipeline("image-text-to-text", model=..., processor=...) called on the list of chats
    with batch_size (left padding), images given by path so it decodes them itself;
  - loop: one `processor(...)` + `model.generate` + decode per image.
Greedy, float32, exactly --new-tokens tokens per image (min_new_tokens = max_new_tokens), or with
--varied-lengths at most that many, each row stopping at a probed stop token
(benchmarks.common.variants.varied_length_kwargs), where the operator's continuous batching refills finished rows'
slots from its window of --length-window batches while the pipeline decodes each batch to its longest row. The
operator's images/s counts its generate calls (in the Ray job preprocessing runs on other CPU actors at the same time);
`e2e` adds its preprocessing, run serially in the same process, which is what the pipeline and the loop time.
After them the operator runs once more per repeat with one new token per row (vision tower, prompt prefill,
first token: the work every variant does alike); the pipeline's time over that is the most any saving in
decoding could reach, printed as the prefill ceiling. The new tokens per row are printed too (min, median, mean,
max).
Variants are interleaved within each repeat; ratios are medians of per-repeat ratios. Torch runs one thread by
default: what a Ray actor with num_cpus=1 gets, and on a shared 2-core machine two threads ran 2-4x slower and
far less steadily than one (each waits on the other's core).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import variants
from benchmarks.common.inputs import MAX_IMAGE_PIXELS, PROMPTS, Inputs, images_for, write_inputs
from benchmarks.common.models import CPU_LLAVA, build_checkpoint
from benchmarks.common.report import environment, format_table, median, summarize, token_spread_lines
from llava_batch.operators.generation.replica import Generate
from llava_batch.operators.preprocess import PreprocessForModel

# What the issue asks of the operator: this many times the pipeline's images/s at equal batch size.
BAR = 1.5


def breakdown(runs: variants.Runs) -> list[str]:
    """Where each variant's wall time goes: inside model.generate, and the rest (preprocessing, collation,
    decoding, Python), as medians over repeats."""
    lines = [
        f"{'variant':9s} {'batch':>5s} {'wall s/img':>10s} {'generate s/img':>14s} {'rest s/img':>10s} "
        f"{'prep s/img (apart)':>18s}"
    ]
    for (variant, size), variant_runs in sorted(runs.items(), key=lambda item: (item[0][1], item[0][0])):
        wall = median([run.seconds / run.images for run in variant_runs])
        inside = median([run.generate_seconds / run.images for run in variant_runs])
        prep = median([run.preprocess_seconds / run.images for run in variant_runs])
        lines.append(
            f"{variant:9s} {size:5d} {wall:10.4f} {inside:14.4f} {wall - inside:10.4f} "
            f"{(f'{prep:.4f}' if variant == 'operator' else ''):>18s}"
        )
    return lines


def prefill_ceilings(
    runs: variants.Runs,
    preprocess: PreprocessForModel,
    operator: Generate,
    inputs: Inputs,
    batch_sizes: list[int],
    *,
    min_images: int,
    window: int,
    repeats: int,
) -> dict[int, dict[str, float]]:
    """The most any decoding-side saving could give over the pipeline, measured: the operator run again on the same
    rows with one new token (vision tower, prompt prefill and the first token: work every variant does alike),
    plus its preprocessing. If decoding the other tokens cost nothing, the operator's end-to-end time per image
    would be this, so pipeline time / this bounds the ratio for anything short of doing less prefill work."""
    kept = operator.generate_kwargs
    operator.generate_kwargs = variants.fixed_length_kwargs(1)
    ceilings: dict[int, dict[str, float]] = {}
    try:
        for size in batch_sizes:
            subset = inputs.head(images_for(size, min_images))
            passes = [
                variants.run_operator(preprocess, operator, subset, size, window) for _ in range(repeats)
            ]
            prefill = median([1 / run.end_to_end_images_per_s for run in passes])
            pipeline = median([run.seconds / run.images for run in runs.get(("pipeline", size), [])])
            operator_wall = median(
                [1 / run.end_to_end_images_per_s for run in runs.get(("operator", size), [])]
            )
            ceilings[size] = {
                "prefill_s_per_image": prefill,
                "prefill_share_of_operator": prefill / operator_wall,
                "ceiling_vs_pipeline": pipeline / prefill,
            }
    finally:
        operator.generate_kwargs = kept
    return ceilings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 16])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--min-images", type=int, default=4, help="images per run at least (whole batches)")
    parser.add_argument(
        "--loop-images", type=int, default=4, help="images the loop runs (and outputs compared)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: what a Ray actor with num_cpus=1 gets, and steady on a shared machine)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--prompts-per-image",
        type=int,
        default=1,
        help=f"questions per image, 1 to {len(PROMPTS)}: rows are (image, prompt) pairs",
    )
    parser.add_argument(
        "--varied-lengths",
        action="store_true",
        help="rows stop at a probed stop token (varied lengths, at most --new-tokens), as captions do",
    )
    parser.add_argument(
        "--length-window", type=int, default=4, help="batches per operator call (the job's --length-window)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: batch sizes 1 2, 4 images, 4 tokens")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.new_tokens, args.min_images, args.loop_images, args.repeats = (
            [1, 2],
            4,
            4,
            2,
            1,
        )
    if min(args.batch_sizes) < 1 or args.new_tokens < 1 or args.repeats < 1:
        parser.error("--batch-sizes, --new-tokens and --repeats must be at least 1")
    if not 1 <= args.prompts_per_image <= len(PROMPTS):
        parser.error(f"--prompts-per-image: 1 to {len(PROMPTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment("cpu", torch.float32)
    print(
        f"generation_vs_peers: {env['device']}, {env['torch_threads']} torch threads, torch {env['torch']}, "
        f"transformers {env['transformers']}, float32 greedy, {args.new_tokens} new tokens per image, "
        f"batch sizes {args.batch_sizes}, {args.repeats} repeat(s), {args.prompts_per_image} prompt(s) per image"
        + (
            " (images/s below = rows/s, a row being one image and one prompt)"
            if args.prompts_per_image > 1
            else ""
        ),
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="llava-peers-bench-") as work:
        began = time.perf_counter()
        checkpoint, parameters = build_checkpoint(Path(work) / "model", args.seed)
        operator = Generate(str(checkpoint), generate_kwargs={}, dtype="float32")
        # The peers (transformers.pipeline, the per-image loop) decode images in full: the operator does too, so
        # that outputs are compared on equal pixels and the timings measure generation, not decoding.
        preprocess = PreprocessForModel(str(checkpoint), max_image_pixels=MAX_IMAGE_PIXELS, exact_decode=True)
        size_mb = sum(path.stat().st_size for path in checkpoint.glob("*.safetensors")) / 1e6
        print(
            f"model: {parameters / 1e6:.0f} M parameters, {size_mb:.0f} MB float32 safetensors, built, saved and "
            f"loaded in {time.perf_counter() - began:.1f} s",
            flush=True,
        )
        largest = max(images_for(size, args.min_images) for size in args.batch_sizes)
        images = -(-max(largest, args.loop_images) // args.prompts_per_image)
        inputs = write_inputs(Path(work) / "images", images, seed=args.seed)
        inputs = inputs.with_prompts_per_image(args.prompts_per_image)
        decoding = (
            variants.varied_length_kwargs(operator.model, preprocess.processor, inputs, args.new_tokens)
            if args.varied_lengths
            else variants.fixed_length_kwargs(args.new_tokens)
        )
        operator.generate_kwargs = decoding
        print(f"decoding: {decoding}", flush=True)
        runs = variants.measure_variants(
            model=operator.model,
            processor=preprocess.processor,
            preprocess=preprocess,
            operator=operator,
            inputs=inputs,
            batch_sizes=args.batch_sizes,
            decoding=decoding,
            window=args.length_window,
            min_images=args.min_images,
            loop_images=args.loop_images,
            repeats=args.repeats,
            log=lambda line: print(line, flush=True),
        )
        ceilings = prefill_ceilings(
            runs,
            preprocess,
            operator,
            inputs,
            args.batch_sizes,
            min_images=args.min_images,
            window=args.length_window,
            repeats=args.repeats,
        )
    report = summarize(CPU_LLAVA, runs, args.batch_sizes)
    results = report["results"]
    print()
    print(format_table(results, report["agreement"]))
    print()
    print("new tokens per row (operator):")
    print("\n".join(token_spread_lines(results)))
    print()
    print("time per image, inside model.generate and the rest:")
    print("\n".join(breakdown(runs)))
    print()
    # Rows per model.generate call over all repeats: one value, the batch size, if the pipeline really batches.
    batching = {
        size: sorted({rows for run in variant_runs for rows in run.generate_rows})
        for (variant, size), variant_runs in runs.items()
        if variant == "pipeline"
    }
    batched = all(rows == [size] for size, rows in batching.items())
    print(
        f"pipeline rows per model.generate call by batch_size: {batching} -> batches: {'yes' if batched else 'NO'}"
    )
    print(
        "prefill (vision tower, prompt, first token; operator, with its preprocessing) and the ceiling it sets:"
    )
    for size, ceiling in ceilings.items():
        print(
            f"  batch {size:3d}: {ceiling['prefill_s_per_image']:.4f} s/img = "
            f"{ceiling['prefill_share_of_operator']:.0%} of the operator's time; operator/pipeline could reach at "
            f"most x{ceiling['ceiling_vs_pipeline']:.2f} if decoding cost nothing"
        )
    print()
    operator_rows = [row for row in results if row["variant"] == "operator" and "vs_pipeline" in row]
    met = [row["batch_size"] for row in operator_rows if row["end_to_end_vs_pipeline"] >= BAR]
    print(
        f"bar: operator >= {BAR}x pipeline images/s at equal batch size (end to end): "
        f"{'met at batch ' + str(met) if met else 'not met'}"
    )
    print()
    ratios = ", ".join(
        f"b{row['batch_size']} x{row['end_to_end_vs_pipeline']:.2f} e2e / x{row['vs_pipeline']:.2f} generate-only"
        for row in operator_rows
    )
    loop_ratios = ", ".join(f"b{row['batch_size']} x{row['end_to_end_vs_loop']:.2f}" for row in operator_rows)
    agree = all(
        entry.get("operator_vs_loop") == 1.0 and entry.get("pipeline_vs_loop") == 1.0
        for entry in report["agreement"]
    )
    print(
        f"SUMMARY generation_vs_peers: operator/pipeline {ratios}; operator/loop (e2e) {loop_ratios}; "
        f"outputs agree: {'all' if agree else 'NOT all'}; bar {BAR}x: {'met' if met else 'not met'}; "
        f"prefill ceiling: "
        + ", ".join(f"b{size} x{ceiling['ceiling_vs_pipeline']:.2f}" for size, ceiling in ceilings.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
