"""Loading a model: a hub id, a local folder, a single-file checkpoint, or a built-in pipeline; finding its
denoiser.

The built-ins need no download. `builtin:tiny-sd` and `builtin:tiny-flux` are trained (`trained.py`): Stable
Diffusion and FLUX small enough for dozens of trials on two CPU cores, drawing what their prompts ask. The rest have
seeded random weights, the same every time: `tiny-sd-random` and `tiny-flux-random` for tests that need only speed,
and `sd15-arch` and `flux-arch`, the real SD 1.5 and FLUX.1-dev shapes, for tuning speed and memory on a GPU without
weights (`pipelines.sd`, `pipelines.flux`).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import torch
from diffusers import DiffusionPipeline
from diffusers import __version__ as diffusers_version
from transformers import __version__ as transformers_version

from autotune.exceptions import UnknownModel
from autotune.files import cache_dir
from autotune.options import DEFAULT_MODEL as DEFAULT_MODEL  # the CLI reads it without importing torch
from autotune.options import is_single_file as is_single_file  # the CLI checks it without torch
from autotune.workload import Workload

from . import trained
from .builtins import BUILTIN_PREFIX, named
from .flux import built_in_bf16, flux_arch, flux_arch_layers, tiny_flux_random
from .sd import sd15_arch, tiny_sd_random


@dataclass(frozen=True)
class HubOptions:
    """Which files of a model to load, as diffusers takes them: a `revision` (branch, tag or commit), a weights
    `variant` (`fp16`), `local_files_only` (the hub's cache only; `HF_HUB_OFFLINE=1` does the same), and for a
    single-file checkpoint the `config` of its pipeline (a diffusers folder or hub id; `from_single_file(config=)`)."""

    revision: str | None = None
    variant: str | None = None
    local_files_only: bool = False
    config: str | None = None

    def kwargs(self) -> dict:
        """The arguments `from_pretrained` takes."""
        given = {"revision": self.revision, "variant": self.variant, "local_files_only": self.local_files_only}
        return {key: value for key, value in given.items() if value}

    def given(self) -> dict:
        """Every option set, as a study records them (`HubOptions(**given)` makes them again)."""
        return {**self.kwargs(), **({"config": self.config} if self.config else {})}


def load(model: str, dtype: torch.dtype | None = None, hub: HubOptions = HubOptions()) -> DiffusionPipeline:
    """Load `model` (hub id, folder, single-file checkpoint or `builtin:*`), in `dtype` when given, with the safety
    checker off.

    The safety checker blacks out images, which would read as a quality failure, so tuning pipelines go without it.

    >>> pipe = load("builtin:tiny-sd")
    >>> type(pipe).__name__
    'StableDiffusionPipeline'
    """
    builtin = find_builtin(model)
    if builtin is not None:
        pipe = _built(model, builtin, dtype)
        return pipe.to(dtype) if dtype is not None else pipe
    if is_single_file(model):
        return _load_single_file(model, dtype, hub)
    kwargs: dict = {"dtype": dtype, **hub.kwargs()} if dtype is not None else hub.kwargs()
    try:
        # Only a pipeline with a safety checker takes `safety_checker`; any other warns that it ignores it.
        if "safety_checker" in DiffusionPipeline.load_config(model, **_config_kwargs(hub)):
            kwargs["safety_checker"] = None
        return DiffusionPipeline.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as error:
        where = "folder" if Path(model).exists() else "hub id (or folder)"
        raise UnknownModel(f"cannot load model {model!r} as a {where}: {str(error).splitlines()[0]}") from error


def check_single_file(model: str) -> None:
    """Refuse a checkpoint path that names no file, before a worker starts to load it (a URL is the hub's to judge)."""
    if not (Path(model).is_file() or model.startswith("https://")):
        raise UnknownModel(f"cannot load checkpoint {model!r}: no such file")


def single_file_layout(model: str, hub: HubOptions = HubOptions()) -> str:
    """The folder or hub id whose `model_index.json` and configs describe the pipeline in checkpoint `model`:
    `hub.config`, or else the repository diffusers infers from the checkpoint's keys (SD 1.5's for an SD 1.x file),
    which must be on the hub or in its cache."""
    if hub.config:
        return hub.config
    from diffusers.loaders.single_file_utils import fetch_diffusers_config, load_single_file_checkpoint

    check_single_file(model)
    try:
        checkpoint = load_single_file_checkpoint(model, local_files_only=hub.local_files_only)
        return str(fetch_diffusers_config(checkpoint)["pretrained_model_name_or_path"])
    except (OSError, ValueError, KeyError) as error:
        raise UnknownModel(f"cannot tell which pipeline checkpoint {model!r} holds (give its layout with --config): "
                           f"{str(error).strip().splitlines()[0]}") from error


def _load_single_file(model: str, dtype: torch.dtype | None, hub: HubOptions) -> DiffusionPipeline:
    """`model`, one checkpoint file, loaded by the pipeline class its layout names (`from_single_file`)."""
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    check_single_file(model)
    try:
        layout = single_file_layout(model, hub)
        index = DiffusionPipeline.load_config(layout, local_files_only=hub.local_files_only)
        pipeline_class = getattr(diffusers, index["_class_name"])
        kwargs: dict = {"config": layout, "local_files_only": hub.local_files_only}
        if dtype is not None:
            kwargs["dtype"] = dtype
        if "safety_checker" in index:
            kwargs["safety_checker"] = None
        pipe = pipeline_class.from_single_file(model, **kwargs)
    except (OSError, ValueError, KeyError, AttributeError, SingleFileComponentError) as error:
        raise UnknownModel(f"cannot load checkpoint {model!r}"
                           + ("" if hub.config else " (give its pipeline's layout with --config)")
                           + f": {str(error).strip().splitlines()[0]}") from error
    pipe.register_to_config(_name_or_path=model)  # what `"auto"` matches profiles on, as for a hub id
    return pipe


def _config_kwargs(hub: HubOptions) -> dict:
    # load_config takes a revision and the offline switch, not a weights variant.
    return {key: value for key, value in hub.kwargs().items() if key != "variant"}


def resolved_commit(model: str, hub: HubOptions = HubOptions()) -> str | None:
    """The commit a hub id resolves to under `hub` (the snapshot `from_pretrained` loads); None for a built-in, a
    folder, or where the hub cannot tell."""
    if find_builtin(model) is not None or Path(model).exists() or is_single_file(model):
        return None
    try:
        folder = Path(DiffusionPipeline.download(model, **hub.kwargs()))
    except (OSError, ValueError):
        return None
    return folder.name if folder.parent.name == "snapshots" else None


def load_empty(model: str, hub: HubOptions = HubOptions()) -> DiffusionPipeline:
    """`model` with every module on the meta device: its classes, configs, shapes and sizes, and no weight read or
    initialised (accelerate's empty-weight loading). What `recommend`, `probe --model` and the memory model need
    to know of a model, in a second instead of a load of gigabytes. `hub` says at which revision, and for a
    single-file checkpoint which layout, its configs are read.

    >>> load_empty("builtin:sd15-arch").unet.device
    device(type='meta')
    """
    builtin = find_builtin(model)
    if builtin is not None:
        if builtin.make_empty is not None:
            return builtin.make_empty()
        with torch.device("meta"):
            return builtin.make()
    if is_single_file(model):
        return load_empty(single_file_layout(model, hub), HubOptions(local_files_only=hub.local_files_only))
    try:
        index = DiffusionPipeline.load_config(model, **_config_kwargs(hub))
        pipeline_class = getattr(diffusers, index["_class_name"])
        components = {name: _empty_component(model, name, entry, hub) for name, entry in index.items()
                      if not name.startswith("_") and isinstance(entry, (list, tuple)) and len(entry) == 2}
    except (OSError, ValueError, KeyError, AttributeError) as error:
        raise UnknownModel(f"cannot read model {model!r} without its weights: {str(error).splitlines()[0]}") from error
    accepted = inspect.signature(pipeline_class.__init__).parameters
    extra = {"requires_safety_checker": False} if "requires_safety_checker" in accepted else {}
    return pipeline_class(**{name: value for name, value in components.items() if name in accepted}, **extra)


def _empty_component(model: str, name: str, entry: list, hub: HubOptions) -> object:
    """One component of `model`'s index: a model on the meta device, or the small parts (scheduler, tokenizer) as
    they are; the safety checker is left out, as `load` leaves it."""
    library, class_name = entry
    if library is None or class_name is None or name == "safety_checker":
        return None
    component_class = getattr(importlib.import_module(library), class_name)
    if not issubclass(component_class, torch.nn.Module):
        return component_class.from_pretrained(model, subfolder=name, **_config_kwargs(hub))
    from accelerate import init_empty_weights

    if hasattr(component_class, "load_config"):  # a diffusers model: its config.json read as diffusers does
        config = component_class.load_config(model, subfolder=name, **_config_kwargs(hub))
        with init_empty_weights(include_buffers=True):
            return component_class.from_config(config)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model, subfolder=name, **_config_kwargs(hub))
    with init_empty_weights(include_buffers=True):
        return component_class(config)


def classes(model: str, hub: HubOptions = HubOptions()) -> tuple[str, str]:
    """The pipeline class and the denoiser class of `model`, read without loading any weights.

    Hub ids and folders are read from their `model_index.json` (a hub id needs the hub or its local cache), a
    single-file checkpoint from its layout's.

    >>> classes("builtin:tiny-sd")
    ('StableDiffusionPipeline', 'UNet2DConditionModel')
    """
    builtin = find_builtin(model)
    if builtin is not None:
        return builtin.pipeline, builtin.denoiser
    if is_single_file(model):
        return classes(single_file_layout(model, hub), HubOptions(local_files_only=hub.local_files_only))
    try:
        index = DiffusionPipeline.load_config(model, **_config_kwargs(hub))
    except (OSError, ValueError) as error:
        raise UnknownModel(f"cannot read the model index of {model!r}: {str(error).splitlines()[0]}") from error
    for name in ("unet", "transformer", "prior"):
        entry = index.get(name)
        if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1]:
            return str(index["_class_name"]), str(entry[1])
    raise UnknownModel(f"{index.get('_class_name', model)} has no unet or transformer component to tune")


