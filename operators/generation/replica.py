"""GPU side: one model replica per actor; decodes a window of preprocessed rows, left-padded, through the decoder
chosen per call (llava_batch.operators.generation.decoders: decoding slots, shared image prefill or `model.generate`).

Reads `model_inputs` (packed arrays), optional `generation` (per-row decoding overrides) and `error`; writes
`generated_text`, `num_output_tokens`, `finish_reason`, `model`, `error`, and `_replica_stats` (this call's busy and
idle seconds and decoding-slot counts, JSON, on the batch's first row; the committer adds them up and drops the
column); drops `model_inputs`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import numpy as np
import torch

from llava_batch.operators.batch import column, require_columns, row_count
from llava_batch.operators.generation.collate import left_pad_collate
from llava_batch.operators.generation.continuous_batching import CacheNotRearrangeable, stop_token_ids
from llava_batch.operators.generation.decoders import (
    CONTINUOUS,
    Decoder,
    RowResult,
    choose_decoder,
    make_decoder,
    with_oom_backoff,
)
from llava_batch.operators.generation.length_grouping import plan_generate_calls
from llava_batch.operators.generation.loading import load_model, use_static_cache_and_compile
from llava_batch.operators.generation.prefix_sharing import (
    SharedPrefixPlan,
    continuation_inputs,
    prefill_prefixes,
    prefix_keys,
)
from llava_batch.operators.generation.static_slots import SlotSteps
from llava_batch.operators.pixel_transport import expand_pixels, pixel_table
from llava_batch.operators.tensor_codec import unpack_arrays

logger = logging.getLogger(__name__)


def merge_generation(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Job-level generate kwargs with a prompt's own max_new_tokens / temperature / top_p on top."""
    merged = dict(base)
    if "max_new_tokens" in overrides:
        merged["max_new_tokens"] = int(overrides["max_new_tokens"])
    temperature = overrides.get("temperature", merged.get("temperature") or 0.0)
    if temperature and temperature > 0:
        merged.update(do_sample=True, temperature=float(temperature))
        merged["top_p"] = float(overrides.get("top_p", merged.get("top_p") or 1.0))
    else:
        merged.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return merged


REPLICA_STATS_COLUMN = "_replica_stats"


class ReplicaClock:
    """Where a replica's time goes: busy in calls (of which inside `model.generate`) and idle between them.

    Idle is the time from the end of one call (or of loading the model) to the start of the next: the replica
    was waiting for input. The time after its last call is not counted; nothing was waiting for it then.
    """

    def __init__(self, now: float | None = None, memory_bytes: int | None = None) -> None:
        self.replica_id = uuid.uuid4().hex[:12]
        self.memory_bytes = memory_bytes  # the model's weights and buffers (`get_memory_footprint`)
        self.ready_at = time.monotonic() if now is None else now
        self.call_started = self.ready_at
        self.generate_s = 0.0
        self.prefills_saved = 0  # rows that continued from another row's image prefill (prefix_sharing)
        # Continuous batching: decoding steps, active rows summed over them, and slots summed over them.
        self.decode_steps = self.decode_row_steps = self.decode_slot_steps = 0

    def start_call(self, now: float | None = None) -> float:
        """Marks the start of a call; returns the idle seconds before it."""
        self.call_started = time.monotonic() if now is None else now
        self.generate_s = 0.0
        self.prefills_saved = 0
        self.decode_steps = self.decode_row_steps = self.decode_slot_steps = 0
        return max(self.call_started - self.ready_at, 0.0)

    def end_call(self, idle_s: float, now: float | None = None) -> dict[str, Any]:
        """Marks the end of a call; returns this call's stats (what `_replica_stats` carries)."""
        self.ready_at = time.monotonic() if now is None else now
        return {
            "replica": self.replica_id,
            "busy_s": round(self.ready_at - self.call_started, 6),
            "idle_s": round(idle_s, 6),
            "generate_s": round(self.generate_s, 6),
            "prefills_saved": self.prefills_saved,
            "decode_steps": self.decode_steps,
            "decode_row_steps": self.decode_row_steps,
            "decode_slot_steps": self.decode_slot_steps,
            "memory_bytes": self.memory_bytes,
        }


