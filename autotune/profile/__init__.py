"""The profile: a typed record of where, what, for which goal, with which settings, measured how well, found how.

Its YAML form is what apps ship. Loading names the field of every malformed, unknown or out-of-range value; dumping is
stable (the same profile gives the same bytes). Settings are built from the knob registry, so a new knob needs no
change here.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    PrivateAttr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from autotune import __version__, knobs
from autotune.exceptions import ProfileError
from autotune.files import split_pick as split_pick  # compiled.py and apply read it from here
from autotune.files import write_atomic
from autotune.hardware import Hardware, Software
from autotune.measure.figures import KnobEffect as KnobEffect
from autotune.measure.figures import Metrics as Metrics
from autotune.measure.figures import SizeSettings as SizeSettings
from autotune.workload import IMAGE_SEED_STRIDE as IMAGE_SEED_STRIDE  # tests and bench read it from here
from autotune.workload import Workload

from .yaml_form import (
    check_schema,
    describe_errors,
    dump_yaml,
    file_text,
    parse_yaml,
    read_yaml,
    with_absolute_storage,
    without_empty_fields,
)

# 1: to 2026-12-06. 2: other_sizes, model.config, metrics.quality_by_prompt, the `prompt` floor. 3: metrics.ablation.
# A profile of an older schema loads (and is written back as the current one); a newer one is refused in one line
# naming both.
SCHEMA_VERSION = 3

class _Strict(BaseModel):
    # A field's docstring is its description in the JSON Schema (`autotune profiles schema`), for editors and tools.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class ModelInfo(_Strict):
    """The model that was tuned, as it was loaded."""

    id: str = Field(min_length=1)
    """Hub id, folder, single-file checkpoint or `builtin:` name."""
    revision: str | None = None
    """The commit a hub id resolved to when it was tuned; None for folders and built-ins."""
    variant: str | None = None
    """The weights variant it was loaded with (`fp16`)."""
    config: str | None = None
    """A single-file checkpoint's pipeline layout (folder or hub id), as it was loaded."""
    pipeline: str
    """The diffusers pipeline class."""
    denoiser: str
    """The class of its UNet or transformer."""
    default_guidance_scale: float | None = None
    """The pipeline call's own guidance scale, used when the workload sets none."""


class QualityFloor(_Strict):
    """The score every image had to reach against the reference rendering (the same prompts and seeds at
    `reference_steps`, fp32, the pipeline's own scheduler); `relative_percent` when it was given as a drop from the
    reference's own noise floor."""

    metric: Literal["psnr", "ssim", "lpips", "clip", "prompt"]
    """What is scored: PSNR, SSIM, LPIPS or CLIP against the reference, or the share of prompts the judge reads."""
    min: float
    """The worst prompt's score had to be at least this."""
    reference_steps: PositiveInt | None = None
    """Steps of the reference rendering."""
    relative_percent: float | None = Field(default=None, le=0)
    """The floor as it was given, a drop in percent from the reference's own noise floor (`ssim=-5%`)."""


class Goal(_Strict):
    """What the search was asked for."""

    objective: Literal["throughput", "latency", "pareto"] = "throughput"
    """throughput (images/s), latency (s per image, batch 1) or pareto (images/s, memory and quality)."""
    memory_budget_bytes: PositiveInt | None = None
    """The peak memory every trial had to stay under (the GPU's, or the process's RAM on a CPU)."""
    quality_floor: QualityFloor | None = None
    """The quality every prompt had to keep; None: only exact knobs were searched."""


class Provenance(_Strict):
    """How the profile was found."""

    sampler: str
    """Optuna's sampler class."""
    seed: int | None = None
    """The sampler's seed."""
    trials: int = Field(ge=0)
    """Finished trials in the study."""
    study: str | None = None
    """The Optuna study's name."""
    storage: str | None = None
    """The study's storage, relative to the profile's folder when it is a file beside it; passwords redacted."""
    created: datetime
    """When the profile was written (UTC)."""
    autotune: str | None = None
    """The autotune version that wrote it."""
    trial: int | None = Field(default=None, ge=0)
    """The study's trial this configuration came from."""


Settings = create_model(  # type: ignore[call-overload]  # its fields come from the knob registry at import
    "Settings",
    __config__=ConfigDict(extra="forbid"),
    __doc__="One value per knob, in application order; a knob left out takes its neutral default.",
    **{knob.name: (knob.annotation, Field(knob.default, description=knob.help)) for knob in knobs.in_order()},
)


