"""The generation variants compared: the project's operator (PreprocessForModel + Generate), transformers.pipeline
and the per-image generate loop, their decoding settings, and running them interleaved over repeats."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks.common.inputs import Inputs, images_for
from llava_batch.operators.batch import object_array
from llava_batch.operators.generation.replica import REPLICA_STATS_COLUMN, Generate
from llava_batch.operators.preprocess import PreprocessForModel
from llava_batch.pipeline.families.tiny_models import varied_length_stop_token

VARIANTS = ("operator", "pipeline", "loop")


def fixed_length_kwargs(new_tokens: int) -> dict[str, Any]:
    """Greedy and exactly `new_tokens` tokens per row (EOS is suppressed until then)."""
    return {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}


def varied_length_kwargs(
    model: torch.nn.Module, processor: Any, inputs: Inputs, new_tokens: int, probe_rows: int = 8
) -> dict[str, Any]:
    """Greedy, at most `new_tokens`, stopping at a token that the model's outputs on these inputs reach at
    different steps (llava_batch.pipeline.families.tiny_models.varied_length_stop_token): rows end at different lengths, as real
    captions do, for every variant alike."""
    probe = run_loop(model, processor, inputs.head(probe_rows), fixed_length_kwargs(new_tokens))
    stop = varied_length_stop_token(probe.new_token_ids)
    return {"max_new_tokens": new_tokens, "do_sample": False, "eos_token_id": stop}


@dataclass
class VariantRun:
    """One pass of a variant over the inputs."""

    variant: str
    batch_size: int
    images: int
    seconds: float  # wall time of what the variant's images/s counts (the operator: its generate calls)
    texts: list[str]
    generate_seconds: float = 0.0  # time inside model.generate
    generate_rows: list[int] = field(default_factory=list)  # rows per model.generate call
    # The operator's continuous batching (no model.generate call): active rows per decoding step, on average.
    rows_per_decode_step: float | None = None
    preprocess_seconds: float = 0.0  # the operator's PreprocessForModel calls (CPU)
    row_tokens: list[int] = field(default_factory=list)  # new tokens of each row, its stop token included
    new_token_ids: list[list[int]] = field(default_factory=list)  # the loop's, per row, to its stop token

    @property
    def output_tokens(self) -> int:
        return sum(self.row_tokens)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @property
    def end_to_end_images_per_s(self) -> float:
        return self.images / (self.seconds + self.preprocess_seconds)


class GenerateSpy:
    """Wraps model.generate while active: rows per call, seconds spent inside it (what the rest costs), and the
    new tokens of every row, up to and including its stop token (`new_tokens`)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.rows: list[int] = []
        self.seconds = 0.0
        self.new_tokens: list[list[int]] = []

    def __enter__(self) -> GenerateSpy:
        original = self.model.generate

        def spy(*args: Any, **kwargs: Any) -> Any:
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.rows.append(int(ids.shape[0]) if ids is not None else -1)
            start = time.perf_counter()
            output = original(*args, **kwargs)
            _synchronize(self.model)
            self.seconds += time.perf_counter() - start
            eos = kwargs.get("eos_token_id", self.model.generation_config.eos_token_id)
            stops = set(eos if isinstance(eos, list) else [eos])
            for row in output[:, ids.shape[1] :].tolist():
                end = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
                self.new_tokens.append(row[:end])
            return output

        self.model.generate = spy  # an instance attribute shadows the method for every caller
        return self

    def __exit__(self, *exc: object) -> None:
        del self.model.generate


def _synchronize(model: torch.nn.Module) -> None:
    if next(model.parameters()).device.type == "cuda":
        torch.cuda.synchronize()


def run_operator(
    preprocess: PreprocessForModel, generate: Generate, inputs: Inputs, batch_size: int, window: int = 1
) -> VariantRun:
    """Rows go through the operators as the caption job hands them over: windows of `window` batches of
    `batch_size` rows (--length-window), which the replica decodes `batch_size` rows at a time."""
    generate.rows_per_call = batch_size
    step = batch_size * window
    texts: list[str] = []
    prep_seconds = gen_seconds = model_seconds = 0.0
    row_tokens: list[int] = []
    decode_steps = decode_row_steps = 0
    with GenerateSpy(generate.model) as spy:
        for start in range(0, len(inputs), step):
            stop = min(len(inputs), start + step)
            batch = {
                "id": object_array(inputs.ids[start:stop]),
                "image_bytes": object_array(inputs.payloads[start:stop]),
                "prompt": object_array(inputs.prompts[start:stop]),
            }
            began = time.perf_counter()
            prepared = preprocess(batch)
            prepared_at = time.perf_counter()
            out = generate(prepared)
            gen_seconds += time.perf_counter() - prepared_at
            prep_seconds += prepared_at - began
            failed = [error for error in out["error"] if error is not None]
            if failed:
                raise RuntimeError(f"the operator returned error rows: {failed[:3]}")
            texts.extend(str(text) for text in out["generated_text"])
            row_tokens.extend(int(count) for count in out["num_output_tokens"])
            # The replica's own account of its time in the model: `model.generate` plus, where rows share an
            # image, the prefill of that image, which runs as a plain forward call before `generate`.
            stats = json.loads(out[REPLICA_STATS_COLUMN][0])
            model_seconds += stats["generate_s"]
            decode_steps += stats.get("decode_steps", 0)
            decode_row_steps += stats.get("decode_row_steps", 0)
    return VariantRun(
        "operator",
        batch_size,
        len(inputs),
        gen_seconds,
        texts,
        generate_seconds=model_seconds,
        generate_rows=spy.rows,
        rows_per_decode_step=decode_row_steps / decode_steps if decode_steps else None,
        preprocess_seconds=prep_seconds,
        row_tokens=row_tokens,
    )