def find_builtin(model: object) -> Builtin | None:
    """The built-in a `builtin:*` name means; None for anything else (a hub id, a folder, a function)."""
    if not (isinstance(model, str) and model.startswith(BUILTIN_PREFIX)):
        return None
    builtin = BUILTINS.get(model[len(BUILTIN_PREFIX):])
    if builtin is None:
        raise UnknownModel(f"unknown built-in model {model!r}; known: {', '.join(builtin_names())}")
    return builtin


def builtin_names() -> list[str]:
    return [BUILTIN_PREFIX + name for name in BUILTINS]


def denoiser_name(pipe: DiffusionPipeline) -> str:
    """The component that runs every step: `unet` for SD 1.x/2.x/SDXL, `transformer` for DiT pipelines."""
    for name in ("unet", "transformer", "prior"):
        if getattr(pipe, name, None) is not None:
            return name
    raise UnknownModel(f"{type(pipe).__name__} has no unet or transformer component to tune")


def denoiser(pipe: DiffusionPipeline) -> torch.nn.Module:
    return getattr(pipe, denoiser_name(pipe))


def check_text_to_image(pipe: DiffusionPipeline) -> None:
    """Refuse a pipeline whose call takes an input image (img2img, inpainting, ControlNet): the workload has none."""
    if "image" in inspect.signature(type(pipe).__call__).parameters:
        raise UnknownModel(f"{type(pipe).__name__} needs an input image (img2img, inpainting or control), which "
                           "autotune does not support yet; tune the text-to-image pipeline of the same model")


