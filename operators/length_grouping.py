"""Split the rows a replica receives into generate calls of similar prompt length, to waste less on padding.

Rows arrive in windows of a few batches; sorting a window by length keeps streaming and memory bounded while
LLaVA-NeXT rows, whose image-token counts differ by thousands, stop padding each other to the longest.
"""

from __future__ import annotations

from collections.abc import Sequence


def plan_generate_calls(
    lengths: Sequence[int],
    *,
    max_rows: int,
    max_tokens: int | None = None,
    group_by_length: bool = True,
) -> list[list[int]]:
    """Row indices per generate call: at most `max_rows` rows, and at most `max_tokens` padded prompt tokens
    (rows x longest prompt) when a token budget is set. A row longer than the budget still gets a call alone."""
    order = (
        sorted(range(len(lengths)), key=lambda index: lengths[index])
        if group_by_length
        else range(len(lengths))
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
