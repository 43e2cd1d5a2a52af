"""How much faster one configuration is than another, with the uncertainty the measurements carry.

A ratio of two medians printed to two decimals says nothing of how the runs spread: on a busy machine one slow run
of the default configuration made a 1.4x speed-up read as 33x. Here a ratio comes with a bootstrap interval of the
ratio of medians (each side's runs resampled on its own), and its verdict follows the interval: faster only when
the whole interval is above 1, slower only when it is below, else the measurements cannot tell.

Optuna-free and torch-free: the tuner, `verify` and the benchmarks all use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .host_load import BUSY_SHARE

CONFIDENCE = 0.95
RESAMPLES = 4000

Verdict = Literal["faster", "slower", "cannot tell"]


@dataclass(frozen=True)
class Ratio:
    """`median` is the ratio of the medians; `low`..`high` its bootstrap interval at `confidence`;
    `others_cpu_share` the share of the CPU other processes used meanwhile (None: not known)."""

    median: float
    low: float
    high: float
    confidence: float = CONFIDENCE
    others_cpu_share: float | None = None

    @property
    def busy(self) -> bool:
        """Other work used enough of the machine while this was measured that the interval cannot be trusted."""
        return self.others_cpu_share is not None and self.others_cpu_share > BUSY_SHARE

    @property
    def verdict(self) -> Verdict:
        if self.busy:
            return "cannot tell"
        if self.low > 1:
            return "faster"
        if self.high < 1:
            return "slower"
        return "cannot tell"

    def show(self) -> str:
        """`2.31x (1.92-2.70x)`; when the interval spans 1, the claim is withheld: `cannot tell (0.81-3.10x)`, and
        when other work took the machine: `cannot tell, machine busy (7.95-16.74x)`."""
        interval = f"{self.low:.2f}-{self.high:.2f}x"
        if self.busy:
            return f"cannot tell, machine busy ({interval})"
        if self.verdict == "cannot tell":
            return f"cannot tell ({interval})"
        return f"{self.median:.2f}x ({interval})"

    def record(self) -> dict[str, float]:
        shares = {} if self.others_cpu_share is None else {"others_cpu_share": round(self.others_cpu_share, 3)}
        return {"median": round(self.median, 4), "low": round(self.low, 4), "high": round(self.high, 4),
                "confidence": self.confidence, **shares}


def ratio_of_medians(numerator: Sequence[float], denominator: Sequence[float], confidence: float = CONFIDENCE,
                     resamples: int = RESAMPLES, seed: int = 0) -> Ratio | None:
    """median(numerator) / median(denominator) with its percentile bootstrap interval; None without samples on
    either side or with a zero median below (there is no ratio to give).

    >>> ratio_of_medians([2.0, 2.1, 1.9, 2.0], [1.0, 1.0, 1.1, 0.9]).verdict
    'faster'
    """
    top, bottom = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    if top.size == 0 or bottom.size == 0 or not np.median(bottom) > 0:
        return None
    rng = np.random.default_rng(seed)
    tops = np.median(rng.choice(top, size=(resamples, top.size)), axis=1)
    bottoms = np.median(rng.choice(bottom, size=(resamples, bottom.size)), axis=1)
    ratios = tops / np.where(bottoms > 0, bottoms, np.nan)
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(ratios, [tail, 100 - tail])
    return Ratio(float(np.median(top) / np.median(bottom)), float(low), float(high), confidence)