class _Document(_Strict):
    """What a profile file holds at its top level (a profile or a profile set): its schema version, and its YAML."""

    model_config = ConfigDict(populate_by_name=True)

    schema_version: int = Field(default=SCHEMA_VERSION, alias="schema", ge=1, le=SCHEMA_VERSION)
    """The profile format's version: a newer one than this autotune reads is refused, naming both."""

    @field_validator("schema_version")
    @classmethod
    def _current_schema(cls, version: int) -> int:
        return SCHEMA_VERSION  # an older profile's fields are a subset of the current ones: it is written back as one

    def to_data(self) -> dict[str, Any]:
        """The YAML form as data (JSON types)."""
        raise NotImplementedError

    def to_yaml(self) -> str:
        return dump_yaml(self.to_data())

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the YAML form atomically (a reader sees the old file or the new one, never half of one), under a
        header saying how it was made and how to apply it, its study's file named relative to its folder."""
        return write_atomic(path, file_text(self.to_data(), Path(path)))


class Profile(_Document):
    """A reproducible tuning result. See the README for the YAML form.

    >>> profile = load_profile("profiles/tiny-sd-cpu.yaml")  # doctest: +SKIP
    >>> pipe(prompt, **profile.call_kwargs())  # doctest: +SKIP
    """

    hardware: Hardware
    """The machine it was tuned on."""
    software: Software
    """The library versions it was tuned with."""
    model: ModelInfo
    """The model it was tuned for."""
    workload: Workload
    """What was rendered: size, prompts, seed, guidance, further call arguments."""
    goal: Goal = Field(default_factory=Goal)
    """What the search was asked for."""
    settings: Settings = Field(default_factory=Settings)
    """One value per knob, in application order."""
    other_sizes: list[SizeSettings] = Field(default_factory=list)
    """The batch chosen at each of the workload's other sizes."""
    metrics: Metrics | None = None
    """What the configuration measured."""
    provenance: Provenance | None = None
    """How it was found."""
    # The file it was read from (`set.yaml#pick` for a pick): what is shipped beside it is found from there.
    _source: str | None = PrivateAttr(default=None)

    @property
    def source(self) -> str | None:
        return self._source

    def __eq__(self, other: object) -> bool:
        # Where a profile was read from is not part of it: the same profile read from two files is equal.
        if not isinstance(other, Profile):
            return NotImplemented
        return type(self) is type(other) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # mutable, as pydantic's models are

    def call_kwargs(self, seed: int | None = None, batch: bool = False, height: int | None = None,
                    width: int | None = None) -> dict[str, Any]:
        """Keyword arguments for the pipeline call: the workload's (size, guidance, negative prompt and the call
        arguments it sets), then steps, for one image per prompt: what an app serving one image per request asks.

        `batch=True` adds the batch the profile was tuned at (`num_images_per_prompt`; a video pipeline's
        `num_videos_per_prompt`): a batch job's call, at which its images/s was measured. A throughput profile's
        images/s holds only at its batch; one image per call takes `metrics.latency_s / batch_size` or more.

        With `seed`, also the `generator` the search rendered with: one CPU generator per image (`seeding:
        per-image`), so each image is the one a batch of one would give. `seed=profile.workload.prompt_seed(i)`
        with the workload's i-th prompt reproduces the images the search measured.

        `height` and `width` ask for another size than the workload's: one the profile was tuned at
        (`workload.other_sizes`) brings its own batch; any other renders with the same knobs, one image per prompt.

        >>> image = pipe(prompt, **profile.call_kwargs()).images[0]  # doctest: +SKIP
        >>> images = pipe(prompt, **profile.call_kwargs(seed=1234, batch=True)).images  # doctest: +SKIP
        >>> small = pipe(prompt, **profile.call_kwargs(height=512, width=512)).images[0]  # doctest: +SKIP
        """
        height, width = height or self.workload.height, width or self.workload.width
        batch_size = self.batch_size_at(height, width)
        if batch and batch_size is None:
            tuned = ", ".join(f"{h}x{w}" for h, w in self.workload.sizes())
            raise ProfileError(f"the profile has no batch for {height}x{width}: it was tuned at {tuned}")
        knob_kwargs = knobs.call_kwargs({**self.settings_dict(), "batch_size": batch_size or 1})
        if not batch:  # the pipeline's own default: one image per prompt
            knob_kwargs.pop("num_images_per_prompt", None)
        kwargs = self.workload.call_kwargs(knob_kwargs) | {"height": height, "width": width}
        if seed is not None:
            kwargs["generator"] = self.workload.generators(seed, batch_size if batch and batch_size else 1)
        return kwargs

    def batch_size_at(self, height: int, width: int) -> int | None:
        """The batch the profile was tuned at for `height` x `width`; None for a size it was not tuned at."""
        if (height, width) == (self.workload.height, self.workload.width):
            return int(self.settings_dict()["batch_size"])
        return next((size.batch_size for size in self.other_sizes if (size.height, size.width) == (height, width)),
                    None)

    def contradictions(self) -> list[str]:
        """What a valid schema cannot catch (a hand-edited file): each one a sentence, empty when none."""
        from autotune.units import format_size

        problems = []
        budget, metrics = self.goal.memory_budget_bytes, self.metrics
        if budget and metrics and metrics.peak_memory_bytes and metrics.peak_memory_bytes > budget:
            problems.append(f"metrics.peak_memory_bytes ({format_size(metrics.peak_memory_bytes)}) is over "
                            f"goal.memory_budget_bytes ({format_size(budget)})")
        floor = self.goal.quality_floor
        if floor and metrics and floor.metric in metrics.quality and metrics.quality[floor.metric] < floor.min:
            problems.append(f"metrics.quality.{floor.metric} ({metrics.quality[floor.metric]}) is under "
                            f"goal.quality_floor.min ({floor.min})")
        tuned = sorted((size.height, size.width) for size in self.other_sizes)
        if tuned != sorted(self.workload.other_sizes):
            problems.append(f"other_sizes ({tuned}) are not the workload's other_sizes "
                            f"({sorted(self.workload.other_sizes)})")
        return problems

    def settings_dict(self) -> dict[str, Any]:
        return self.settings.model_dump()

    def to_data(self) -> dict[str, Any]:
        """The YAML form as data (JSON types), without the empty fields most profiles have no use for."""
        return without_empty_fields(self.model_dump(mode="json", by_alias=True))


