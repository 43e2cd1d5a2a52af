"""What a study records for the workers that join it and the exports that finish it: `StudySpec`, typed.

Optuna keeps its distributions typed and serialises them only at the storage; the spec does the same. Its fields are
the values the search works with (a `Workload`, a `Hardware`, `Domain`s, a `FloorSpec`, `ModelFacts`); `record`
writes them as JSON into the study's user attrs, one attr per field, and `read` turns them back, so no reader
rebuilds one. Studies written by earlier versions still read: a space as a list or `{low, high}`, a workload
without the fields added since.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import optuna

from autotune import knobs
from autotune.compare.scoring import Scoring, prepare_reference
from autotune.exceptions import AutotuneError
from autotune.hardware import Fingerprint, Hardware
from autotune.measure.memory_facts import ModelFacts
from autotune.options import FloorSpec, parse_floor
from autotune.worker.process import Worker
from autotune.workload import Workload

from .storages import StorageError

Events = Callable[[str, dict[str, Any]], None]

# Workload fields added after studies were first recorded, with the value a study recorded before them meant.
LATER_WORKLOAD_FIELDS = {"negative_prompt": None, "call": {}, "output": "image", "other_sizes": []}


class WrongHardware(AutotuneError, RuntimeError):
    """This machine is not the hardware the study measures: its timings would poison the study."""


@dataclass(frozen=True)
class StudySpec:
    """Everything a joining worker or an exporter needs.

    `model` is a hub id, a folder or `builtin:*`, or `module:function` for a Python function; only the first three
    can be loaded by a worker (`loadable`). `deadline` (seconds since the epoch) is the study's time limit, set by
    the search that started it last.
    """

    model: str
    loadable: bool
    pipeline: str
    denoiser: str
    workload: Workload
    objective: str
    fixed: dict[str, Any]
    hardware: Hardware
    space: dict[str, knobs.Domain]  # the knobs a trial samples, each with its domain here
    memory_budget_bytes: int
    n_trials: int
    max_batch: int
    trial_timeout_s: float
    sampler: str
    seed: int
    deadline: float | None = None
    steps: int | None = None  # the workload's steps (the default configuration's), searched or not
    quality_floor: FloorSpec | None = None
    reference_steps: int | None = None  # set when trials are scored against a reference rendering
    pruner: str | None = None  # `options.PRUNERS`; None: recorded before the choice, when every study pruned
    hub: dict[str, Any] | None = None  # `pipelines.HubOptions.given()`: revision, variant, offline, config
    commit: str | None = None  # the commit a hub model resolved to when the search loaded it
    # The knobs a trial calibrates by rendering instead of sampling (under a floor), with their domains.
    calibrated: dict[str, knobs.Domain] | None = None
    memory_facts: ModelFacts | None = None  # what the pipeline's weights and activations take (the memory model's)

    # A resumed search must match these; the others follow the latest search's options.
    IDENTITY = ("model", "workload", "objective", "fixed", "quality_floor", "reference_steps", "memory_budget_bytes",
                "hub")

    def as_recorded(self) -> dict[str, Any]:
        """The spec as the study's user attrs hold it (JSON)."""
        recorded = {f.name: getattr(self, f.name) for f in fields(self)}
        recorded.update(
            workload=self.workload.model_dump(mode="json"), hardware=self.hardware.model_dump(mode="json"),
            space={name: domain.to_dict() for name, domain in self.space.items()},
            quality_floor=str(self.quality_floor) if self.quality_floor else None,
            calibrated={name: domain.to_dict() for name, domain in self.calibrated.items()} if self.calibrated
            else None,
            memory_facts=self.memory_facts.to_dict() if self.memory_facts else None)
        return recorded

    def record(self, study: optuna.Study) -> None:
        for key, value in self.as_recorded().items():
            study.set_user_attr(key, value)

    @classmethod
    def read(cls, study: optuna.Study) -> StudySpec:
        return cls.from_recorded(study.user_attrs, study.study_name)

    @classmethod
    def from_recorded(cls, recorded: dict[str, Any], study_name: str) -> StudySpec:
        missing = [f.name for f in fields(cls) if f.name not in recorded and f.default is not None]
        if missing:
            raise StorageError(f"study {study_name!r} does not record {', '.join(missing)}: it was made by an "
                               "older autotune; resume it once with autotune search")
        given = {f.name: recorded[f.name] for f in fields(cls) if f.name in recorded}
        given.update(
            workload=Workload(**given["workload"]), hardware=Hardware(**given["hardware"]),
            space={name: knobs.domain_from_dict(data) for name, data in given["space"].items()},
            quality_floor=parse_floor(given["quality_floor"]) if given.get("quality_floor") else None,
            calibrated={name: knobs.domain_from_dict(data) for name, data in given["calibrated"].items()}
            if given.get("calibrated") else None,
            memory_facts=ModelFacts.from_dict(given["memory_facts"]) if given.get("memory_facts") else None)
        return cls(**given)

    def check_resumes(self, recorded: dict[str, Any], study_name: str, storage_shown: str) -> None:
        """Refuse to resume a study whose `recorded` attrs were made for another model, workload, goal or machine."""
        mine = self.as_recorded()
        for key in self.IDENTITY if recorded else ():
            if _identity(key, recorded.get(key)) != _identity(key, mine[key]):
                what = {"memory_budget_bytes": "memory budget", "fixed": "set of pinned values",
                        "hub": "revision, variant or config of the model"}.get(key, key)
                raise AutotuneError(f"study {study_name!r} in {storage_shown} was made for another {what}; "
                                    "give a new --study name or the same options as before")
        if "hardware" in recorded:
            check_machine(Hardware(**recorded["hardware"]), self.hardware, study_name)


def _identity(key: str, value: Any) -> Any:
    if key == "workload" and isinstance(value, dict):
        return {**LATER_WORKLOAD_FIELDS, **value}
    if key == "hub":  # the files loaded; not whether they came from the cache alone (recorded before: the default)
        return {name: given for name, given in (value or {}).items() if name in ("revision", "variant", "config")}
    return value


def recorded_spec(study: optuna.Study) -> StudySpec | None:
    """The study's spec, or None where it records none a reader can use (made by an older autotune, or not yet)."""
    try:
        return StudySpec.read(study)
    except StorageError:
        return None


def check_machine(recorded: Hardware, here: Hardware, study_name: str) -> None:
    """Refuse a machine that is not the study's hardware model (GPU model; CPU model and core count)."""
    if not recorded.same_model(here):
        raise WrongHardware(f"this machine ({here.describe()}) is not the hardware of study {study_name!r} "
                            f"({recorded.describe()}): its timings would poison the study; run it on a "
                            f"{recorded.describe()}, or start another study")


def scoring_for(spec: StudySpec, worker: Worker, fingerprint: Fingerprint, emit: Events) -> Scoring | None:
    """The study's reference and floor on this host (each host renders or caches its own), or None without one."""
    if not spec.reference_steps:
        return None
    floor = spec.quality_floor
    scoring = prepare_reference(worker, spec.model, spec.workload, spec.reference_steps, fingerprint, floor,
                                spec.trial_timeout_s, emit)
    if floor is not None:
        emit("phase", {"message": f"quality floor {floor}: {floor.metric} >= {scoring.minimum:.4g}"})
    return scoring
