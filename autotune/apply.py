"""Putting a profile on a pipeline: `apply_profile`, `load_pipeline`, and resolving a profile by path or name.

This is the deployment path: it never imports Optuna, so an app that only applies a shipped profile does not pay
for the tuner. The tuner applies a trial's settings through `apply_settings` too, so what was measured is what ships.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from diffusers import DiffusionPipeline

from autotune.files import PROFILE_SUFFIXES, is_profile_file
from autotune.measure.memory_model import compiles
from autotune.profile import Profile, compiled, load_profile, split_pick
from autotune.profile.library import (
    SearchPath,
    check_name,
    classes_mismatch,
    find_profile,
    select_profile,
    shipped_profiles_dir,
)

from . import knobs, pipelines
from .exceptions import FallbackWarning, IncompatibleProfile, KnobConflict, ProfileError, ProfileMismatchWarning
from .hardware import Fingerprint, Hardware, probe
from .recommendation import Recommendation

ProfileLike = Profile | str | os.PathLike[str]
PipelineT = TypeVar("PipelineT", bound=DiffusionPipeline)  # apply_profile returns the pipeline's own type
AUTO = "auto"  # the profile name that asks `select_profile` to choose


class KnobUnavailable(IncompatibleProfile):
    """A knob value cannot run here and no fallback was allowed."""


def shipped_profile_path(name: str) -> Path:
    """The file of a profile shipped with autotune; a name never leaves the shipped folder."""
    check_name(name)
    folder = shipped_profiles_dir()
    for candidate in (folder / name, *(folder / f"{name}{suffix}" for suffix in PROFILE_SUFFIXES)):
        if candidate.is_file():
            return candidate
    known = sorted(path.stem for path in folder.glob("*.yaml"))
    raise ProfileError(f"no shipped profile named {name!r}; shipped: {', '.join(known) or 'none'}")


def resolve_profile(profile: ProfileLike, search_path: SearchPath = None,
                    pipe_or_model: DiffusionPipeline | str | None = None, pick: str | None = None,
                    size: tuple[int, int] | None = None) -> Profile:
    """A `Profile`; a path to a profile file; a name looked up in the library (AUTOTUNE_PROFILE_PATH, then
    `search_path`, then the shipped profiles); or `"auto"`: the profile `select_profile` picks for `pipe_or_model`.
    A profile set (a Pareto search's) needs a pick: `"set.yaml#balanced"` or `pick="balanced"`.
    """
    if isinstance(profile, Profile):
        return profile
    if str(profile) == AUTO:
        if pipe_or_model is None:
            raise ProfileError('profile "auto" picks a profile for a pipeline: give the pipeline (or model) too')
        return select_profile(pipe_or_model, search_path=search_path, size=size).require()
    path, pick = split_pick(profile, pick)
    return load_profile(path if is_profile_file(path) else find_profile(str(path), search_path), pick)


def apply_profile(pipe: PipelineT, profile: ProfileLike | Recommendation, search_path: SearchPath = None,
                  pick: str | None = None, size: tuple[int, int] | None = None) -> PipelineT:
    """Apply `profile`'s settings to a freshly loaded `pipe`, in the documented order, and return it.

    `profile` is a `Profile`, a path, a name in the library, or `"auto"` for the profile that fits this pipeline on
    this machine (`select_profile`; when none fits, `NoProfileFits` is raised and nothing is applied). `search_path`
    adds an app's own folders of profiles to the lookup, and `size` ((height, width) the app renders) makes `"auto"`
    prefer a profile tuned at that size. From a profile set (`--objective pareto`), name the pick:
    `"set.yaml#balanced"` or `pick="balanced"` (`fastest`, `balanced`, `smallest`).

    Order: process settings, precision, scheduler, attention, VAE, memory format, placement or offload, compile last.
    A compiled profile read from a file hot-loads what `autotune precompile` saved beside it for this machine, so
    its first call does not compile again (`compiled`).
    A knob value unavailable here falls back with a `FallbackWarning` (xformers missing -> SDPA; offload without an
    accelerator -> none). A profile measured on another GPU or library version warns; a profile made for another
    pipeline or denoiser raises `IncompatibleProfile`. `recommend()`'s result applies too: its settings, as chosen
    for this machine (nothing was measured, so nothing is checked against a record). Call-time settings come from
    `profile.call_kwargs()`:

    >>> pipe = apply_profile(pipelines.load("builtin:tiny-sd"), "tiny-sd-cpu")  # doctest: +SKIP
    >>> image = pipe("a lighthouse at dusk", **load_profile(...).call_kwargs()).images[0]  # doctest: +SKIP
    >>> pipe = apply_profile(pipe, "auto", search_path=Path(__file__).parent / "profiles")  # doctest: +SKIP
    >>> pipe = apply_profile(pipe, recommend("builtin:tiny-sd", budget="6GB"))  # doctest: +SKIP
    """
    if isinstance(profile, Recommendation):
        apply_settings(pipe, profile.settings, probe().hardware)
        return pipe
    resolved = resolve_profile(profile, search_path, pipe, pick, size)
    check_pipeline_fits(resolved, pipe)
    here = probe()
    warn_if_measured_elsewhere(resolved, here)
    applied = apply_settings(pipe, resolved.settings_dict(), here.hardware)
    if compiles(applied) and resolved.source is not None:
        compiled.load_artifacts(compiled.artifacts_path(resolved.source, here))
    return pipe


def load_pipeline(model: str | None = None, profile: ProfileLike | None = None, search_path: SearchPath = None,
                  revision: str | None = None, variant: str | None = None,
                  local_files_only: bool = False, config: str | None = None,
                  size: tuple[int, int] | None = None) -> DiffusionPipeline:
    """Load `model` (default: the profile's model) directly in the profile's dtype, then apply the profile.

    Loading in the target dtype (`dtype=`, diffusers' replacement for `torch_dtype=`) avoids a full-precision copy.
    With `profile="auto"` the profile is chosen for `model` (and `size`, the (height, width) the app renders) before
    anything is loaded. The profile's own model loads at the commit and weights variant it was tuned on, unless
    `revision` / `variant` say otherwise; another revision than the tuned one warns (`ProfileMismatchWarning`). A
    single-file checkpoint loads with the pipeline `config` it was tuned with, unless `config` says otherwise.
    """
    if str(profile) == AUTO and model is None:
        raise ProfileError('profile "auto" picks a profile for a model: give the model too')
    resolved = resolve_profile(profile, search_path, model, size=size) if profile is not None else None
    tuned = resolved.model if resolved is not None and model in (None, resolved.model.id) else None
    model = model or (resolved.model.id if resolved else pipelines.DEFAULT_MODEL)
    if tuned is not None and tuned.revision and revision not in (None, tuned.revision):
        warnings.warn(f"the profile was tuned on {tuned.id} at commit {tuned.revision}; this loads revision "
                      f"{revision}: its numbers may not hold (autotune verify re-measures it)", ProfileMismatchWarning,
                      stacklevel=2)
    hub = pipelines.HubOptions(revision or (tuned.revision if tuned else None),
                               variant or (tuned.variant if tuned else None), local_files_only,
                               config or (tuned.config if tuned else None))
    load_kwargs = knobs.load_kwargs(resolved.settings_dict()) if resolved else {}
    pipe = pipelines.load(model, **load_kwargs, hub=hub)
    return apply_profile(pipe, resolved) if resolved else pipe


def apply_settings(
    pipe: DiffusionPipeline, settings: Mapping[str, Any], hardware: Hardware, fallback: bool = True
) -> dict[str, Any]:
    """Apply knob `settings` to `pipe` in order; return the settings that were really applied.

    With `fallback=False` an unavailable value raises `KnobUnavailable` instead of being replaced (the tuner's mode).
    """
    broken = knobs.violations(settings)
    if broken:
        raise KnobConflict(f"these settings cannot be applied together: {broken[0]}")
    effective = {knob.name: settings.get(knob.name, knob.default) for knob in knobs.in_order()}
    for knob in knobs.in_order():
        value = effective[knob.name]
        if knob.call_time or not knob.active(effective):
            continue
        reason = knob.unavailable(value, hardware, pipe)
        if reason is None:
            continue
        if not fallback:
            raise KnobUnavailable(f"{knob.name}={value!r} is unavailable here: {reason}")
        replacement = knob.fallback(value, hardware, pipe)
        warnings.warn(f"{knob.name}={value!r} is unavailable here ({reason}); using {replacement!r}",
                      FallbackWarning, stacklevel=3)
        effective[knob.name] = replacement
    for knob in knobs.in_order():
        if not knob.call_time and knob.parent is None:
            knob.apply(pipe, effective[knob.name], effective, hardware)
    return effective


def check_pipeline_fits(profile: Profile, pipe_or_model: DiffusionPipeline | str) -> None:
    """Raise `IncompatibleProfile` when `profile` was tuned for other pipeline or denoiser classes than `pipe_or_model`
    (a pipeline, or a model id read without loading it)."""
    if isinstance(pipe_or_model, str):
        tuned = pipelines.HubOptions(config=profile.model.config) if pipe_or_model == profile.model.id else None
        (pipeline, net), subject = pipelines.classes(pipe_or_model, tuned or pipelines.HubOptions()), pipe_or_model
    else:
        pipeline, net = type(pipe_or_model).__name__, type(pipelines.denoiser(pipe_or_model)).__name__
        subject = "this pipeline"
    mismatch = classes_mismatch(profile, pipeline, net, subject)
    if mismatch:
        raise IncompatibleProfile(f"{mismatch}: tune it with autotune search")


def warn_if_measured_elsewhere(profile: Profile, here: Fingerprint) -> None:
    theirs, ours = profile.hardware, here.hardware
    if not theirs.same_model(ours):
        warnings.warn(f"the profile was measured on {theirs.describe()}, this is {ours.describe()}: "
                      "its numbers may not hold here (autotune verify re-measures it)", ProfileMismatchWarning,
                      stacklevel=3)
    for library in ("torch", "diffusers"):
        recorded, installed = getattr(profile.software, library), getattr(here.software, library)
        if recorded and installed and _series(recorded) != _series(installed):
            warnings.warn(f"the profile was measured with {library} {recorded}, {installed} is installed",
                          ProfileMismatchWarning, stacklevel=3)


def _series(version: str) -> tuple[str, ...]:
    # Libraries still at 0.x change behaviour in minor releases; compare major.minor for them, the major otherwise.
    parts = version.split("+")[0].split(".")
    return tuple(parts[:2]) if parts[0] == "0" else tuple(parts[:1])


@dataclass(frozen=True)
class Precompiled:
    """What `precompile` wrote: the artifacts file, its size, and the compile it saves an app's first call."""

    path: Path
    bytes: int
    seconds: float


def precompile(profile: ProfileLike, model: str | None = None, search_path: SearchPath = None) -> Precompiled:
    """Render once with a compiled `profile` applied, at each call shape it serves (each size it was tuned at, one
    image and its batch), and write what compiling made beside the profile, keyed by this machine
    (`compiled.artifacts_path`), for `apply_profile` to hot-load at an app's start. The compile runs in an empty
    inductor cache, so that the artifacts hold all of it, not only what this machine's cache did not have yet."""
    resolved = resolve_profile(profile, search_path, model)
    if not compiles(resolved.settings_dict()):
        raise ProfileError(f"{profile} does not compile (compile: none): there is nothing to save")
    if resolved.source is None:
        raise ProfileError("precompile writes beside the profile's file: give a profile file or name")
    path = compiled.artifacts_path(resolved.source, probe())
    calls = [resolved.call_kwargs(height=height, width=width, batch=batch)
             for height, width in resolved.workload.sizes()
             for batch in (False, True) if not batch or (resolved.batch_size_at(height, width) or 1) > 1]
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="autotune-precompile-") as empty:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = empty  # read at each compile
        try:
            pipe = load_pipeline(model, resolved, search_path)
            started = time.perf_counter()
            for kwargs in calls:
                pipe(resolved.workload.prompts[0], **kwargs)
            seconds = time.perf_counter() - started
            size = compiled.save_artifacts(path, empty)
        finally:
            if before is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = before
    if size is None:
        raise ProfileError(f"rendering with {profile} compiled nothing that torch can save")
    return Precompiled(path, size, seconds)
