"""Continuous batching: a replica decodes in a fixed number of slots, and a row that ends frees its slot for the
next waiting row instead of idling until the longest row of its batch is done.

`model.generate` decodes a batch until its last row stops, feeding the finished rows padding all the while; when
caption lengths vary (10 to 200 tokens is common) most of the batch can be finished rows. Here each active row
keeps its own KV entries, right-aligned in one left-padded cache (padding is masked, position ids count real
tokens only), so rows admitted later join the running batch. Greedy outputs are those of the plain batched call
(tests/operators/test_continuous_batching.py); sampling draws from a generator per row seeded from its id, so a
row samples the same text whatever rows share its batch. Chosen by llava_batch.operators.generation.decoders when the decoding settings
are ones reproduced here (`decoding_settings`); anything else runs `model.generate`.
"""

from __future__ import annotations

import copy
import logging
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

from llava_batch.operators.generation.prefix_sharing import cache_argument_name, prefill

logger = logging.getLogger(__name__)

# Free slots wait until a quarter of them are free (or none are busy), so new rows are prefilled in groups and the
# cache is copied once for several finished rows: a prefill and a copy per finished row would interrupt decoding
# slot by slot. While rows are waiting this leaves about an eighth of the slots empty on average.
REFILL_FRACTION = 0.25

# Generation settings reproduced here, and settings whose value here changes nothing (beam-search-only knobs,
# bookkeeping). Any other setting, or one of NEUTRAL at another value, sends a call to `model.generate`.
HANDLED = {"max_new_tokens", "min_new_tokens", "do_sample", "temperature", "top_k", "top_p", "eos_token_id"}
IGNORED = {
    "max_length",  # max_new_tokens is always set, and generate lets it win
    "pad_token_id",
    "bos_token_id",
    "decoder_start_token_id",
    "transformers_version",
    "_from_model_config",
    "use_cache",
    "length_penalty",
    "early_stopping",
    "low_memory",
    "disable_compile",
    # --compile sets these for generate's own static cache; the slots compile their step on their own cache.
    "cache_implementation",
    "compile_config",
}
NEUTRAL: dict[str, Any] = {
    "num_beams": 1,
    "num_return_sequences": 1,
    "num_beam_groups": 1,
    "repetition_penalty": 1.0,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "encoder_repetition_penalty": 1.0,
    "diversity_penalty": 0.0,
    "guidance_scale": 1.0,
    "renormalize_logits": False,
    "remove_invalid_values": False,
    "output_attentions": False,
    "output_hidden_states": False,
    "output_scores": False,
    "output_logits": False,
    "return_dict_in_generate": False,
    "min_length": 0,
}


@dataclass(frozen=True)
class DecodingSettings:
    """What the slots decode with: the part of a GenerationConfig this module reproduces."""

    max_new_tokens: int
    eos_token_ids: frozenset[int]
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0


def stop_token_ids(
    eos_token_id: int | list[int] | None, default: set[int] | frozenset[int]
) -> frozenset[int]:
    """A generation config's `eos_token_id` (one id or a list) as a set; `default` where it is unset."""
    if eos_token_id is None:
        return frozenset(default)
    return frozenset(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id])


def decoding_settings(
    model: torch.nn.Module, generate_kwargs: dict[str, Any], default_eos: set[int]
) -> DecodingSettings | None:
    """The model's generation config with `generate_kwargs` on top, if every setting in it is reproduced here;
    None otherwise (beam search, repetition penalties, ...), and the caller runs `model.generate` as before."""
    config = copy.deepcopy(model.generation_config)
    unused = config.update(**{key: value for key, value in generate_kwargs.items() if key != "pad_token_id"})
    unsupported = sorted(unused) + sorted(
        key
        for key, value in config.to_diff_dict().items()
        if key not in HANDLED and key not in IGNORED and not (key in NEUTRAL and value == NEUTRAL[key])
    )
    if unsupported or not config.max_new_tokens:
        logger.info("continuous batching off for these settings (%s): model.generate runs them", unsupported)
        return None
    eos_ids = stop_token_ids(config.eos_token_id, default_eos)
    sample = bool(config.do_sample)
    return DecodingSettings(
        max_new_tokens=int(config.max_new_tokens),
        eos_token_ids=eos_ids,
        min_new_tokens=int(config.min_new_tokens or 0),
        do_sample=sample,
        temperature=float(config.temperature) if sample and config.temperature else 1.0,
        top_k=int(config.top_k) if sample and config.top_k else 0,
        top_p=float(config.top_p) if sample and config.top_p is not None else 1.0,
    )


