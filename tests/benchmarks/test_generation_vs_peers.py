"""benchmarks/generation_vs_peers.py: the prefill ceiling it reports is the pipeline's time over the operator's
time with one new token, measured on the same rows with the real operator."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

from benchmarks import generation_vs_peers as peers  # noqa: E402
from benchmarks.common import variants  # noqa: E402
from benchmarks.common.inputs import MAX_IMAGE_PIXELS, write_inputs  # noqa: E402
from benchmarks.common.models import (  # noqa: E402
    REAL_SPECS,
    build_model,
    build_processor,
    generate_operator_around,
    tiny_spec,
)
from benchmarks.common.variants import Runs, VariantRun, fixed_length_kwargs  # noqa: E402
from llava_batch.operators.preprocess import PreprocessForModel  # noqa: E402


def test_prefill_ceiling_runs_one_token_per_row_and_divides_the_pipeline_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tiny_spec(REAL_SPECS["llava"])
    processor = build_processor(spec)
    processor.save_pretrained(tmp_path / "model")
    model = build_model(spec, processor.tokenizer, device="cpu", dtype=torch.float32)
    decoding = fixed_length_kwargs(6)
    operator = generate_operator_around(model, tmp_path / "model", decoding)
    preprocess = PreprocessForModel(str(tmp_path / "model"), max_image_pixels=MAX_IMAGE_PIXELS)
    inputs = write_inputs(tmp_path / "images", 4)
    # The full runs' times are given (2 s and 1.5 s per image); the one-token pass is measured.
    runs: Runs = {
        ("pipeline", 2): [VariantRun("pipeline", 2, 4, 8.0, [])],
        ("operator", 2): [VariantRun("operator", 2, 4, 5.0, [], preprocess_seconds=1.0)],
    }
    passes: list[VariantRun] = []

    def recorded(*args: object, **kwargs: object) -> VariantRun:
        run = original(*args, **kwargs)
        passes.append(run)
        return run

    original = variants.run_operator
    monkeypatch.setattr(variants, "run_operator", recorded)

    ceilings = peers.prefill_ceilings(
        runs, preprocess, operator, inputs, [2], min_images=4, window=2, repeats=1
    )

    assert [(run.images, run.output_tokens) for run in passes] == [(4, 4)]  # one new token per row
    prefill = (passes[0].seconds + passes[0].preprocess_seconds) / 4
    assert ceilings == {
        2: {
            "prefill_s_per_image": pytest.approx(prefill),
            "prefill_share_of_operator": pytest.approx(prefill / 1.5),
            "ceiling_vs_pipeline": pytest.approx(2.0 / prefill),
        }
    }
    assert operator.generate_kwargs == decoding  # the benchmark's own settings are back
