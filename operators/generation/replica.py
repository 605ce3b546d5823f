"""GPU side: one model replica per actor; decodes a window of preprocessed rows, left-padded, through its slots
(llava_batch.operators.generation.continuous_batching) or in batched `model.generate` calls.

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
import zlib
from typing import Any

import numpy as np
import torch

from llava_batch.operators.batch import column, require_columns, row_count
from llava_batch.operators.generation.continuous_batching import (
    CacheNotRearrangeable,
    ContinuousBatcher,
    DecodingSettings,
    decoding_settings,
    row_generators,
    stop_token_ids,
)
from llava_batch.operators.generation.length_grouping import plan_generate_calls
from llava_batch.operators.generation.prefix_sharing import (
    SharedPrefixPlan,
    cache_argument_name,
    continuation_inputs,
    plan_shared_prefixes,
    prefill_prefixes,
    prefix_keys,
)
from llava_batch.operators.model_source import resolve_model_source
from llava_batch.operators.pixel_transport import expand_pixels, pixel_table
from llava_batch.operators.tensor_codec import unpack_arrays

logger = logging.getLogger(__name__)


def resolve_dtype(name: str, device_type: str) -> torch.dtype:
    """`auto` is bfloat16 on GPUs that support it (else float16), float32 on CPU."""
    if name != "auto":
        return getattr(torch, name)
    if device_type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model(
    model: str,
    *,
    dtype: str = "auto",
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    device_map: dict[str, Any] | str | None = None,
    quantization: str = "none",
) -> torch.nn.Module:
    """Load once per actor; `device_map` comes from llava_batch.operators.generation.placement when a replica spans
    several GPUs. `quantization` 8bit / 4bit loads the weights through bitsandbytes (`quantization_config`)."""
    from transformers import AutoModelForImageTextToText

    model = resolve_model_source(model)
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    kwargs: dict[str, Any] = {
        "dtype": resolve_dtype(dtype, device_type),
        "attn_implementation": attn_implementation,
        "trust_remote_code": trust_remote_code,
    }
    if quantization != "none":
        kwargs["quantization_config"] = quantization_config(quantization, kwargs["dtype"])
    if device_map == "balanced":
        device_map = _balanced_over_visible_gpus(model, kwargs["dtype"], trust_remote_code)
    if device_map is None and quantization != "none":
        # bitsandbytes quantizes while loading onto a device map; a quantized model cannot be moved afterwards.
        device_map = {"": torch.cuda.current_device()} if device_type == "cuda" else "cpu"
    if device_map is not None:
        kwargs["device_map"] = device_map
    loaded = AutoModelForImageTextToText.from_pretrained(model, **kwargs)
    if device_map is None:
        loaded.to(device_type)
    return loaded.eval()


def quantization_config(quantization: str, compute_dtype: torch.dtype) -> Any:
    """bitsandbytes settings: LLM.int8 for 8bit; NF4 weights computing in the replica's dtype for 4bit."""
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype
        )
    raise ValueError(f"quantization: {quantization!r} is not one of none, 8bit, 4bit")


def _balanced_over_visible_gpus(model: str, dtype: torch.dtype, trust_remote_code: bool) -> dict[str, Any]:
    """A replica owns the GPUs Ray made visible to it; spread the layers evenly, leaving 15% for activations."""
    from transformers import AutoConfig

    from llava_batch.operators.generation.placement import balanced_device_map, empty_model

    count = torch.cuda.device_count()
    memory = int(torch.cuda.get_device_properties(0).total_memory * 0.85)
    config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code)
    device_map = balanced_device_map(empty_model(config), count, memory, dtype)
    logger.info("replica spread over %d GPUs: %s", count, device_map)
    return device_map


def use_static_cache_and_compile(model: torch.nn.Module) -> None:
    """Static KV cache, so that `generate` compiles the decoding step with torch.compile (transformers compiles
    `forward` itself when the cache is static and a `compile_config` is set: `GenerationMixin.
    _valid_auto_compile_criteria`). On CUDA the mode is "reduce-overhead" (CUDA graphs); elsewhere compilation is
    forced on with the default mode, which works but compiles slowly and gains little. Each new batch shape (rows,
    prompt length + max_new_tokens) allocates a new cache and compiles again."""
    from transformers import CompileConfig

    on_cuda = model.device.type == "cuda"
    compile_config = CompileConfig(mode="reduce-overhead" if on_cuda else "default")
    if not on_cuda:
        compile_config._compile_all_devices = True  # transformers' switch for compiling off-GPU
    model.generation_config.cache_implementation = "static"
    model.generation_config.compile_config = compile_config
    logger.info("static KV cache and torch.compile (%s) on %s", compile_config.mode, model.device)


