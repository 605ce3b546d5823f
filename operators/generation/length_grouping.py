"""Split the rows a replica receives into generate calls of similar prompt length, to waste less on padding.

Rows arrive in windows of a few batches; sorting a window by length keeps streaming and memory bounded while
LLaVA-NeXT rows, whose image-token counts differ by thousands, stop padding each other to the longest.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence


def plan_generate_calls(
    lengths: Sequence[int],
    *,
    max_rows: int,
    max_tokens: int | None = None,
    group_by_length: bool = True,
    keep_together: Sequence[Hashable | None] | None = None,
) -> list[list[int]]:
    """Row indices per generate call: at most `max_rows` rows, and at most `max_tokens` padded prompt tokens
    (rows x longest prompt) when a token budget is set. A row longer than the budget still gets a call alone.

    Rows with an equal, non-None `keep_together` key (the same image under several prompts) stay adjacent, so
    they land in one call and share its image prefill (llava_batch.operators.generation.prefix_sharing) unless a call boundary cuts them."""
    keys = keep_together if keep_together is not None else [None] * len(lengths)
    first: dict[Hashable, int] = {}
    longest: dict[Hashable, int] = {}
    for index, key in enumerate(keys):
        if key is not None:
            first.setdefault(key, index)
            longest[key] = max(longest.get(key, 0), lengths[index])
    # A group sorts as one unit: under its longest prompt, then its first row's position.
    anchor = [index if key is None else first[key] for index, key in enumerate(keys)]
    sort_length = [lengths[index] if key is None else longest[key] for index, key in enumerate(keys)]
    order = sorted(
        range(len(lengths)),
        key=lambda index: (
            (sort_length[index], anchor[index], index) if group_by_length else (anchor[index], index)
        ),
    )
    calls: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for index in order:
        candidate_longest = max(longest, lengths[index])
        over_rows = len(current) + 1 > max_rows
        over_tokens = max_tokens is not None and candidate_longest * (len(current) + 1) > max_tokens
        if current and (over_rows or over_tokens):
            calls.append(current)
            current, candidate_longest = [], lengths[index]
        current.append(index)
        longest = candidate_longest
    if current:
        calls.append(current)
    return calls


def padding_counts(lengths: Sequence[int], calls: list[list[int]]) -> tuple[int, int]:
    """(padded positions, all prompt positions) over the calls: what left padding wastes."""
    padded = total = 0
    for call in calls:
        longest = max(lengths[index] for index in call)
        total += longest * len(call)
        padded += sum(longest - lengths[index] for index in call)
    return padded, total


def padding_share(lengths: Sequence[int], calls: list[list[int]]) -> float:
    padded, total = padding_counts(lengths, calls)
    return padded / total if total else 0.0