def default_guidance(pipeline: str) -> float | None:
    """The `guidance_scale` a diffusers pipeline class uses when the call passes none; None when it has no such
    argument or the class is not diffusers'."""
    import diffusers

    cls = getattr(diffusers, pipeline, None)
    parameter = inspect.signature(cls.__call__).parameters.get("guidance_scale") if cls is not None else None
    default = None if parameter is None else parameter.default
    return float(default) if isinstance(default, (int, float)) and not isinstance(default, bool) else None


def default_call_size(pipe: DiffusionPipeline, model: object = None) -> int:
    """The image side a workload uses when none is given: the pipeline's own default, as its `__call__` computes it,
    except for the built-ins, which declare theirs."""
    builtin = find_builtin(model)
    if builtin is not None:
        return builtin.size
    net = denoiser(pipe)
    sample = getattr(net.config, "sample_size", 64)
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    return int(sample) * int(getattr(pipe, "vae_scale_factor", 8))


def default_steps(pipe: DiffusionPipeline, model: object = None) -> int | None:
    """The step count a workload uses when none is given: the pipeline call's own default, except for the built-ins
    that declare theirs (the random tiny ones, whose images ignore the step count, are tuned at 20)."""
    builtin = find_builtin(model)
    if builtin is not None:
        return builtin.steps
    parameter = inspect.signature(type(pipe).__call__).parameters.get("num_inference_steps")
    default = None if parameter is None else parameter.default
    return default if isinstance(default, int) else None