def row_generators(ids: Sequence[str], seed: int, device: torch.device) -> list[torch.Generator]:
    """One sampling generator per row, seeded from the job seed and the row's id."""
    generators = []
    for row_id in ids:
        generator = torch.Generator(device=device)
        generator.manual_seed(zlib.crc32(f"{seed}|{row_id}".encode()))
        generators.append(generator)
    return generators


class CacheNotRearrangeable(Exception):
    """The model's KV cache is not plain dynamic layers, so rows cannot be merged into or dropped from it here; the
    caller runs `model.generate` instead."""


class GrowingLayer(DynamicLayer):
    """A KV cache layer with spare room after its last position: a decoding step writes its new position in
    place. transformers' DynamicLayer concatenates instead, copying the whole cache of the batch every step, which
    on a GPU moves as many bytes as the attention itself reads."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, spare: int) -> None:
        super().__init__()
        self.device, self.is_initialized, self.spare = keys.device, True, spare
        self._allocate(keys, values)

    def _allocate(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        length = keys.shape[-2]
        self.key_buffer = keys.new_empty((*keys.shape[:-2], length + self.spare, keys.shape[-1]))
        self.value_buffer = values.new_empty((*values.shape[:-2], length + self.spare, values.shape[-1]))
        self.key_buffer[..., :length, :] = keys
        self.value_buffer[..., :length, :] = values
        self.keys, self.values = self.key_buffer[..., :length, :], self.value_buffer[..., :length, :]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        length, new = self.keys.shape[-2], key_states.shape[-2]
        if length + new > self.key_buffer.shape[-2]:
            self._allocate(self.keys, self.values)
        self.key_buffer[..., length : length + new, :] = key_states
        self.value_buffer[..., length : length + new, :] = value_states
        self.keys = self.key_buffer[..., : length + new, :]
        self.values = self.value_buffer[..., : length + new, :]
        return self.keys, self.values


class _Slots:
    """The rows in the batch: their KV cache (left-padded, each row's entries right-aligned), attention mask, the
    next position id and last token of each, their new tokens so far, and which of them are done. A done row stays
    in the batch (its outputs ignored) until the batch is rebuilt, so that the cache is copied once per refill
    rather than once per finished row."""

    def __init__(self, rows: list[int], cache: Any, mask: torch.Tensor) -> None:
        self.rows = rows
        self.cache = cache
        self.mask = mask
        self.positions = mask.sum(dim=1)  # real tokens so far = the next token's position id
        self.tokens: list[list[int]] = [[] for _ in rows]
        self.done = [False] * len(rows)
        self.last = torch.zeros(len(rows), dtype=torch.long, device=mask.device)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def live(self) -> list[int]:
        """Batch positions of the rows still decoding."""
        return [position for position, done in enumerate(self.done) if not done]

    def rebuild(self, spare: int, other: _Slots | None = None) -> None:
        """One copy of the cache: drop the done rows, append `other`'s rows (the shorter side left-padded), drop
        the leading columns that are padding for every row left, and leave `spare` free positions at the end."""
        keep = self.live
        index = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        masks = [self.mask.index_select(0, index)] + ([other.mask] if other is not None else [])
        width = max(mask.shape[1] for mask in masks)
        mask = torch.cat([_left_pad(part, width, dim=1) for part in masks])
        start = int((mask.sum(dim=0) > 0).nonzero()[0])
        theirs = other.cache.layers if other is not None else [None] * len(self.cache.layers)
        for position, (layer, their_layer) in enumerate(zip(self.cache.layers, theirs)):
            parts = [(layer.keys.index_select(0, index), layer.values.index_select(0, index))]
            if their_layer is not None:
                parts.append((their_layer.keys, their_layer.values))
            keys = torch.cat([_left_pad(part[0], width) for part in parts])[:, :, start:]
            values = torch.cat([_left_pad(part[1], width) for part in parts])[:, :, start:]
            self.cache.layers[position] = GrowingLayer(keys, values, spare)
        self.mask = mask[:, start:]
        self.positions = self.positions.index_select(0, index)
        self.last = self.last.index_select(0, index)
        self.rows = [self.rows[i] for i in keep]
        self.tokens = [self.tokens[i] for i in keep]
        self.done = [False] * len(keep)
        if other is not None:
            self.positions = torch.cat([self.positions, other.positions])
            self.last = torch.cat([self.last, other.last])
            self.rows += other.rows
            self.tokens += other.tokens
            self.done += other.done


def _left_pad(tensor: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def cache_is_rearrangeable(cache: Any) -> bool:
    """Only plain dynamic layers (full attention, no sliding window or quantisation) are merged and trimmed here."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


class ContinuousBatcher:
    """Decodes `rows` through `slots` slots. `collate(rows)` turns unpadded rows into a left-padded batch on the
    model's device (pixels included); the tokens of each row come back in input order, the stop token included."""

    def __init__(
        self,
        model: torch.nn.Module,
        settings: DecodingSettings,
        *,
        collate: Callable[[list[Any]], dict[str, torch.Tensor]],
        slots: int,
        max_tokens: int | None = None,
    ) -> None:
        self.model = model
        self.settings = settings
        self.collate = collate
        self.slots = max(1, slots)
        self.max_tokens = max_tokens
        self.cache_name = cache_argument_name(model)
        self.steps = 0  # decoding forwards
        self.row_steps = 0  # live rows summed over those forwards: occupancy = row_steps / (steps x slots)
        self.refill_at = max(1, int(self.slots * REFILL_FRACTION))
        # Free positions a rebuilt cache keeps after its last one: the longest a row can still grow, so that a
        # batch's cache is reallocated at its rebuilds only.
        self.spare = settings.max_new_tokens
        eos = sorted(settings.eos_token_ids)
        self.eos = torch.tensor(eos, dtype=torch.long, device=model.device)
        self.warpers = self._warpers()

    def _warpers(self) -> list[Any]:
        """transformers' own warpers, in the order `generate` applies them, so the sampled distribution is its."""
        from transformers.generation.logits_process import (
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        settings = self.settings
        if not settings.do_sample:
            return []
        warpers: list[Any] = []
        if settings.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k:
            warpers.append(TopKLogitsWarper(top_k=settings.top_k))
        if settings.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=settings.top_p))
        return warpers

    @torch.inference_mode()
    def run(self, rows: Sequence[Any], generators: list[torch.Generator] | None = None) -> list[list[int]]:
        if self.settings.do_sample and generators is None:
            raise ValueError("sampling needs one generator per row (row_generators)")
        self.generators = generators
        waiting = deque(range(len(rows)))
        finished: dict[int, list[int]] = {}
        batch: _Slots | None = None
        while waiting or batch is not None:
            live = len(batch.live) if batch is not None else 0
            if waiting and (live == 0 or self.slots - live >= self.refill_at):
                admitted = self._admit(waiting, rows, self.slots - live, batch)
                if admitted:
                    joined = self._prefill(admitted, rows)
                    if batch is None:
                        joined.rebuild(self.spare)  # into growing layers
                        batch = joined
                    else:
                        batch.rebuild(self.spare, joined)
                    batch = self._retire(batch, finished, bool(waiting))
                    continue
            if batch is not None:
                self._decode_step(batch)
                batch = self._retire(batch, finished, bool(waiting))
        return [finished[index] for index in range(len(rows))]

    def _admit(self, waiting: deque[int], rows: Sequence[Any], free: int, batch: _Slots | None) -> list[int]:
        """Up to `free` waiting rows, in order, within the token budget (rows x longest cache row); a row alone
        is always admitted, as a generate call of one row over the budget still runs."""
        admitted: list[int] = []
        width = batch.mask.shape[1] if batch is not None else 0
        count = len(batch.live) if batch is not None else 0
        while waiting and len(admitted) < free:
            candidate = len(rows[waiting[0]]["input_ids"])
            wider = max(width, candidate)
            if (
                self.max_tokens
                and (count + len(admitted) + 1) * wider > self.max_tokens
                and count + len(admitted)
            ):
                break
            admitted.append(waiting.popleft())
            width = wider
        return admitted

    def _prefill(self, admitted: list[int], rows: Sequence[Any]) -> _Slots:
        """One forward over the admitted rows' prompts (vision tower included); picks each row's first token."""
        batch = self.collate([rows[index] for index in admitted])
        last_logits, cache = prefill(self.model, batch)
        if not cache_is_rearrangeable(cache):
            raise CacheNotRearrangeable(f"{type(cache).__name__} layers cannot be rearranged between rows")
        slots = _Slots(list(admitted), cache, batch["attention_mask"].long())
        self._choose(slots, last_logits)
        return slots

    def _decode_step(self, batch: _Slots) -> None:
        ones = torch.ones((len(batch), 1), dtype=batch.mask.dtype, device=batch.mask.device)
        batch.mask = torch.cat([batch.mask, ones], dim=1)
        output = self.model(
            input_ids=batch.last[:, None],
            attention_mask=batch.mask,
            position_ids=batch.positions[:, None],
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_name: batch.cache},
        )
        batch.positions = batch.positions + 1
        self.steps += 1
        self.row_steps += len(batch.live)
        self._choose(batch, output.logits[:, -1, :])

    def _choose(self, batch: _Slots, logits: torch.Tensor) -> None:
        """The next token of every live row from its last logits, as `generate` picks it."""
        scores = logits.to(dtype=torch.float32)
        counts = torch.tensor([len(tokens) for tokens in batch.tokens], device=scores.device)
        too_short = counts < self.settings.min_new_tokens
        if bool(too_short.any()):  # MinNewTokensLengthLogitsProcessor: no stop token before min_new_tokens
            vocabulary = torch.arange(scores.shape[1], device=scores.device)
            scores[too_short[:, None] & torch.isin(vocabulary, self.eos)] = -float("inf")
        if self.settings.do_sample:
            for warper in self.warpers:
                scores = warper(None, scores)
            probabilities = torch.softmax(scores, dim=-1)
            chosen = torch.zeros(len(batch), dtype=torch.long, device=scores.device)
            for position in batch.live:  # a done row's draw would be thrown away: its generator stays put
                generator = self.generators[batch.rows[position]]
                chosen[position] = torch.multinomial(probabilities[position], 1, generator=generator)[0]
        else:
            chosen = scores.argmax(dim=-1)
        batch.last = chosen
        for position, token in enumerate(chosen.tolist()):
            if not batch.done[position]:
                batch.tokens[position].append(token)

    def _retire(self, batch: _Slots, finished: dict[int, list[int]], rows_waiting: bool) -> _Slots | None:
        """Rows that emitted a stop token or reached max_new_tokens are done and their slots free. The batch is
        rebuilt without them when waiting rows can take their slots (the refill does that) or, with none waiting,
        once a quarter of it is done: until then a done row costs its share of each step, but no copy."""
        for position in batch.live:
            tokens = batch.tokens[position]
            if tokens[-1] in self.settings.eos_token_ids or len(tokens) >= self.settings.max_new_tokens:
                finished[batch.rows[position]] = tokens
                batch.done[position] = True
        live = len(batch.live)
        if live == 0:
            return None
        done = len(batch) - live
        if done and not rows_waiting and done >= max(1, int(len(batch) * REFILL_FRACTION)):
            batch.rebuild(self.spare)
        return batch
