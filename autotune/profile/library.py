"""The profile library: where profiles are found, and which one fits this pipeline on this machine.

A profile name is looked up in the folders of `AUTOTUNE_PROFILE_PATH` (the user's, a list like `PATH`), then in the
app's folders (`search_path=`), then in the profiles shipped with autotune: the first folder that has it wins, so a
user can override what an app ships, and an app what autotune ships. A path to a file is read as it is.

`select_profile` picks, among all of them, the profile for this pipeline and this machine, and says why. Like the
rest of the deployment path, this module never imports Optuna.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from diffusers import DiffusionPipeline

from autotune import knobs, pipelines
from autotune.exceptions import AutotuneWarning, NoProfileFits, ProfileError, UnreadableProfile
from autotune.files import PROFILE_SUFFIXES
from autotune.hardware import Fingerprint, Hardware, available_memory_bytes, probe
from autotune.pipelines.builtins import BUILTIN_PREFIX
from autotune.units import format_size

from . import Profile, load_profile
from .yaml_form import read_yaml

ENV_VAR = "AUTOTUNE_PROFILE_PATH"
SearchPath = str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None


@dataclass(frozen=True)
class Folder:
    """A folder of profiles and where it comes from: `user` (AUTOTUNE_PROFILE_PATH), `app` (search_path) or
    `shipped` (autotune's own)."""

    path: Path
    origin: str


@dataclass
class Entry:
    """One profile file found in the library; `error` says why it cannot be read, `shadowed_by` which file of the
    same name in an earlier folder hides it."""

    name: str
    path: Path
    origin: str
    profile: Profile | None = None
    error: str | None = None
    shadowed_by: Path | None = None


def shipped_profiles_dir() -> Path:
    """The profiles shipped with autotune: the installed package `autotune.profiles`, or, in a checkout used from
    PYTHONPATH without being installed (a GPU machine with no package index), the checkout's profiles/ folder."""
    try:
        return Path(str(resources.files("autotune.profiles")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "profiles"


def profile_folders(search_path: SearchPath = None) -> list[Folder]:
    """The folders a name is looked up in, in order: AUTOTUNE_PROFILE_PATH, `search_path`, the shipped folder."""
    user = [Folder(Path(part), "user") for part in os.environ.get(ENV_VAR, "").split(os.pathsep) if part]
    if search_path is None:
        app: list[Folder] = []
    elif isinstance(search_path, (str, os.PathLike)):
        app = [Folder(Path(search_path), "app")]
    else:
        app = [Folder(Path(part), "app") for part in search_path]
    return [*user, *app, Folder(shipped_profiles_dir(), "shipped")]


def check_name(name: str) -> None:
    """A profile name is a plain file name: it never leaves the folders it is looked up in."""
    if not name or ".." in name or "/" in name or "\\" in name or name.startswith("."):
        raise ProfileError(f"profile name {name!r} is not a plain name (no '/', '\\' or '..'); give a path instead")


def find_profile(name: str, search_path: SearchPath = None) -> Path:
    """The file of the profile named `name` (with or without its suffix) in the first folder that has it.

    >>> find_profile("tiny-sd-cpu").name
    'tiny-sd-cpu.yaml'
    """
    check_name(name)
    folders = profile_folders(search_path)
    for folder in folders:
        for candidate in (folder.path / name, *(folder.path / f"{name}{suffix}" for suffix in PROFILE_SUFFIXES)):
            if candidate.is_file():
                if not inside(candidate, folder.path):
                    raise ProfileError(f"{candidate}: a link that leads outside {folder.path}; a profile name never "
                                       "leaves its folder (give the path instead)")
                return candidate
    known = sorted({entry.name for entry in list_profiles(search_path)})
    where = ", ".join(f"{folder.path} ({folder.origin})" for folder in folders)
    raise ProfileError(f"no profile named {name!r} in {where}; known: {', '.join(known) or 'none'} "
                       f"(add a folder with {ENV_VAR} or search_path=)")


def inside(path: Path, folder: Path) -> bool:
    """Whether `path`, every link followed, is a file in `folder` (or below it)."""
    return path.resolve().is_relative_to(folder.resolve())


def list_profiles(search_path: SearchPath = None) -> list[Entry]:
    """Every profile file in the library's folders, in lookup order; unreadable files come with their error."""
    entries: list[Entry] = []
    first: dict[str, Path] = {}
    for folder in profile_folders(search_path):
        if not folder.path.is_dir():
            continue
        profiles = (p for p in folder.path.iterdir() if p.suffix in PROFILE_SUFFIXES and not p.name.startswith("."))
        for path in sorted(profiles):
            entry = Entry(path.stem, path, folder.origin, shadowed_by=first.get(path.stem))
            first.setdefault(path.stem, path)
            if not inside(path, folder.path):
                entry.error = f"{path}: a link that leads outside {folder.path}; not read"
                entries.append(entry)
                continue
            try:
                picks = profile_picks(path)
                if picks:  # a profile set: one entry per pick, named NAME#PICK
                    for pick in picks:
                        entries.append(Entry(f"{path.stem}#{pick}", path, folder.origin,
                                             shadowed_by=entry.shadowed_by, profile=load_profile(path, pick)))
                    continue
                entry.profile = load_profile(path)
            except UnreadableProfile as error:
                # One bad file must not hide the rest of the folder from list, select or "auto".
                warnings.warn(f"skipping {error}", AutotuneWarning, stacklevel=2)
                entry.error = str(error)
            except ProfileError as error:
                entry.error = str(error)
            entries.append(entry)
    return entries


def profile_picks(path: Path) -> list[str]:
    """The pick names of a profile set file; empty for a single profile."""
    try:
        data = read_yaml(path)
    except ProfileError:  # loading the file names the problem
        return []
    if isinstance(data, dict) and isinstance(data.get("picks"), dict) and "profiles" in data:
        return [str(name) for name in data["picks"]]
    return []


# ---- selection ----


@dataclass
class Considered:
    """One candidate profile: why it was rejected (`rejections`), or where it ranks and why (`notes`)."""

    label: str
    profile: Profile | None
    rejections: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rank_key: tuple[Any, ...] = ()

    @property
    def accepted(self) -> bool:
        return not self.rejections

    @property
    def images_per_s(self) -> float | None:
        metrics = self.profile.metrics if self.profile else None
        return metrics.images_per_s.median if metrics and metrics.images_per_s else None


@dataclass
class Selection:
    """The outcome of `select_profile`: the chosen profile (None when nothing fits), the ranking, the rejections."""

    profile: Profile | None
    ranking: list[Considered]
    rejected: list[Considered]
    pipeline: str
    denoiser: str
    model: str | None
    hardware: Hardware
    free_memory_bytes: int

    @property
    def chosen(self) -> Considered | None:
        return self.ranking[0] if self.ranking else None

    def explain(self) -> str:
        """The choice and every reason, one line each."""
        lines = [f"for {self.pipeline} with a {self.denoiser} ({self.model or 'model unknown'}) on "
                 f"{self.hardware.describe()}, {format_size(self.free_memory_bytes)} free:"]
        if self.chosen is None:
            lines[0] += " no profile fits, nothing applied"
        for number, item in enumerate(self.ranking, 1):
            verdict = "chosen" if number == 1 else f"#{number}"
            lines.append(f"  {verdict}: {item.label}: {'; '.join(item.notes)}")
        for item in self.rejected:
            lines.append(f"  rejected: {item.label}: {'; '.join(item.rejections)}")
        if not self.ranking and not self.rejected:
            lines.append("  no profiles found (add a folder with AUTOTUNE_PROFILE_PATH or search_path=)")
        if self.chosen is None:
            lines.append("  tune this pipeline here with autotune search, or ship a profile made on this hardware")
        return "\n".join(lines)

    def require(self) -> Profile:
        """The chosen profile, or `NoProfileFits` with the explanation."""
        if self.profile is None:
            raise NoProfileFits(self.explain().replace("\n  ", "; "))
        return self.profile


ProfileSource = Profile | str | os.PathLike[str]


def select_profile(
    pipe_or_model: DiffusionPipeline | str,
    candidates: Iterable[ProfileSource] | None = None,
    *,
    search_path: SearchPath = None,
    fingerprint: Fingerprint | Hardware | None = None,
    free_memory_bytes: int | None = None,
    size: tuple[int, int] | None = None,
) -> Selection:
    """Pick the profile that fits this pipeline (or model id) on this machine, and say why.

    A candidate must be for the same pipeline and denoiser class (a built-in's profile only for that built-in), the
    same device kind, and every setting must be able to run here (no fallback). Then the same GPU model (on CPU: the
    same processor and core count) whose measured peak memory fits the free memory ranks first; else one of the same
    generation (GPU: compute capability; CPU: vector instruction set) whose memory budget fits it. Within that, a
    profile of the same model id first, then one tuned at `size` ((height, width), the size the app will render:
    the workload's own or one of its `other_sizes`), then the highest measured images/s. Nothing is guessed: when no
    candidate qualifies, `Selection.profile` is None and `require()` raises `NoProfileFits`.

    `candidates` defaults to every profile in the library (`search_path=` adds an app's folders). `fingerprint` and
    `free_memory_bytes` default to probing this machine.

    >>> selection = select_profile("builtin:tiny-sd")  # doctest: +SKIP
    >>> print(selection.explain())  # doctest: +SKIP
    """
    if isinstance(fingerprint, Fingerprint):
        fingerprint = fingerprint.hardware
    hardware = fingerprint or probe().hardware
    free = free_memory_bytes if free_memory_bytes is not None else available_memory_bytes(hardware.device)
    pipe = None if isinstance(pipe_or_model, str) else pipe_or_model
    if pipe is None:
        pipeline, net = pipelines.classes(str(pipe_or_model))
        model: str | None = str(pipe_or_model)
    else:
        model = pipe.name_or_path  # what from_pretrained was given (hub id or folder); built-ins record theirs
        pipeline, net = type(pipe).__name__, type(pipelines.denoiser(pipe)).__name__
    considered = [_consider(label, profile, error, pipeline, net, model, hardware, free, pipe, size)
                  for label, profile, error in _candidates(candidates, search_path)]
    for order, item in enumerate(considered):
        item.rank_key = (*item.rank_key, order)  # ties keep lookup order: a user's folder before an app's
    ranking = sorted((c for c in considered if c.accepted), key=lambda c: c.rank_key)
    rejected = [c for c in considered if not c.accepted]
    chosen = ranking[0].profile if ranking else None
    return Selection(chosen, ranking, rejected, pipeline, net, model, hardware, free)


def _candidates(candidates: Iterable[ProfileSource] | None,
                search_path: SearchPath) -> Iterator[tuple[str, Profile | None, str | None]]:
    """(label, profile, error) for each candidate; a file hidden by one of the same name earlier is an error."""
    if candidates is None:
        for entry in list_profiles(search_path):
            label = f"{entry.name} ({entry.origin}: {entry.path})"
            if entry.shadowed_by is not None:
                yield label, entry.profile, f"hidden by {entry.shadowed_by}, which has the same name"
            else:
                yield label, entry.profile, entry.error
        return
    for number, candidate in enumerate(candidates, 1):
        if isinstance(candidate, Profile):
            yield f"candidate {number} ({candidate.model.id} on {candidate.hardware.describe()})", candidate, None
            continue
        try:
            yield str(candidate), load_profile(candidate), None
        except ProfileError as error:
            yield str(candidate), None, str(error)


def _consider(label: str, profile: Profile | None, error: str | None, pipeline: str, net: str, model: str | None,
              hardware: Hardware, free: int, pipe: DiffusionPipeline | None,
              size: tuple[int, int] | None = None) -> Considered:
    item = Considered(label, profile)
    if profile is None or error:
        item.rejections.append(error or "unreadable")
        return item
    item.rejections += _pipeline_mismatch(profile, pipeline, net, model)
    theirs = profile.hardware
    same_model = theirs.same_model(hardware)
    if theirs.device != hardware.device:
        item.rejections.append(f"made on {theirs.device} ({theirs.describe()}); this machine runs on {hardware.device}")
    elif same_model:
        item.notes.append(f"same {'GPU' if hardware.device == 'cuda' else 'CPU'} ({hardware.describe()})")
    elif not theirs.same_generation(hardware):
        item.rejections.append(f"made on {_with_generation(theirs)}, another generation than this "
                               f"{_with_generation(hardware)}")
    else:
        item.notes.append(f"made on {_with_generation(theirs)}, the same generation: its speed may differ here")
    if theirs.device == hardware.device:
        item.rejections += _unavailable_here(profile, hardware, pipe)
    memory = _memory_rejection(profile, same_model, free)
    if memory:
        item.rejections.append(memory)
    elif not item.rejections:
        item.notes.append(_memory_note(profile, same_model, free))
    same_id = model is not None and profile.model.id == model
    if not same_id:
        item.notes.append(f"tuned on {profile.model.id}, another model of the same classes")
    other_size = size is not None and tuple(size) not in profile.workload.sizes()
    if size is not None:
        tuned = ", ".join(f"{height}x{width}" for height, width in profile.workload.sizes())
        item.notes.append(f"tuned at {tuned} (height x width), " + ("not at this size" if other_size else "this size"))
    rate = item.images_per_s
    item.notes.append(f"{rate:.3g} images/s measured" if rate is not None else "no images/s recorded: ranked last")
    item.rank_key = (not same_model, not same_id, other_size, -(rate or 0.0))
    return item


def _with_generation(hardware: Hardware) -> str:
    # A GPU's description already names its compute capability.
    return hardware.describe() if hardware.device == "cuda" else f"{hardware.describe()}, {hardware.generation()}"


def classes_mismatch(profile: Profile, pipeline: str, net: str, subject: str = "this pipeline") -> str | None:
    """Why `profile` cannot go on a pipeline of class `pipeline` with a `net` denoiser, or None when it can: the
    one check of a profile against a pipeline's classes (apply, verify and the selection all use it).

    >>> classes_mismatch(profile, "StableDiffusionXLPipeline", "UNet2DConditionModel")  # doctest: +SKIP
    'the profile was tuned for StableDiffusionPipeline with a UNet2DConditionModel (builtin:tiny-sd); ...'
    """
    recorded = profile.model
    if (recorded.pipeline, recorded.denoiser) == (pipeline, net):
        return None
    return (f"the profile was tuned for {recorded.pipeline} with a {recorded.denoiser} ({recorded.id}); "
            f"{subject} is {pipeline} with a {net}")


def _pipeline_mismatch(profile: Profile, pipeline: str, net: str, model: str | None) -> list[str]:
    recorded = profile.model
    mismatch = classes_mismatch(profile, pipeline, net, model or "this pipeline")
    if mismatch:
        return [mismatch]
    builtin = BUILTIN_PREFIX
    # A built-in is a synthetic model: its profile says nothing about a real model of the same classes.
    if recorded.id != model and (recorded.id.startswith(builtin) or (model or "").startswith(builtin)):
        return [f"tuned on {recorded.id}; this is {model or 'a pipeline of unknown origin'}, and a built-in's "
                "profile fits only that built-in"]
    return []


def _unavailable_here(profile: Profile, hardware: Hardware, pipe: DiffusionPipeline | None) -> list[str]:
    # apply_profile would fall back from these values, and the profile's numbers would not hold.
    settings = profile.settings_dict()
    reasons = []
    for knob in knobs.in_order():
        if knob.call_time or not knob.active(settings):
            continue
        reason = knob.unavailable(settings[knob.name], hardware, pipe)
        if reason:
            reasons.append(f"{knob.name}={settings[knob.name]!r} cannot run here ({reason})")
    return reasons


def _memory_need(profile: Profile, same_model: bool) -> tuple[int | None, str]:
    # On the same hardware model the measured peak is what it will take; elsewhere only the budget it was held to is a
    # bound (other kernels, another allocator), so the budget must fit.
    peak = profile.metrics.peak_memory_bytes if profile.metrics else None
    budget = profile.goal.memory_budget_bytes
    if same_model and peak:
        return peak, "measured peak"
    if budget:
        return budget, "memory budget"
    return peak, "measured peak (no budget recorded)"


def _memory_rejection(profile: Profile, same_model: bool, free: int) -> str | None:
    need, what = _memory_need(profile, same_model)
    if need is None:
        return "records neither a memory budget nor a peak memory: cannot tell whether it fits"
    if need > free:
        return f"its {what} of {format_size(need)} is more than the {format_size(free)} free here"
    return None


def _memory_note(profile: Profile, same_model: bool, free: int) -> str:
    need, what = _memory_need(profile, same_model)
    return f"its {what} of {format_size(need)} fits the {format_size(free)} free"
