"""Which seed each item of a job renders with.

Seeds are drawn right before an item's batch begins and recorded before it renders, so a re-run
after a crash draws the same image; the strategies derive later items from item 0's recorded seed.
"""

from __future__ import annotations

import secrets
from enum import StrEnum

# Fresh seeds fit in 32 bits, like A1111's, so users can type them back in.
SEED_RANGE = 2**32
# Seeds are stored as signed 64-bit integers.
_SEED_MODULUS = 2**63


class SeedStrategy(StrEnum):
    """How the items of a `count>1` job get their seeds."""

    random = "random"
    sequential = "sequential"
    fixed = "fixed"


def first_seed(requested: int | None) -> int:
    """Item 0's seed: the requested one, else a fresh one."""
    return requested if requested is not None else secrets.randbelow(SEED_RANGE)


def item_seed(item_index: int, strategy: SeedStrategy, first: int) -> int:
    """The seed of item `item_index` given item 0's (`first`).

    `random` (the contract's default): a fresh seed for every item after the first. `sequential`:
    item 0's seed plus the item's index, as A1111 numbers a batch. `fixed`: item 0's seed for all.
    """
    if item_index == 0 or strategy is SeedStrategy.fixed:
        return first
    if strategy is SeedStrategy.sequential:
        return (first + item_index) % _SEED_MODULUS
    return secrets.randbelow(SEED_RANGE)
