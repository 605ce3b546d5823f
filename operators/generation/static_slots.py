"""Continuous batching on a static KV cache, so that `--compile` can compile (and on a GPU, CUDA-graph) the
decoding step and still refill slots.

`model.generate` with a static cache compiles its decoding step but decodes one batch until its longest row ends;
the continuous batcher (continuous_batching.py) refills slots but rebuilds its cache at each refill, so the shapes
of its decoding step change and a compiled step would recompile every time. Here every shape is fixed for a run:

- the cache is one buffer per layer of `slots` rows x `capacity` positions (the longest prompt plus
  `max_new_tokens`, rounded up to a power of two so that few capacities ever occur);
- a row owns one slot: its prompt's KV entries are copied to positions 0..p-1 of it after an eager prefill, and
  each decoding step writes every row's new entry at that row's own position (a scatter), so rows of different
  lengths never need to line up and a finished row's slot is reused without moving any other row;
- the attention mask is a [slots, capacity] boolean table, passed to the model as a 4-D additive mask (which
  transformers uses as given), and the position ids count each row's real tokens.

So the decoding step is always called with tensors of the same shapes and addresses: `torch.compile` compiles it
once per (slots, capacity), and mode "reduce-overhead" records it as a CUDA graph on a GPU. Prefills stay eager:
their shapes vary with every group of admitted rows. Greedy outputs equal the plain batched call's
(tests/operators/test_continuous_batching.py; compiled for real in
tests/operators/test_static_slots_compiled.py).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from llava_batch.operators.generation.continuous_batching import REFILL_FRACTION, ContinuousBatcher, _Slots

logger = logging.getLogger(__name__)

SMALLEST_CAPACITY = 64


def slot_capacity(longest_prompt: int, max_new_tokens: int) -> int:
    """Cache positions per slot: room for the longest prompt and every new token, rounded up to a power of two
    (at least SMALLEST_CAPACITY) so that a replica compiles its step for a handful of capacities, not one per call."""
    needed = longest_prompt + max_new_tokens
    return max(SMALLEST_CAPACITY, 1 << (needed - 1).bit_length())


class SlotLayer(CacheLayerMixin):
    """One layer's keys and values for every slot, allocated once. `update` writes the step's one new entry per
    row at that row's position in `write_at` (shared by all layers) and returns the whole buffers; the mask says
    which positions each row attends to."""

    is_compileable = True
    is_sliding = False

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, write_at: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values, self.write_at = keys, values, write_at
        self.device, self.is_initialized = keys.device, True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        raise AssertionError("slot buffers are allocated before the first step")

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows, heads, _, key_dim = key_states.shape
        # A replica spread over GPUs keeps each layer's buffers on its layer's device.
        at = self.write_at.to(self.keys.device).view(rows, 1, 1, 1)
        self.keys.scatter_(2, at.expand(rows, heads, 1, key_dim), key_states)
        self.values.scatter_(2, at.expand(rows, heads, 1, value_states.shape[-1]), value_states)
        return self.keys, self.values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.keys.shape[-2], 0

    def get_seq_length(self) -> int:
        return self.keys.shape[-2]

    def get_max_length(self) -> int:
        return self.keys.shape[-2]


class SlotStep:
    """The static buffers of one (slots, capacity) and the decoding step over them, compiled or eager. Kept by the
    replica across calls (`SlotSteps`), so a compiled step is reused by every later call of the same shape."""

    def __init__(
        self, model: torch.nn.Module, prefilled: Any, slots: int, capacity: int, compiled: bool
    ) -> None:
        from llava_batch.operators.generation.prefix_sharing import cache_argument_name

        device = model.device
        self.model, self.slots, self.capacity = model, slots, capacity
        self.cache_name = cache_argument_name(model)
        self.write_at = torch.zeros(slots, dtype=torch.long, device=device)
        layers = []
        for layer in prefilled.layers:  # heads, head size and dtype of each layer, from a prefill's cache
            keys = layer.keys.new_zeros((slots, layer.keys.shape[1], capacity, layer.keys.shape[-1]))
            values = layer.values.new_zeros((slots, layer.values.shape[1], capacity, layer.values.shape[-1]))
            torch._dynamo.mark_static_address(
                keys
            )  # buffers mutated in place: a CUDA graph needs fixed addresses
            torch._dynamo.mark_static_address(values)
            layers.append(SlotLayer(keys, values, self.write_at))
        self.cache = Cache(layers=layers)
        self.mask = torch.zeros((slots, capacity), dtype=torch.bool, device=device)
        self.masked = torch.finfo(model.dtype).min
        self.step = self._step
        if compiled:
            mode = "reduce-overhead" if device.type == "cuda" else "default"
            self.step = torch.compile(self._step, mode=mode, dynamic=False)
            logger.info("decoding step compiled (%s) for %d slots x %d positions", mode, slots, capacity)

    def matches(self, prefilled: Any) -> bool:
        """The buffers fit this prefill's layers (same count, heads, head size and dtype)."""
        return len(prefilled.layers) == len(self.cache.layers) and all(
            ours.keys.shape[1] == theirs.keys.shape[1]
            and ours.keys.shape[-1] == theirs.keys.shape[-1]
            and ours.keys.dtype == theirs.keys.dtype
            for ours, theirs in zip(self.cache.layers, prefilled.layers)
        )

    def _step(self, input_ids: torch.Tensor, position_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        additive = torch.zeros(mask.shape, dtype=self.model.dtype, device=mask.device).masked_fill(
            ~mask, self.masked
        )
        output = self.model(
            input_ids=input_ids,
            attention_mask=additive[:, None, None, :],  # 4-D: transformers uses it as given
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_name: self.cache},
        )
        return output.logits[:, -1, :]