@dataclass(frozen=True)
class Builtin:
    """A built-in pipeline: how to make it, what it is (read without building it), and its default workload."""

    make: Callable[[], DiffusionPipeline]
    pipeline: str
    denoiser: str
    size: int  # the default image side
    steps: int  # the pipeline's own default, but for the random tiny ones (20: their quality ignores steps)
    # Built once, then loaded from autotune's cache: a real-shape model's random init takes 10-15 s on a CPU, and
    # every worker that loads it (each replacement, each re-measured candidate) paid it again.
    saved: bool = False
    # How to make it on the meta device (`load_empty`), where `make` places its modules itself.
    make_empty: Callable[[], DiffusionPipeline] | None = None
    prompts: tuple[str, ...] = ()  # the workload's default prompts (none: the search's own)
    call: dict = field(default_factory=dict)  # arguments the default workload passes to every call
    guidance_scale: float | None = None  # the default workload's guidance (None: the pipeline call's own)
    negative_prompt: str | None = None  # the default workload's negative prompt (None: none passed)

    def workload(self, prompts: Sequence[str] = ()) -> Workload:
        """Its default workload (size, prompts, guidance and call arguments), with `prompts` instead of its own when
        given: what a search of it renders unless told otherwise."""
        return Workload(height=self.size, width=self.size, prompts=list(prompts or self.prompts), call=dict(self.call),
                        guidance_scale=self.guidance_scale, negative_prompt=self.negative_prompt)


def _built(model: str, builtin: Builtin, dtype: torch.dtype | None = None) -> DiffusionPipeline:
    """`builtin` made, or loaded (in `dtype`, when given) from where an earlier make was saved (safetensors,
    memory-mapped: a fraction of a second). The folder's name holds the library versions, whose init code and random
    streams the weights depend on."""
    if not builtin.saved:
        return builtin.make()
    versions = f"{model}|torch {torch.__version__}|diffusers {diffusers_version}|transformers {transformers_version}"
    key = hashlib.sha256(versions.encode()).hexdigest()[:12]
    folder = cache_dir() / "builtins" / f"{model[len(BUILTIN_PREFIX):]}-{key}"
    if (folder / "model_index.json").is_file():
        return named(model, DiffusionPipeline.from_pretrained(folder, **({"dtype": dtype} if dtype else {})))
    pipe = builtin.make()
    _save(pipe, folder)
    return pipe


def _save(pipe: DiffusionPipeline, folder: Path) -> None:
    """Save `pipe` to `folder` whole or not at all: written beside it, then renamed. A cache that cannot be written
    (read-only, full disk) costs the next load its build, nothing more; a worker that lost the race leaves the
    winner's copy in place."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    except OSError:
        return
    try:
        pipe.save_pretrained(staging)
        os.rename(staging, folder)
    except OSError:
        pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)


BUILTINS: dict[str, Builtin] = {
    # The trained ones load their few MB of weights even where only their shapes are asked for (`load_empty`):
    # from_pretrained cannot run under the meta device, and their folders hold no tokenizer to read.
    "tiny-sd": Builtin(trained.tiny_sd, "StableDiffusionPipeline", "UNet2DConditionModel", 32, 50,
                       make_empty=trained.tiny_sd, prompts=trained.PROMPTS,
                       guidance_scale=trained.TINY_SD_GUIDANCE_SCALE),
    "tiny-flux": Builtin(trained.tiny_flux, "FluxPipeline", "FluxTransformer2DModel", 32, 28,
                         make_empty=trained.tiny_flux, prompts=trained.PROMPTS,
                         call={"max_sequence_length": trained.TINY_FLUX_SEQUENCE_LENGTH,
                               "true_cfg_scale": trained.TINY_FLUX_TRUE_CFG_SCALE},
                         negative_prompt=trained.TINY_FLUX_NEGATIVE_PROMPT),
    "tiny-sd-random": Builtin(tiny_sd_random, "StableDiffusionPipeline", "UNet2DConditionModel", 64, 20),
    "sd15-arch": Builtin(sd15_arch, "StableDiffusionPipeline", "UNet2DConditionModel", 512, 50, saved=True),
    "tiny-flux-random": Builtin(tiny_flux_random, "FluxPipeline", "FluxTransformer2DModel", 64, 20),
    "flux-arch": Builtin(flux_arch, "FluxPipeline", "FluxTransformer2DModel", 1024, 28,
                         make_empty=lambda: built_in_bf16(flux_arch_layers, "meta")),
}