def make_pipeline(model: torch.nn.Module, processor: Any) -> Any:
    """transformers.pipeline around the same model and processor. Left padding, as decoder-only batched
    generation needs (the tokenizer's default, right, would make shorter prompts' outputs wrong)."""
    from transformers import pipeline

    processor.tokenizer.padding_side = "left"
    # The model's own device: left to itself the pipeline picks cuda:0 whenever there is one, moving the model.
    return pipeline("image-text-to-text", model=model, processor=processor, device=model.device)


def run_pipeline(pipe: Any, inputs: Inputs, batch_size: int, decoding: dict[str, Any]) -> VariantRun:
    """The documented chat-format call: images by path inside the messages, batch_size rows per generate."""
    chats = [
        [
            {
                "role": "user",
                "content": [{"type": "image", "path": str(path)}, {"type": "text", "text": prompt}],
            }
        ]
        for path, prompt in zip(inputs.paths, inputs.prompts)
    ]
    with GenerateSpy(pipe.model) as spy:
        began = time.perf_counter()
        outputs = pipe(
            text=chats,
            batch_size=batch_size,
            max_new_tokens=decoding["max_new_tokens"],
            generate_kwargs={key: value for key, value in decoding.items() if key != "max_new_tokens"},
            return_full_text=False,
        )
        seconds = time.perf_counter() - began
    texts = [str(_first(output)["generated_text"]) for output in outputs]
    return VariantRun(
        "pipeline",
        batch_size,
        len(inputs),
        seconds,
        texts,
        generate_seconds=spy.seconds,
        generate_rows=spy.rows,
        row_tokens=[len(row) for row in spy.new_tokens],
    )


def _first(output: Any) -> dict[str, Any]:
    return output[0] if isinstance(output, list) else output


def run_loop(model: torch.nn.Module, processor: Any, inputs: Inputs, decoding: dict[str, Any]) -> VariantRun:
    """What most captioning scripts do: open the image, apply the chat template, process, generate, decode."""
    from PIL import Image

    texts: list[str] = []
    with GenerateSpy(model) as spy:
        began = time.perf_counter()
        for path, prompt in zip(inputs.paths, inputs.prompts):
            image = Image.open(path).convert("RGB")
            conversation = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
            ]
            text = processor.apply_chat_template(conversation, add_generation_prompt=True)
            encoded = processor(images=image, text=text, return_tensors="pt").to(
                model.device, dtype=model.dtype
            )
            output = model.generate(**encoded, **decoding)
            prompt_length = encoded["input_ids"].shape[1]
            texts.append(processor.decode(output[0, prompt_length:], skip_special_tokens=True))
        seconds = time.perf_counter() - began
    return VariantRun(
        "loop",
        1,
        len(inputs),
        seconds,
        texts,
        generate_seconds=spy.seconds,
        generate_rows=spy.rows,
        row_tokens=[len(row) for row in spy.new_tokens],
        new_token_ids=spy.new_tokens,
    )


# ---------------------------------------------------------------------------------------------------------------
# One family, all batch sizes, interleaved repeats
# ---------------------------------------------------------------------------------------------------------------


Runs = dict[tuple[str, int], list[VariantRun]]


def measure_variants(
    *,
    model: torch.nn.Module,
    processor: Any,
    preprocess: PreprocessForModel,
    operator: Generate,
    inputs: Inputs,
    batch_sizes: list[int],
    decoding: dict[str, Any],
    min_images: int,
    loop_images: int,
    repeats: int,
    log: Callable[[str], None],
    window: int = 1,
) -> Runs:
    """Operator and pipeline at every batch size and the loop, interleaved within each repeat (the order of
    operator and pipeline alternates between repeats), after one warm-up pass of each on a small batch."""
    pipe = make_pipeline(model, processor)
    warm = inputs.head(min(2, len(inputs)))
    run_operator(preprocess, operator, warm, len(warm))
    run_pipeline(pipe, warm, len(warm), decoding)
    run_loop(model, processor, warm.head(1), decoding)

    runs: Runs = {}
    for repeat in range(repeats):
        loop_run = run_loop(model, processor, inputs.head(loop_images), decoding)
        runs.setdefault(("loop", 1), []).append(loop_run)
        log(f"  repeat {repeat + 1}/{repeats} loop     batch   1: {loop_run.images_per_s:8.3f} images/s")
        for size in batch_sizes:
            subset = inputs.head(images_for(size, min_images))
            order = ("operator", "pipeline") if repeat % 2 == 0 else ("pipeline", "operator")
            for variant in order:
                try:
                    run = (
                        run_operator(preprocess, operator, subset, size, window)
                        if variant == "operator"
                        else run_pipeline(pipe, subset, size, decoding)
                    )
                except torch.OutOfMemoryError as error:  # the pipeline has no back-off; report, go on
                    log(f"  {variant} batch {size}: out of memory ({error})")
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    continue
                runs.setdefault((variant, size), []).append(run)
                log(
                    f"  repeat {repeat + 1}/{repeats} {variant:8s} batch {size:3d}: "
                    f"{run.images_per_s:8.3f} images/s ({run.images} images, {rows_per_call_text(run)})"
                )
    return runs


def rows_per_call_text(run: VariantRun) -> str:
    """How many rows the model saw at once: per `model.generate` call, or per decoding step of the slots."""
    if run.rows_per_decode_step is not None:
        return f"rows per decoding step {run.rows_per_decode_step:.2f}"
    return f"rows per generate {sorted(set(run.generate_rows))}"
