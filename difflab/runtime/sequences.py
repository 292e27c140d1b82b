"""Sequence helpers shared by every layer (no torch)."""

from __future__ import annotations


def evenly_spaced(count: int, keep: int) -> list[int]:
    """At most `keep` indices spread evenly over 0..count-1, the first and last included."""
    if count <= keep:
        return list(range(count))
    if keep <= 1:
        return [count - 1]
    return [round(i * (count - 1) / (keep - 1)) for i in range(keep)]  # distinct: the step exceeds 1
