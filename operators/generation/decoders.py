"""The replica's decoding paths, chosen once per call (`choose_decoder`): continuous batching through decoding slots,
a shared image prefill then `model.generate`, or batched `model.generate`, each wrapped in the same OOM backoff.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from llava_batch.operators.generation.continuous_batching import (
    ContinuousBatcher,
    DecodingSettings,
    decoding_settings,
    row_generators,
    stop_token_ids,
)
from llava_batch.operators.generation.prefix_sharing import (
    SharedPrefixPlan,
    cache_argument_name,
    plan_shared_prefixes,
)
from llava_batch.operators.generation.static_slots import SlotSteps, StaticSlotBatcher

logger = logging.getLogger(__name__)

# The decoder kinds. CONTINUOUS: rows queue for decoding slots, a row that stops frees its slot (continuous_batching).
# SHARED_PREFIX: rows showing the same image(s) prefill them once, then `model.generate` (prefix_sharing).
# GENERATE: batched `model.generate` (with --compile: on a static cache, through the compiled step).
CONTINUOUS, SHARED_PREFIX, GENERATE = "continuous", "shared_prefix", "generate"

Row = dict[str, np.ndarray]
PrefixKeys = Sequence[bytes | None]


class RowResult(NamedTuple):
    """What every decoder returns for a row; a row with `error` set has None in the other fields."""

    text: str | None
    num_output_tokens: int | None
    finish_reason: str | None
    error: str | None

    @classmethod
    def failed(cls, error: str) -> RowResult:
        return cls(None, None, None, error)


class DecodingReplica(Protocol):
    """What the decoders use of the replica (llava_batch.operators.generation.replica.Generate)."""

    model: torch.nn.Module
    tokenizer: Any
    clock: Any  # ReplicaClock: the decoders add their generate seconds, saved prefills and decoding steps
    seed: int
    padding_side: str
    pad_token_id: int
    image_token_id: int | None
    max_batch_tokens: int | None
    eos_token_ids: set[int]
    slot_steps: SlotSteps | None  # static slot buffers and compiled steps, kept across calls (--compile only)

    def collate_on_device(self, rows: list[dict[str, Any]], padding_side: str) -> dict[str, torch.Tensor]: ...

    def expand_row_pixels(self, row: Row) -> dict[str, Any]: ...

    def prefill_shared_prefixes(
        self, rows: list[dict[str, Any]], plan: SharedPrefixPlan
    ) -> tuple[dict[str, torch.Tensor], Any]: ...


@dataclass(frozen=True)
class DecoderChoice:
    kind: str  # CONTINUOUS, SHARED_PREFIX or GENERATE
    settings: DecodingSettings | None = None  # the decoding slots' settings, for CONTINUOUS
    static_slots: bool = False  # CONTINUOUS on a static cache with a compiled step (--compile)


def shares_a_prefix(prefix_keys: PrefixKeys | None) -> bool:
    """Two rows of the call show the same image(s) before their own text (keys from prefix_sharing.prefix_keys)."""
    return prefix_keys is not None and None not in prefix_keys and len(set(prefix_keys)) < len(prefix_keys)


def choose_decoder(
    model: Any,
    generate_kwargs: dict[str, Any],
    eos_token_ids: set[int],
    *,
    continuous_batching: bool,
    compile: bool,
    padding_side: str,
    prefix_keys: PrefixKeys | None,
) -> DecoderChoice:
    """The one place a call's decoding path is picked, first that applies:

    1. CONTINUOUS: asked for, left padding, no two rows sharing an image prefix (sharing it saves more), and
       decoding settings the slots reproduce (`decoding_settings` of the model's generation config under
       `generate_kwargs`; not beam search, ...). With `compile`, the slots sit in a static cache and the decoding
       step is compiled (static_slots);
    2. SHARED_PREFIX: the rows carry prefix keys (the replica's share_image_prefix), left padding, no `compile`;
    3. GENERATE otherwise (with `compile`: generate's own static cache and compiled step).
    """
    if continuous_batching and padding_side == "left" and not shares_a_prefix(prefix_keys):
        settings = decoding_settings(model, generate_kwargs, eos_token_ids)
        if settings is not None:
            return DecoderChoice(CONTINUOUS, settings, static_slots=compile)
    if prefix_keys is not None and padding_side == "left" and not compile:
        return DecoderChoice(SHARED_PREFIX)
    return DecoderChoice(GENERATE)


# `run(rows, ids, prefix_keys, limit)`: the rows' results in order, decoding at most `limit` rows at once.
DecodeRun = Callable[[list[Row], list[str], PrefixKeys | None, int], list[RowResult]]


@dataclass(frozen=True)
class Decoder:
    kind: str
    run: DecodeRun
    # True: every row goes in one run through `limit` slots (continuous batching); False: runs of `limit` rows.
    whole_queue: bool = False


def make_decoder(choice: DecoderChoice, replica: DecodingReplica, generate_kwargs: dict[str, Any]) -> Decoder:
    """The chosen path bound to the replica and this call's generate kwargs."""
    if choice.kind == CONTINUOUS:
        settings = choice.settings
        assert settings is not None, "a CONTINUOUS choice carries its decoding settings"
        return Decoder(
            CONTINUOUS,
            lambda rows, ids, keys, limit: decode_continuous(
                replica, rows, ids, settings, slots=limit, static_slots=choice.static_slots
            ),
            whole_queue=True,
        )
    if choice.kind == SHARED_PREFIX:
        return Decoder(
            SHARED_PREFIX,
            lambda rows, ids, keys, limit: decode_generate(
                replica, rows, ids, generate_kwargs, prefix_keys=keys
            ),
        )
    return Decoder(
        GENERATE, lambda rows, ids, keys, limit: decode_generate(replica, rows, ids, generate_kwargs)
    )


def with_oom_backoff(
    decoder: Decoder,
    rows: list[Row],
    ids: list[str],
    prefix_keys: PrefixKeys | None,
    *,
    rows_per_call: int | None,
    max_rows_by_length: dict[int, int],
) -> list[RowResult]:
    """Run `decoder` over `rows`, at most `rows_per_call` at once; on out-of-memory, halve that and retry the rows
    not yet decoded, and remember the smaller size in `max_rows_by_length` for batches of similar length (the same
    power-of-two bucket of the longest prompt). Out of memory with one row at once is raised."""
    bucket = max(len(row["input_ids"]) for row in rows).bit_length()
    limit = min(len(rows), rows_per_call or len(rows), max_rows_by_length.get(bucket, len(rows)))
    results: list[RowResult] = []
    start = 0
    while start < len(rows):
        end = len(rows) if decoder.whole_queue else start + limit
        chunk = rows[start:end]
        keys = None if prefix_keys is None else prefix_keys[start:end]
        try:
            results.extend(decoder.run(chunk, ids[start:end], keys, limit))
        except torch.OutOfMemoryError:
            if limit == 1:
                raise
            limit = max(1, min(limit, len(chunk)) // 2)
            max_rows_by_length[bucket] = limit
            logger.warning("out of memory; retrying with %d rows per call", limit)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        start += len(chunk)
    return results


def decode_continuous(
    replica: DecodingReplica,
    rows: list[Row],
    ids: list[str],
    settings: DecodingSettings,
    *,
    slots: int,
    static_slots: bool = False,
) -> list[RowResult]:
    """Every row through `slots` decoding slots (llava_batch.operators.generation.continuous_batching); rows are
    expanded and collated on the device only when admitted. `static_slots`: on the replica's static slot buffers
    with its compiled step (llava_batch.operators.generation.static_slots). Raises CacheNotRearrangeable for a
    model whose KV cache rows cannot be merged or dropped (a sliding window, say)."""
    batcher_class = StaticSlotBatcher if static_slots else ContinuousBatcher
    extra = {"steps": replica.slot_steps} if static_slots else {}
    batcher = batcher_class(
        replica.model,
        settings,
        collate=lambda chosen: replica.collate_on_device(
            [replica.expand_row_pixels(row) for row in chosen], "left"
        ),
        slots=slots,
        max_tokens=replica.max_batch_tokens,
        **extra,
    )
    generators = row_generators(ids, replica.seed, replica.model.device) if settings.do_sample else None
    started = time.monotonic()
    new_tokens = batcher.run(rows, generators)
    replica.clock.generate_s += time.monotonic() - started
    replica.clock.decode_steps += batcher.steps
    replica.clock.decode_row_steps += batcher.row_steps
    replica.clock.decode_slot_steps += batcher.steps * batcher.slots
    return [finish_row(replica.tokenizer, tokens, settings.eos_token_ids) for tokens in new_tokens]


@torch.inference_mode()
def decode_generate(
    replica: DecodingReplica,
    rows: list[Row],
    ids: list[str],
    generate_kwargs: dict[str, Any],
    *,
    prefix_keys: PrefixKeys | None = None,
) -> list[RowResult]:
    """One batched `model.generate` over `rows`. With `prefix_keys` (from
    llava_batch.operators.generation.prefix_sharing.prefix_keys), rows sharing an image prefix prefill it once."""
    plan = None
    if prefix_keys is not None:
        plan = plan_shared_prefixes(rows, prefix_keys, replica.image_token_id)
    rows = [replica.expand_row_pixels(row) for row in rows]
    # Sampling is seeded per batch from the row ids, so a re-run of the same batch samples the same text.
    torch.manual_seed(zlib.crc32(f"{replica.seed}|{'|'.join(ids)}".encode()))
    kwargs = {**generate_kwargs, "pad_token_id": replica.pad_token_id}
    model = replica.model
    started = time.monotonic()
    if plan is None:
        inputs = replica.collate_on_device(rows, replica.padding_side)
        output = model.generate(**inputs, **kwargs)
    else:
        inputs, cache = replica.prefill_shared_prefixes(rows, plan)
        replica.clock.prefills_saved += len(plan.group) - len(plan.representatives)
        output = model.generate(**inputs, **kwargs, **{cache_argument_name(model): cache})
    replica.clock.generate_s += time.monotonic() - started
    new_tokens = output[:, inputs["input_ids"].shape[1] :].cpu().tolist()
    stop_ids = stop_token_ids(kwargs.get("eos_token_id"), replica.eos_token_ids)
    return [finish_row(replica.tokenizer, tokens, stop_ids) for tokens in new_tokens]


def finish_row(tokenizer: Any, tokens: list[int], stop_ids: set[int] | frozenset[int]) -> RowResult:
    """A row's new tokens up to and with its first stop token, decoded; "length" when none stopped it."""
    stop_at = next((i for i, token in enumerate(tokens) if token in stop_ids), None)
    # No end-of-sequence token among the new tokens means the row ran out of its max_new_tokens budget.
    kept, reason = (tokens, "length") if stop_at is None else (tokens[: stop_at + 1], "stop")
    text = tokenizer.decode(kept, skip_special_tokens=True).strip()
    return RowResult(text, len(kept), reason, None)
