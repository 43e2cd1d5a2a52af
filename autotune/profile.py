"""The profile: a typed record of where, what, for which goal, with which settings, measured how well, found how.

Its YAML form is what apps ship. Loading names the field of every malformed, unknown or out-of-range value; dumping is
stable (the same profile gives the same bytes). Settings are built from the knob registry, so a new knob needs no
change here.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, create_model

from . import knobs
from .exceptions import ProfileError
from .hardware import Hardware, Software

SCHEMA_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelInfo(_Strict):
    id: str = Field(min_length=1)
    revision: str | None = None
    pipeline: str
    denoiser: str


class Workload(_Strict):
    height: PositiveInt
    width: PositiveInt
    prompts: list[str] = Field(min_length=1)
    seed: int = 0
    guidance_scale: float = Field(default=7.5, ge=0)


class QualityFloor(_Strict):
    metric: Literal["psnr", "ssim", "lpips", "clip"]
    min: float


class Goal(_Strict):
    objective: Literal["throughput", "latency", "pareto"] = "throughput"
    memory_budget_bytes: PositiveInt | None = None
    quality_floor: QualityFloor | None = None


class Stat(_Strict):
    """A repeated measurement: its median, coefficient of variation and sample count."""

    median: float = Field(ge=0)
    cv: float = Field(ge=0)
    n: PositiveInt


class Metrics(_Strict):
    images_per_s: Stat | None = None
    latency_s: Stat | None = None
    peak_memory_bytes: PositiveInt | None = None
    quality: dict[str, float] = Field(default_factory=dict)
    warmup_s: float | None = Field(default=None, ge=0)


class Provenance(_Strict):
    sampler: str
    seed: int | None = None
    trials: int = Field(ge=0)
    study: str | None = None
    storage: str | None = None
    created: datetime
    autotune: str | None = None


Settings = create_model(
    "Settings",
    __config__=ConfigDict(extra="forbid"),
    __doc__="One value per knob, in application order; a knob left out takes its neutral default.",
    **{knob.name: (knob.annotation, knob.default) for knob in knobs.in_order()},
)


class Profile(_Strict):
    """A reproducible tuning result. See the README for the YAML form.

    >>> profile = load_profile("profiles/tiny-sd-cpu.yaml")  # doctest: +SKIP
    >>> pipe(prompt, **profile.call_kwargs())  # doctest: +SKIP
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, alias="schema")
    hardware: Hardware
    software: Software
    model: ModelInfo
    workload: Workload
    goal: Goal = Field(default_factory=Goal)
    settings: Settings = Field(default_factory=Settings)
    metrics: Metrics | None = None
    provenance: Provenance | None = None

    def call_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the pipeline call: size, guidance, steps, batch. `pipe(prompt, **these)`."""
        return {
            "height": self.workload.height,
            "width": self.workload.width,
            "guidance_scale": self.workload.guidance_scale,
            **knobs.call_kwargs(self.settings_dict()),
        }

    def settings_dict(self) -> dict[str, Any]:
        return self.settings.model_dump()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", by_alias=True), sort_keys=False, allow_unicode=True,
                              default_flow_style=False, width=120)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the YAML form atomically: a reader sees the old file or the new one, never half of one."""
        return write_atomic(path, self.to_yaml())


def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def profile_from_dict(data: Any, source: str = "profile") -> Profile:
    if not isinstance(data, dict):
        raise ProfileError(f"{source}: a profile is a mapping of fields, got {type(data).__name__}")
    try:
        return Profile.model_validate(data)
    except ValidationError as error:
        raise ProfileError(f"{source}: {describe_errors(error)}") from None


def load_profile(path: str | os.PathLike) -> Profile:
    """Read a profile file (YAML, or JSON, which is YAML too), naming the field of any bad value."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ProfileError(f"{path}: cannot read the profile ({error.strerror or error})") from None
    return profile_from_text(text, str(path))


def profile_from_text(text: str, source: str = "profile") -> Profile:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ProfileError(f"{source}: not valid YAML{where}: {getattr(error, 'problem', error)}") from None
    return profile_from_dict(data, source)


def describe_errors(error: ValidationError) -> str:
    """Pydantic's errors as `field.path: what is wrong (got value)`, joined on one line.

    A value that matches no member of a union (`auto`, `max` or a positive integer) gives one entry per member;
    they are merged into one `field: a or b` entry.
    """
    messages: dict[str, list[str]] = {}
    inputs: dict[str, str] = {}
    for item in error.errors():
        # Union members add their tags (`literal['auto','max']`, `constrained-int`) to the location; drop them.
        path = [str(part) for part in item["loc"] if isinstance(part, int) or str(part).isidentifier()]
        field = ".".join(path) or "(top level)"
        if item["type"] == "extra_forbidden" and path[:1] == ["settings"]:
            known = ", ".join(knob.name for knob in knobs.in_order())
            message = f"unknown knob {path[-1]!r}; known: {known}"
        elif item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] == "missing":
            message = "required field is missing"
        else:
            message = item["msg"].removeprefix("Value error, ")
            inputs.setdefault(field, repr(item["input"]))
        messages.setdefault(field, []).append(message)
    return "; ".join(
        f"{field}: {' or '.join(texts)}" + (f" (got {inputs[field]})" if field in inputs else "")
        for field, texts in messages.items()
    )


def json_schema() -> dict:
    return Profile.model_json_schema(by_alias=True)


def write_atomic(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); a profile is meant to be shared and shipped.
        os.chmod(temporary, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
