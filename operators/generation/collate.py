"""Collating unpadded rows into one batch: token ids padded on one side with their attention mask, vision arrays
concatenated per image and zero-padded to the largest.
"""

from __future__ import annotations

import numpy as np
import torch


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


def _concat_zero_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    target = tuple(max(sizes) for sizes in zip(*(tensor.shape[1:] for tensor in tensors)))
    padded = []
    for tensor in tensors:
        afters = [want - have for want, have in zip(target, tensor.shape[1:])]
        # torch.nn.functional.pad takes (before, after) pairs starting from the last dimension.
        widths = [width for after in reversed(afters) for width in (0, after)]
        padded.append(torch.nn.functional.pad(tensor, widths) if any(afters) else tensor)
    return torch.cat(padded, dim=0)
