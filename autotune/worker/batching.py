"""How a trial grows its batch: the search's policy, handed to the worker as one frozen object.

A throughput trial times batch sizes 1, 2, 4, ... and stops at the first of: a batch that does not pay (images/s up
by less than `min_gain`), one over the memory budget or rendering unusable images, or a next (doubled) batch that
the memory measured so far, extrapolated linearly, says will not fit. Whether the trial can still beat the others
at the same batch is the study's pruner's question, asked by the driver after each batch (`trials`). Nothing here
imports torch or Optuna.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# A bigger batch must raise images/s by at least this fraction to be worth the next one.
MIN_GAIN = 0.05


class Measured(Protocol):
    batch_size: int
    peak_memory_bytes: int | None
    image_problem: str | None

    @property
    def images_per_s_median(self) -> float: ...


def doublings(max_batch: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to `max_batch`."""
    sizes, size = [], 1
    while size <= max_batch:
        sizes.append(size)
        size *= 2
    return tuple(sizes)


@dataclass(frozen=True)
class BatchPolicy:
    """The batch sizes a trial may time, in order, and when it stops.

    >>> policy = BatchPolicy(sizes=doublings(8), memory_budget_bytes=4 * 2**30)
    >>> policy.worth_next(measured_so_far)  # doctest: +SKIP
    """

    sizes: tuple[int, ...] = (1,)
    memory_budget_bytes: int | None = None
    min_gain: float = MIN_GAIN

    def worth_next(self, measured: list[Measured]) -> bool:
        """Whether to time the next batch size after the batches `measured` so far (the last one just now)."""
        last = measured[-1]
        if last.batch_size == self.sizes[-1]:
            return False
        budget = self.memory_budget_bytes
        if last.image_problem or (budget and last.peak_memory_bytes and last.peak_memory_bytes > budget):
            return False
        if len(measured) < 2:
            return True
        previous = measured[-2]
        if last.images_per_s_median < previous.images_per_s_median * (1 + self.min_gain):
            return False
        if budget and last.peak_memory_bytes and previous.peak_memory_bytes:
            # Memory grows about linearly with the batch: predict the next (doubled) batch from the last two.
            per_image = (last.peak_memory_bytes - previous.peak_memory_bytes) / max(
                1, last.batch_size - previous.batch_size)
            if last.peak_memory_bytes + per_image * last.batch_size > budget:
                return False
        return True