PICKS = ("fastest", "balanced", "smallest")


class ProfileSet(_Document):
    """The Pareto-optimal profiles of one search, fastest first, with named picks (index into `profiles`).

    >>> profile = load_profile("sd15.yaml#balanced")  # doctest: +SKIP
    """

    picks: dict[str, int]
    """Named picks (fastest, balanced, smallest): an index into `profiles`."""
    profiles: list[Profile] = Field(min_length=1)
    """The Pareto-optimal profiles, fastest first."""

    @model_validator(mode="after")
    def _picks_point_at_profiles(self) -> ProfileSet:
        for name, index in self.picks.items():
            if not 0 <= index < len(self.profiles):
                raise ValueError(f"pick {name!r} points at profile {index}, but the set has {len(self.profiles)}")
        return self

    def pick(self, name: str) -> Profile:
        if name not in self.picks:
            raise ProfileError(f"no pick {name!r} in this profile set; picks: {', '.join(self.picks)}")
        return self.profiles[self.picks[name]]

    def to_data(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", by_alias=True)
        data["profiles"] = [without_empty_fields(profile) for profile in data["profiles"]]
        return data


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def profile_from_dict(data: Any, source: str = "profile") -> Profile:
    return _validated(Profile, data, source, "a profile")


_Model = TypeVar("_Model", bound=BaseModel)


def _validated(model: type[_Model], data: Any, source: str, noun: str) -> _Model:
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: {noun} is a mapping of fields, got {type(data).__name__}")
    check_schema(data, source, SCHEMA_VERSION, __version__)
    try:
        return model.model_validate(_recorded_seeding(data))
    except ValidationError as error:
        raise ProfileError(f"{source}: {describe_errors(error)}") from None


def _recorded_seeding(data: dict[str, Any]) -> dict[str, Any]:
    """A profile written before the workload recorded its seeding was measured with one generator per call."""
    if isinstance(data.get("profiles"), list):
        return {**data, "profiles": [_recorded_seeding(item) if isinstance(item, dict) else item
                                     for item in data["profiles"]]}
    workload = data.get("workload")
    if isinstance(workload, dict) and "seeding" not in workload:
        return {**data, "workload": {**workload, "seeding": "shared"}}
    return data


def load_profile(path: str | os.PathLike[str], pick: str | None = None) -> Profile:
    """Read a profile file (YAML, or JSON, which is YAML too), naming the field of any bad value.

    A profile set (from a Pareto search) needs a pick: `load_profile("set.yaml#balanced")` or `pick="balanced"`.
    """
    path, pick = split_pick(path, pick)
    data = with_absolute_storage(read_yaml(path), path.parent)
    if isinstance(data, dict) and "profiles" in data:
        profiles = profile_set_from_dict(data, str(path))
        if not pick:
            raise ProfileError(f"{path}: a profile set; name a pick as {path}#PICK or pick= "
                               f"(picks: {', '.join(profiles.picks)})")
        profile = profiles.pick(pick)
        profile._source = f"{path}#{pick}"
        return profile
    if pick:
        raise ProfileError(f"{path}: a single profile, not a profile set; it has no pick {pick!r}")
    profile = profile_from_dict(data, str(path))
    profile._source = str(path)
    return profile


def load_profile_set(path: str | os.PathLike[str]) -> ProfileSet:
    path = Path(path)
    return profile_set_from_dict(with_absolute_storage(read_yaml(path), path.parent), str(path))


def profile_set_from_dict(data: Any, source: str = "profile set") -> ProfileSet:
    return _validated(ProfileSet, data, source, "a profile set")


def profile_from_text(text: str, source: str = "profile") -> Profile:
    return profile_from_dict(parse_yaml(text, source), source)


def json_schema() -> dict[str, Any]:
    return Profile.model_json_schema(by_alias=True)