class Generate:
    """A model replica. Preprocessing never happens here: rows arrive tokenized with pixel values ready."""

    def __init__(
        self,
        model: str,
        *,
        generate_kwargs: dict[str, Any],
        seed: int = 0,
        dtype: str = "auto",
        attn_implementation: str = "sdpa",
        trust_remote_code: bool = False,
        device_map: dict[str, Any] | str | None = None,
        padding_side: str = "left",
        rows_per_call: int | None = None,
        max_batch_tokens: int | None = None,
        group_by_length: bool = True,
        compile: bool = False,
        share_image_prefix: bool = True,
        continuous_batching: bool = True,
        quantization: str = "none",
    ) -> None:
        """`compile`: static KV cache and a compiled decoding step (see
        llava_batch.operators.generation.loading.use_static_cache_and_compile).

        `rows_per_call` / `max_batch_tokens` cut what one Ray batch holds into generate calls, grouped by
        prompt length when `group_by_length` (see llava_batch.operators.generation.length_grouping); None = one call
        per batch.

        `share_image_prefix`: rows of a call that show the same image(s) before their own prompt text prefill
        that prefix once (llava_batch.operators.generation.prefix_sharing). Not with `compile`, whose static cache
        is made per call.

        `continuous_batching`: the rows of a batch queue for `rows_per_call` decoding slots, and a row that stops
        frees its slot for the next (llava_batch.operators.generation.continuous_batching), where the decoding
        settings allow it; with `compile`, on a static cache through a compiled step
        (llava_batch.operators.generation.static_slots); not for calls whose rows share an image prefix (those
        save more by sharing it). Which decoder a call gets: llava_batch.operators.generation.decoders.choose_decoder.

        `quantization`: 8bit / 4bit weights through bitsandbytes (see
        llava_batch.operators.generation.loading.load_model); not with `compile`."""
        from llava_batch.operators.preprocess import load_processor

        self.model_name = model
        self.model = load_model(
            model,
            dtype=dtype,
            attn_implementation=attn_implementation,
            trust_remote_code=trust_remote_code,
            device_map=device_map,
            quantization=quantization,
        )
        processor = load_processor(model, trust_remote_code=trust_remote_code)
        self.tokenizer = processor.tokenizer
        self.compile = compile
        # --compile: generate's static cache and compiled step, and for continuous batching static slot buffers
        # with a compiled step of their own, kept across calls so that each shape compiles once.
        self.slot_steps = SlotSteps(compiled=True) if compile else None
        if compile:
            use_static_cache_and_compile(self.model)
        # uint8 pixels from PreprocessForModel are expanded to the processor's float32 values on the model's device.
        table = pixel_table(getattr(processor, "image_processor", None))
        self.pixel_table = None if table is None else torch.from_numpy(table).to(self.model.device)
        self.generate_kwargs = dict(generate_kwargs)
        self.seed = seed
        self.padding_side = padding_side
        self.rows_per_call = rows_per_call
        self.max_batch_tokens = max_batch_tokens
        self.group_by_length = group_by_length
        self.image_token_id = getattr(self.model.config, "image_token_id", None)
        # Prefix keys are computed (and calls planned to keep sharing rows together) only where sharing can run.
        self.share_image_prefix = share_image_prefix and not compile and self.image_token_id is not None
        # As asked; choose_decoder applies the rest (compile, padding side, decoding settings). Turned off for good
        # when the model's cache turns out not to be rearrangeable.
        self.continuous_batching = continuous_batching
        # Rows per generate call that fit in memory, learned per prompt-length bucket after an OOM.
        self.max_rows_by_length: dict[int, int] = {}
        config = self.model.generation_config
        tokenizer_eos = {self.tokenizer.eos_token_id}
        self.eos_token_ids = set(stop_token_ids(config.eos_token_id, tokenizer_eos))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else config.pad_token_id
        self.pad_token_id = int(pad if pad is not None else min(self.eos_token_ids))
        # Started last: loading the model is start-up, not waiting for input.
        self.clock = ReplicaClock(memory_bytes=int(self.model.get_memory_footprint()))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        idle_s = self.clock.start_call()
        out = self.generate_batch(batch)
        stats = np.full(row_count(batch), None, dtype=object)
        if len(stats):
            stats[0] = json.dumps(self.clock.end_call(idle_s))
        out[REPLICA_STATS_COLUMN] = stats
        return out

    def generate_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        require_columns(batch, ("model_inputs",), stage="generate")
        size = row_count(batch)
        errors = column(batch, "error", size)
        texts = np.full(size, None, dtype=object)
        output_tokens = np.full(size, None, dtype=object)
        finish_reasons = np.full(size, None, dtype=object)
        ready = [
            index
            for index in range(size)
            if errors[index] is None and batch["model_inputs"][index] is not None
        ]
        overrides = column(batch, "generation", size)
        # Rows with per-prompt decoding settings run in their own generate calls.
        groups: dict[str, list[int]] = {}
        for index in ready:
            groups.setdefault(overrides[index] or "", []).append(index)
        for override, group in groups.items():
            unpacked = {index: unpack_arrays(batch["model_inputs"][index]) for index in group}
            kwargs = merge_generation(self.generate_kwargs, json.loads(override) if override else {})
            lengths = [len(unpacked[index]["input_ids"]) for index in group]
            keys = (
                prefix_keys([unpacked[index] for index in group], self.image_token_id)
                if self.share_image_prefix
                else None
            )
            calls = plan_generate_calls(
                lengths,
                max_rows=self.rows_per_call or len(group),
                max_tokens=self.max_batch_tokens,
                group_by_length=self.group_by_length,
                keep_together=keys,
            )
            decoder = self.choose_decoder(kwargs, keys)
            if decoder.whole_queue:
                # One queue in the planned order (similar lengths next to each other) feeding the slots.
                calls = [[position for call in calls for position in call]]
            for call in calls:
                indices = [group[position] for position in call]
                rows = [unpacked[index] for index in indices]
                ids = [str(batch["id"][index]) if "id" in batch else str(index) for index in indices]
                call_keys = None if keys is None else [keys[position] for position in call]
                try:
                    results = self.decode(decoder, rows, ids, kwargs, call_keys)
                except Exception as error:  # a failing call becomes error rows, the replica keeps serving
                    logger.exception("generation failed for a batch of %d rows", len(rows))
                    results = [RowResult.failed(f"generate: {type(error).__name__}: {error}")] * len(rows)
                for index, (text, count, reason, error) in zip(indices, results):
                    texts[index], output_tokens[index], finish_reasons[index] = text, count, reason
                    errors[index] = errors[index] if error is None else error
        out = {name: values for name, values in batch.items() if name != "model_inputs"}
        out.update(
            generated_text=texts,
            num_output_tokens=output_tokens,
            finish_reason=finish_reasons,
            model=np.full(size, self.model_name, dtype=object),
            error=errors,
        )
        return out

    def choose_decoder(self, kwargs: dict[str, Any], keys: list[bytes | None] | None) -> Decoder:
        """This group's decoder, from this replica's settings (llava_batch.operators.generation.decoders)."""
        choice = choose_decoder(
            self.model,
            kwargs,
            self.eos_token_ids,
            continuous_batching=self.continuous_batching,
            compile=self.compile,
            padding_side=self.padding_side,
            prefix_keys=keys,
        )
        return make_decoder(choice, self, kwargs)

    def decode(
        self,
        decoder: Decoder,
        rows: list[dict[str, np.ndarray]],
        ids: list[str],
        kwargs: dict[str, Any],
        keys: list[bytes | None] | None,
    ) -> list[RowResult]:
        """One planned call through `decoder`, with out-of-memory backoff. A model whose cache continuous batching
        cannot rearrange (a sliding window, say) turns it off for this replica, and the call is decoded again."""
        try:
            return with_oom_backoff(
                decoder,
                rows,
                ids,
                keys,
                rows_per_call=self.rows_per_call,
                max_rows_by_length=self.max_rows_by_length,
            )
        except CacheNotRearrangeable as error:
            if decoder.kind != CONTINUOUS:
                raise
            logger.warning("continuous batching off for this replica (%s); model.generate runs", error)
            self.continuous_batching = False
            return self.decode(self.choose_decoder(kwargs, keys), rows, ids, kwargs, keys)

    def collate_on_device(self, rows: list[dict[str, Any]], padding_side: str) -> dict[str, torch.Tensor]:
        inputs = left_pad_collate(rows, self.pad_token_id, padding_side=padding_side)
        floating = self.model.dtype
        return {
            name: tensor.to(self.model.device, dtype=floating if tensor.is_floating_point() else tensor.dtype)
            for name, tensor in inputs.items()
        }

    def prefill_shared_prefixes(
        self, rows: list[dict[str, Any]], plan: SharedPrefixPlan
    ) -> tuple[dict[str, torch.Tensor], Any]:
        """Prefill each distinct image prefix once; returns the inputs `generate` continues from (prefix +
        each row's own tokens) and the KV cache holding the prefixes, one batch entry per row."""
        prefixes = [
            {**rows[index], "input_ids": rows[index]["input_ids"][: plan.prefix_lengths[index]]}
            for index in plan.representatives
        ]
        prefix_batch = self.collate_on_device(prefixes, "left")
        cache = prefill_prefixes(self.model, prefix_batch, plan)
        input_ids, attention_mask = continuation_inputs(rows, plan, prefix_batch, self.pad_token_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask}, cache

    def expand_row_pixels(self, row: dict[str, np.ndarray]) -> dict[str, Any]:
        """A row's uint8 pixels as the processor's float32 values on the model's device; float32 rows as they are.
        Per row, before collation, so the zero padding between rows stays zero as with float32 transport."""
        pixels = row.get("pixel_values")
        if pixels is None or pixels.dtype != np.uint8:
            return row
        if self.pixel_table is None:
            raise ValueError(
                f"uint8 pixel values arrived but {self.model_name}'s image processor has no exact uint8 table; "
                "preprocess with compact_pixels=False"
            )
        device_pixels = torch.from_numpy(pixels).to(self.model.device)
        return {**row, "pixel_values": expand_pixels(device_pixels, self.pixel_table)}
