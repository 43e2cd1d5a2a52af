"""The reference a search scores trials against, and the quality floor they must meet.

Optuna-free: `verify` scores a profile's images with it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune import options
from autotune.exceptions import AutotuneError, TrialFailed
from autotune.hardware import Fingerprint
from autotune.measure import quality
from autotune.profile import QualityFloor, Workload
from autotune.worker import protocol
from autotune.worker.process import Worker

if TYPE_CHECKING:
    from collections.abc import Callable

    Events = Callable[[str, dict[str, Any]], None]


@dataclass
class Scoring:
    """The reference a search scores trials against, and the floor they must meet (if any)."""

    path: Path
    reference: Any
    noise_floor: dict[str, float]
    metrics: tuple[str, ...]
    metric: str  # the one that is the floor (or, for a Pareto search without a floor, the quality objective)
    minimum: float | None
    floor_spec: options.FloorSpec | None
    reference_steps: int

    def meets(self, scores: dict[str, float]) -> bool:
        return self.minimum is None or quality.meets(scores, self.metric, self.minimum)

    def violation(self, scores: dict[str, float] | None) -> float:
        """<= 0 when the floor is met; scaled so that PSNR in dB and SSIM in [0, 1] weigh alike for the sampler."""
        if self.minimum is None:
            return 0.0
        achieved = (scores or {}).get(self.metric, quality.worst_score(self.metric))
        return (self.minimum - achieved) / (10.0 if self.metric == "psnr" else 0.1)

    def floor_record(self) -> QualityFloor:
        spec = self.floor_spec
        return QualityFloor(metric=self.metric, min=round(float(self.minimum), 4), reference_steps=self.reference_steps,
                            relative_percent=spec.value if spec and spec.relative else None)

    def task(self) -> protocol.ScoreAgainst:
        """What a worker needs to score a trial against this reference."""
        return protocol.ScoreAgainst(str(self.path), tuple(self.metrics), self.metric, self.minimum)


def prepare_reference(worker: Worker, model_id: str, workload: Workload, reference_steps: int,
                      fingerprint: Fingerprint, floor: options.FloorSpec | None, timeout_s: float,
                      emit: Events) -> Scoring:
    """The reference rendering from the cache, or rendered now (once per model, workload and library versions)."""
    metrics = tuple(dict.fromkeys([*quality.DEFAULT_METRICS, *([floor.metric] if floor else [])]))
    key = quality.reference_key(model_id, workload.model_dump(), reference_steps, fingerprint.hardware.device,
                                fingerprint.software.model_dump())
    path = quality.reference_path(key)
    if path.exists():
        emit("phase", {"message": f"reference rendering from the cache: {path}"})
    else:
        emit("phase", {"message": f"rendering the reference ({reference_steps} steps, fp32, the pipeline's own "
                                  "scheduler)"})
        try:
            worker.request(protocol.Reference(workload, reference_steps, str(path), metrics), timeout_s=timeout_s)
        except TrialFailed as failure:
            raise AutotuneError(f"cannot render the reference: {failure.reason}") from None
    images, noise_floor = quality.load_reference(path)
    if floor is not None and floor.metric not in noise_floor:
        raise AutotuneError(f"the cached reference {path} has no {floor.metric} noise floor; delete it to re-render")
    return Scoring(path=path, reference=images, noise_floor=noise_floor, metrics=metrics,
                   metric=floor.metric if floor else "ssim", minimum=floor.resolve(noise_floor) if floor else None,
                   floor_spec=floor, reference_steps=reference_steps)
