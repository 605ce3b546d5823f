"""Rows that show the model the same image(s) under different prompts share one prefill of that image.

A LLaVA prompt puts the image tokens first (`USER: <image>\\n{prompt} ASSISTANT:`), so a prompt set, or the
questions of `instruct` about one image, repeat hundreds to thousands of identical image tokens per row. Here the
replica runs the vision tower and the prefill of that shared prefix once per distinct image, copies its KV cache
to every row that shows it, and `generate` continues from there with only each row's own text. Greedy outputs are
those of the plain batched call (checked in tests/operators/test_prefix_sharing.py); the saving is prefill work.
"""

from __future__ import annotations

import hashlib
import inspect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


def prefix_length(input_ids: np.ndarray, image_token_id: int) -> int:
    """Tokens up to and including the last image token, leaving at least one token for the row's own part (the
    step after a restored cache must feed something to produce the first new token); 0 without image tokens."""
    positions = np.flatnonzero(np.asarray(input_ids) == image_token_id)
    return 0 if len(positions) == 0 else min(int(positions[-1]) + 1, len(input_ids) - 1)


# Values of each vision array a fingerprint reads: enough to tell photos apart, 0.2% of a LLaVA-NeXT row.
FINGERPRINT_SAMPLES = 4096


def prefix_key(row: dict[str, np.ndarray], image_token_id: int, *, sample: bool = False) -> bytes | None:
    """Equal for rows whose prefix tokens and vision inputs (pixels, image sizes) are identical; None for rows
    without an image prefix. A digest of the content, so equal keys mean equal inputs, not merely equal paths.
    `sample`: a fingerprint over evenly spaced values only; equal for equal rows, but rows that differ elsewhere
    can collide, so it only says which rows need the full key."""
    length = prefix_length(row["input_ids"], image_token_id)
    if length == 0:
        return None
    digest = hashlib.blake2b(digest_size=16)
    digest.update(np.ascontiguousarray(row["input_ids"][:length], dtype=np.int64).tobytes())
    for name in sorted(row):
        if name == "input_ids":
            continue
        value = np.ascontiguousarray(row[name])
        digest.update(f"|{name}|{value.dtype}|{value.shape}|".encode())
        if sample:
            value = value.reshape(-1)[:: max(1, value.size // FINGERPRINT_SAMPLES)]
        digest.update(value.tobytes())
    return digest.digest()


def prefix_keys(rows: Sequence[dict[str, np.ndarray]], image_token_id: int) -> list[bytes | None]:
    """A key per row, equal exactly where `prefix_key` is. Hashing every pixel costs 1.6 ms for a LLaVA-NeXT row,
    so a cheap fingerprint finds the rows that may share and only those are hashed whole: a batch where every row
    shows its own image (plain captioning) pays for fingerprints only."""
    fingerprints = [prefix_key(row, image_token_id, sample=True) for row in rows]
    counts = Counter(fingerprints)
    keys: list[bytes | None] = []
    for row, fingerprint in zip(rows, fingerprints):
        if fingerprint is None:
            keys.append(None)
        elif counts[fingerprint] == 1:
            keys.append(b"alone:" + fingerprint)
        else:
            keys.append(b"whole:" + (prefix_key(row, image_token_id) or b""))
    return keys


@dataclass(frozen=True)
class SharedPrefixPlan:
    """Which distinct prefix each row continues (`group[row]`), the row that represents each prefix, and where
    each row's prefix ends."""

    group: list[int]
    representatives: list[int]
    prefix_lengths: list[int]

    @property
    def saves_work(self) -> bool:
        return len(self.representatives) < len(self.group)


def plan_shared_prefixes(
    rows: Sequence[dict[str, np.ndarray]], keys: Sequence[bytes | None], image_token_id: int
) -> SharedPrefixPlan | None:
    """None when no two rows share a prefix, or some row has none (such a call runs the plain way)."""
    if any(key is None for key in keys):
        return None
    index_of: dict[bytes, int] = {}
    representatives: list[int] = []
    group: list[int] = []
    for row_index, key in enumerate(keys):
        if key not in index_of:
            index_of[key] = len(representatives)
            representatives.append(row_index)
        group.append(index_of[key])
    plan = SharedPrefixPlan(
        group, representatives, [prefix_length(row["input_ids"], image_token_id) for row in rows]
    )
    return plan if plan.saves_work else None


def cache_argument_name(model: torch.nn.Module) -> str:
    """transformers renamed the KV cache argument `past_key_values` -> `cache` during 5.x (5.24 has `cache`)."""
    return "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """What `generate` derives for left-padded rows: real tokens count 0, 1, 2, ... whatever padding precedes."""
    return (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)


def prefill(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Any]:
    """One forward pass over left-padded prompts, vision tower included: (each row's last logits, KV cache)."""
    output = model(
        **batch,
        position_ids=position_ids_from_mask(batch["attention_mask"]),
        use_cache=True,
        logits_to_keep=1,
    )
    return output.logits[:, -1, :], getattr(output, cache_argument_name(model))


def prefill_prefixes(
    model: torch.nn.Module, prefix_batch: dict[str, torch.Tensor], plan: SharedPrefixPlan
) -> Any:
    """One forward pass over the distinct prefixes (vision tower included); returns their KV cache with one
    batch entry per row of the call, in row order."""
    _, cache = prefill(model, prefix_batch)
    index = torch.tensor(plan.group, dtype=torch.long, device=prefix_batch["input_ids"].device)
    cache.reorder_cache(index)  # an index_select on every layer's keys and values: repeats copy a prefix
    return cache


def continuation_inputs(
    rows: Sequence[dict[str, np.ndarray]],
    plan: SharedPrefixPlan,
    prefix_batch: dict[str, torch.Tensor],
    pad_token_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) for `generate` after the prefill: each row is its group's left-padded prefix
    (the positions the cache holds) followed by its own tokens, left-padded within that second region. The
    padding in the middle is masked out, and position ids derived from the mask continue right after the prefix."""
    prefix_ids, prefix_mask = prefix_batch["input_ids"], prefix_batch["attention_mask"]
    own_parts = [row["input_ids"][length:] for row, length in zip(rows, plan.prefix_lengths)]
    own_width = max(len(part) for part in own_parts)
    prefix_width = prefix_ids.shape[1]
    input_ids = torch.full((len(rows), prefix_width + own_width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row_index, (part, group) in enumerate(zip(own_parts, plan.group)):
        input_ids[row_index, :prefix_width] = prefix_ids[group].cpu()
        attention_mask[row_index, :prefix_width] = prefix_mask[group].cpu()
        input_ids[row_index, prefix_width + own_width - len(part) :] = torch.from_numpy(
            np.asarray(part, dtype=np.int64)
        )
        attention_mask[row_index, prefix_width + own_width - len(part) :] = 1
    device = prefix_ids.device
    return input_ids.to(device), attention_mask.to(device)