class SlotSteps:
    """A replica's SlotSteps by (slots, capacity): a compiled step is compiled once per shape, not per call."""

    def __init__(self, compiled: bool) -> None:
        self.compiled = compiled
        self.steps: dict[tuple[int, int], SlotStep] = {}

    def get(self, model: torch.nn.Module, prefilled: Any, slots: int, capacity: int) -> SlotStep:
        step = self.steps.get((slots, capacity))
        if step is None or not step.matches(prefilled):
            step = self.steps[(slots, capacity)] = SlotStep(model, prefilled, slots, capacity, self.compiled)
        return step


class _StaticSlots:
    """What ContinuousBatcher._choose reads and writes, per slot: the row in it (-1: empty), its new tokens, whether
    it is done (an empty slot counts as done), its last token; plus each slot's next position id."""

    def __init__(self, slots: int, device: torch.device) -> None:
        self.rows = [-1] * slots
        self.tokens: list[list[int]] = [[] for _ in range(slots)]
        self.done = [True] * slots
        self.last = torch.zeros(slots, dtype=torch.long, device=device)
        self.positions = torch.zeros(slots, dtype=torch.long, device=device)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def live(self) -> list[int]:
        return [slot for slot, done in enumerate(self.done) if not done]

    @property
    def free(self) -> list[int]:
        return [slot for slot, done in enumerate(self.done) if done]


class StaticSlotBatcher(ContinuousBatcher):
    """ContinuousBatcher's admission, prefill, token choice and stopping rules over a SlotStep's fixed buffers.
    `steps` keeps the buffers (and a compiled step) across calls; None: eager, buffers for this call only."""

    def __init__(self, *args: Any, steps: SlotSteps | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slot_steps = steps if steps is not None else SlotSteps(compiled=False)

    @torch.inference_mode()
    def run(self, rows: Sequence[Any], generators: list[torch.Generator] | None = None) -> list[list[int]]:
        if self.settings.do_sample and generators is None:
            raise ValueError("sampling needs one generator per row (row_generators)")
        if not rows:
            return []
        self.generators = generators
        capacity = slot_capacity(max(len(row["input_ids"]) for row in rows), self.settings.max_new_tokens)
        slots = min(self.slots, max(1, self.max_tokens // capacity)) if self.max_tokens else self.slots
        waiting = deque(range(len(rows)))
        finished: dict[int, list[int]] = {}
        batch = _StaticSlots(slots, self.model.device)
        step: SlotStep | None = None
        refill_at = max(1, int(slots * REFILL_FRACTION))
        while waiting or batch.live:
            free = batch.free
            if waiting and (len(free) == slots or len(free) >= refill_at):
                admitted = [waiting.popleft() for _ in range(min(len(free), len(waiting)))]
                joined = self._prefill(admitted, rows)
                if step is None:
                    step = self.slot_steps.get(self.model, joined.cache, slots, capacity)
                    step.mask.zero_()
                    step.mask[:, 0] = True  # an empty slot attends to position 0 only (see _release)
                    step.write_at.zero_()
                self._place(step, batch, joined, free)
            else:
                self._static_step(step, batch)
            self._release(step, batch, finished)
        return [finished[index] for index in range(len(rows))]

    def _place(self, step: SlotStep, batch: _StaticSlots, joined: _Slots, free: list[int]) -> None:
        """Copy each admitted row's prompt entries (the real ones, right-aligned in the left-padded prefill) to
        positions 0..p-1 of a free slot, and take over its first token."""
        lengths = joined.mask.sum(dim=1).tolist()
        width = joined.mask.shape[1]
        for index, (slot, length) in enumerate(zip(free, lengths)):
            for ours, theirs in zip(step.cache.layers, joined.cache.layers):
                ours.keys[slot, :, :length] = theirs.keys[index, :, width - length :]
                ours.values[slot, :, :length] = theirs.values[index, :, width - length :]
            step.mask[slot] = False
            step.mask[slot, :length] = True
            step.write_at[slot] = length
            batch.positions[slot] = joined.positions[index]
            batch.last[slot] = joined.last[index]
            batch.rows[slot], batch.tokens[slot], batch.done[slot] = (
                joined.rows[index],
                joined.tokens[index],
                False,
            )

    def _static_step(self, step: SlotStep, batch: _StaticSlots) -> None:
        slots = torch.arange(len(batch), device=step.mask.device)
        step.mask[slots, step.write_at] = True  # each row attends to the entry this step writes
        logits = step.step(batch.last[:, None], batch.positions[:, None], step.mask)
        step.write_at += 1
        batch.positions += 1
        self.steps += 1
        self.row_steps += len(batch.live)
        self._choose(batch, logits)

    def _release(self, step: SlotStep, batch: _StaticSlots, finished: dict[int, list[int]]) -> None:
        """A row that emitted a stop token or reached max_new_tokens is done; its slot is free at once. A free
        slot attends to its position 0 only (never to nothing, which would give NaNs) and writes there."""
        for slot in batch.live:
            tokens = batch.tokens[slot]
            if tokens[-1] in self.settings.eos_token_ids or len(tokens) >= self.settings.max_new_tokens:
                finished[batch.rows[slot]] = tokens
                batch.done[slot], batch.rows[slot], batch.tokens[slot] = True, -1, []
                step.mask[slot] = False
                step.mask[slot, 0] = True
                step.write_at[slot] = 0