def left_pad_collate(
    rows: list[dict[str, np.ndarray]], pad_token_id: int, *, padding_side: str = "left"
) -> dict[str, torch.Tensor]:
    """Stack unpadded rows into one batch.

    Token ids are padded on `padding_side` (left for decoder-only generation, so every row's last prompt token
    sits at the same position). Values may be numpy arrays or torch tensors (already on the model's device).
    Vision arrays are concatenated along dim 0 (one entry per image) and zero-padded
    in the other dims, which is how LLaVA-NeXT's processor pads its variable number of anyres patches; the model
    drops those padded patches using `image_sizes`.
    """
    longest = max(len(row["input_ids"]) for row in rows)
    input_ids = np.full((len(rows), longest), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), longest), dtype=np.int64)
    for index, row in enumerate(rows):
        ids = row["input_ids"]
        span = slice(longest - len(ids), longest) if padding_side == "left" else slice(0, len(ids))
        input_ids[index, span] = ids
        attention_mask[index, span] = 1
    batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(attention_mask)}
    for name in rows[0]:
        if name != "input_ids":
            batch[name] = _concat_zero_padded([_as_tensor(row[name]) for row in rows])
    return batch


def _as_tensor(value: np.ndarray | torch.Tensor) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))


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


def _concat_zero_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    target = tuple(max(sizes) for sizes in zip(*(tensor.shape[1:] for tensor in tensors)))
    padded = []
    for tensor in tensors:
        afters = [want - have for want, have in zip(target, tensor.shape[1:])]
        # torch.nn.functional.pad takes (before, after) pairs starting from the last dimension.
        widths = [width for after in reversed(afters) for width in (0, after)]
        padded.append(torch.nn.functional.pad(tensor, widths) if any(afters) else tensor)
    return torch.cat(padded, dim=0)


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
        """`compile`: static KV cache and a compiled decoding step (see `use_static_cache_and_compile`).

        `rows_per_call` / `max_batch_tokens` cut what one Ray batch holds into generate calls, grouped by
        prompt length when `group_by_length` (see llava_batch.operators.generation.length_grouping); None = one call per batch.

        `share_image_prefix`: rows of a call that show the same image(s) before their own prompt text prefill
        that prefix once (llava_batch.operators.generation.prefix_sharing). Not with `compile`, whose static cache is made per call.

        `continuous_batching`: the rows of a batch queue for `rows_per_call` decoding slots, and a row that stops
        frees its slot for the next (llava_batch.operators.generation.continuous_batching), where the decoding settings allow it; not
        with `compile`, and not for calls whose rows share an image prefix (those save more by sharing it).

        `quantization`: 8bit / 4bit weights through bitsandbytes (see `load_model`); not with `compile`."""
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
        self.share_image_prefix = share_image_prefix and not compile and self.image_token_id is not None
        self.continuous_batching = continuous_batching and not compile and padding_side == "left"
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
            continuous = self.continuous_settings(kwargs, keys)
            if continuous is not None:
                # One queue in the planned order (similar lengths next to each other) feeding the slots.
                calls = [[position for call in calls for position in call]]
            for call in calls:
                indices = [group[position] for position in call]
                rows = [unpacked[index] for index in indices]
                ids = [str(batch["id"][index]) if "id" in batch else str(index) for index in indices]
                call_keys = None if keys is None else [keys[position] for position in call]
                try:
                    results = self.generate_with_backoff(rows, ids, kwargs, call_keys, continuous)
                except Exception as error:  # a failing call becomes error rows, the replica keeps serving
                    logger.exception("generation failed for a batch of %d rows", len(rows))
                    results = [(None, None, None, f"generate: {type(error).__name__}: {error}")] * len(rows)
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

    def continuous_settings(
        self, kwargs: dict[str, Any], keys: list[bytes | None] | None
    ) -> DecodingSettings | None:
        """The settings for continuous batching, or None where this call runs `model.generate`: switched off,
        rows sharing an image prefix (prefix sharing saves more there), or settings it does not reproduce."""
        if not self.continuous_batching:
            return None
        if keys is not None and None not in keys and len(set(keys)) < len(keys):
            return None
        return decoding_settings(self.model, kwargs, self.eos_token_ids)

    def generate_with_backoff(
        self,
        rows: list[dict[str, np.ndarray]],
        ids: list[str],
        kwargs: dict[str, Any],
        prefix_keys: list[bytes | None] | None = None,
        continuous: DecodingSettings | None = None,
    ) -> list[tuple[str | None, int | None, str | None, str | None]]:
        """Generate in chunks (or, with `continuous`, through that many slots); on out-of-memory, halve the chunk
        and retry, and remember the smaller size for batches of similar length (the same power-of-two bucket of
        the longest prompt)."""
        bucket = max(len(row["input_ids"]) for row in rows).bit_length()
        limit = min(
            len(rows), self.rows_per_call or len(rows), self.max_rows_by_length.get(bucket, len(rows))
        )
        results: list[tuple[str | None, int | None, str | None, str | None]] = []
        start = 0
        while start < len(rows):
            end = len(rows) if continuous is not None else start + limit
            chunk = rows[start:end]
            try:
                if continuous is not None:
                    results.extend(self.generate_continuous(chunk, ids[start:end], continuous, slots=limit))
                else:
                    keys = None if prefix_keys is None else prefix_keys[start:end]
                    results.extend(
                        self.generate_rows(
                            chunk, seed_key="|".join(ids[start:end]), prefix_keys=keys, **kwargs
                        )
                    )
            except torch.OutOfMemoryError:
                if limit == 1:
                    raise
                limit = max(1, min(limit, len(chunk)) // 2)
                self.max_rows_by_length[bucket] = limit
                logger.warning("out of memory; retrying with %d rows per call", limit)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            except CacheNotRearrangeable as error:  # a sliding window, say
                logger.warning("continuous batching off for this replica (%s); model.generate runs", error)
                self.continuous_batching, continuous = False, None
                continue
            start += len(chunk)
        return results

    def generate_continuous(
        self, rows: list[dict[str, np.ndarray]], ids: list[str], settings: DecodingSettings, *, slots: int
    ) -> list[tuple[str | None, int | None, str | None, str | None]]:
        """Every row through `slots` decoding slots (llava_batch.operators.generation.continuous_batching); rows are expanded and collated
        on the device only when admitted."""
        batcher = ContinuousBatcher(
            self.model,
            settings,
            collate=lambda chosen: self.collate_on_device(
                [self.expand_row_pixels(row) for row in chosen], "left"
            ),
            slots=slots,
            max_tokens=self.max_batch_tokens,
        )
        generators = row_generators(ids, self.seed, self.model.device) if settings.do_sample else None
        started = time.monotonic()
        new_tokens = batcher.run(rows, generators)
        self.clock.generate_s += time.monotonic() - started
        self.clock.decode_steps += batcher.steps
        self.clock.decode_row_steps += batcher.row_steps
        self.clock.decode_slot_steps += batcher.steps * batcher.slots
        return [self._finish(tokens, settings.eos_token_ids) for tokens in new_tokens]

    @torch.inference_mode()
    def generate_rows(
        self,
        rows: list[dict[str, np.ndarray]],
        *,
        seed_key: str = "",
        prefix_keys: list[bytes | None] | None = None,
        **generate_kwargs: Any,
    ) -> list[tuple[str | None, int | None, str | None, str | None]]:
        """(text, num_output_tokens, finish_reason, error) per row, in order. With `prefix_keys` (from
        llava_batch.operators.generation.prefix_sharing.prefix_keys), rows sharing an image prefix prefill it once."""
        plan = None
        if prefix_keys is not None and self.padding_side == "left":
            plan = plan_shared_prefixes(rows, prefix_keys, self.image_token_id)
        rows = [self.expand_row_pixels(row) for row in rows]
        # Sampling is seeded per batch from the row ids, so a re-run of the same batch samples the same text.
        torch.manual_seed(zlib.crc32(f"{self.seed}|{seed_key}".encode()))
        kwargs = {**(generate_kwargs or self.generate_kwargs), "pad_token_id": self.pad_token_id}
        started = time.monotonic()
        if plan is None:
            inputs = self.collate_on_device(rows, self.padding_side)
            output = self.model.generate(**inputs, **kwargs)
        else:
            inputs, cache = self.prefill_shared_prefixes(rows, plan)
            self.clock.prefills_saved += len(plan.group) - len(plan.representatives)
            output = self.model.generate(**inputs, **kwargs, **{cache_argument_name(self.model): cache})
        self.clock.generate_s += time.monotonic() - started
        new_tokens = output[:, inputs["input_ids"].shape[1] :].cpu().tolist()
        stop_ids = stop_token_ids(kwargs.get("eos_token_id"), self.eos_token_ids)
        return [self._finish(tokens, stop_ids) for tokens in new_tokens]

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

    def _finish(self, tokens: list[int], stop_ids: set[int] | frozenset[int]) -> tuple[str, int, str, None]:
        stop_at = next((i for i, token in enumerate(tokens) if token in stop_ids), None)
        # No end-of-sequence token among the new tokens means the row ran out of its max_new_tokens budget.
        kept, reason = (tokens, "length") if stop_at is None else (tokens[: stop_at + 1], "stop")
        text = self.tokenizer.decode(kept, skip_special_tokens=True).strip()
        return text, len(kept), reason, None
