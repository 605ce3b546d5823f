"""The figures the benchmarks print: medians and paired ratios over repeats, agreement between variants' texts,
the table, the SUMMARY line and the environment (device, dtype, versions) of a run."""

from __future__ import annotations

import os
import platform
import statistics
from typing import Any

import torch

from benchmarks.common.models import ModelSpec
from benchmarks.common.variants import Runs


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def agreement(texts: list[str], reference: list[str]) -> float:
    """Share of rows (over the shorter list) whose generated text equals the reference, ignoring outer spaces."""
    count = min(len(texts), len(reference))
    if count == 0:
        return float("nan")
    return sum(a.strip() == b.strip() for a, b in zip(texts[:count], reference[:count])) / count


def token_spread(row_tokens: list[int]) -> dict[str, float]:
    """New tokens per row: how much the rows' lengths differ (with --varied-lengths, what the slots save on)."""
    if not row_tokens:
        return {}
    return {
        "min": min(row_tokens),
        "median": median([float(count) for count in row_tokens]),
        "mean": sum(row_tokens) / len(row_tokens),
        "max": max(row_tokens),
    }


def paired_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median over repeats of the ratio within each repeat (both measured minutes apart at most)."""
    return median([a / b for a, b in zip(numerators, denominators)])


def summarize(spec: ModelSpec, runs: Runs, batch_sizes: list[int]) -> dict[str, Any]:
    """The JSON rows: medians over repeats, ratios paired by repeat, agreement with the loop's texts."""
    results: list[dict[str, Any]] = []
    loop_rates = [run.images_per_s for run in runs[("loop", 1)]]
    for (variant, size), variant_runs in sorted(runs.items(), key=lambda item: (item[0][1], item[0][0])):
        first = variant_runs[0]
        rates = [run.images_per_s for run in variant_runs]
        row: dict[str, Any] = {
            "family": spec.family,
            "checkpoint": spec.checkpoint,
            "variant": variant,
            "batch_size": size,
            "images": first.images,
            "repeats": len(variant_runs),
            "images_per_s": median(rates),
            "output_tokens_per_s": median([run.output_tokens / run.seconds for run in variant_runs]),
            "share_in_model_generate": median([run.generate_seconds / run.seconds for run in variant_runs]),
            "generate_rows_per_call": sorted(set(first.generate_rows)),
            "rows_per_decode_step": first.rows_per_decode_step,
            "tokens_per_row": token_spread(first.row_tokens),
        }
        if variant != "loop":
            row["vs_loop"] = paired_ratio(rates, loop_rates)
        if variant == "operator":
            end_to_end = [run.end_to_end_images_per_s for run in variant_runs]
            row["preprocess_images_per_s"] = median(
                [run.images / run.preprocess_seconds for run in variant_runs]
            )
            row["end_to_end_images_per_s"] = median(end_to_end)
            row["end_to_end_vs_loop"] = paired_ratio(end_to_end, loop_rates)
            if ("pipeline", size) in runs:
                pipeline_rates = [run.images_per_s for run in runs[("pipeline", size)]]
                row["vs_pipeline"] = paired_ratio(rates, pipeline_rates)
                row["end_to_end_vs_pipeline"] = paired_ratio(end_to_end, pipeline_rates)
        results.append(row)

    reference = runs[("loop", 1)][0].texts
    agreements = []
    for size in batch_sizes:
        entry: dict[str, Any] = {"family": spec.family, "batch_size": size, "rows_compared": len(reference)}
        for variant in ("operator", "pipeline"):
            if (variant, size) in runs:
                entry[f"{variant}_vs_loop"] = agreement(runs[(variant, size)][0].texts, reference)
        agreements.append(entry)
    return {"results": results, "agreement": agreements}


def _ratio(row: dict[str, Any], key: str) -> str:
    return f"x{row[key]:.2f}" if key in row else ""


def format_table(results: list[dict[str, Any]], agreements: list[dict[str, Any]]) -> str:
    """One line per family, variant and batch size. Ratios are medians of ratios paired by repeat; the
    operator's `images/s` counts its generate calls, `e2e` adds its preprocessing done in the same process."""
    header = (
        f"{'family':17s} {'variant':9s} {'batch':>5s} {'images/s':>9s} {'out tok/s':>9s} {'in gen.':>7s} "
        f"{'prep img/s':>10s} {'e2e img/s':>9s} {'vs pipe':>7s} {'e2e/pipe':>8s} {'vs loop':>7s} {'e2e/loop':>8s}"
    )
    lines = [header, "-" * len(header)]
    for row in results:
        prep = f"{row['preprocess_images_per_s']:.1f}" if "preprocess_images_per_s" in row else ""
        end_to_end = f"{row['end_to_end_images_per_s']:.3f}" if "end_to_end_images_per_s" in row else ""
        lines.append(
            f"{row['family']:17s} {row['variant']:9s} {row['batch_size']:5d} {row['images_per_s']:9.3f} "
            f"{row['output_tokens_per_s']:9.1f} {row['share_in_model_generate']:7.0%} {prep:>10s} "
            f"{end_to_end:>9s} {_ratio(row, 'vs_pipeline'):>7s} {_ratio(row, 'end_to_end_vs_pipeline'):>8s} "
            f"{_ratio(row, 'vs_loop'):>7s} {_ratio(row, 'end_to_end_vs_loop'):>8s}"
        )
    lines.append("")
    lines.append("agreement with the per-image loop (greedy; same text on the rows the loop ran):")
    for entry in agreements:
        parts = [
            f"{variant} {entry[f'{variant}_vs_loop']:.0%}"
            for variant in ("operator", "pipeline")
            if f"{variant}_vs_loop" in entry
        ]
        lines.append(
            f"  {entry['family']:17s} batch {entry['batch_size']:3d}: {', '.join(parts)} "
            f"of {entry['rows_compared']} rows"
        )
    return "\n".join(lines)


def token_spread_lines(results: list[dict[str, Any]]) -> list[str]:
    """New tokens per row of the operator's runs: the lengths that the slots and the pipeline's batches decode."""
    return [
        f"  {row['family']:17s} batch {row['batch_size']:3d}: min {spread['min']}, median {spread['median']:g}, "
        f"mean {spread['mean']:.1f}, max {spread['max']}"
        for row in results
        if row["variant"] == "operator" and (spread := row.get("tokens_per_row"))
    ]


def summary_line(name: str, results: list[dict[str, Any]]) -> str:
    parts = [
        f"{row['family']} b{row['batch_size']} {row['images_per_s']:.2f} img/s "
        f"(x{row['vs_pipeline']:.2f} pipeline, x{row['vs_loop']:.2f} loop)"
        for row in results
        if row["variant"] == "operator" and "vs_pipeline" in row
    ]
    return f"SUMMARY {name}: operator " + "; ".join(parts)


def environment(device: str, dtype: torch.dtype) -> dict[str, Any]:
    import transformers

    described = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    return {
        "device": described,
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }
