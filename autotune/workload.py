"""The user's workload: what each timed call renders, and the pipeline call arguments it passes.

`Workload` is the profile's `workload:` section. The rest types `--call KEY=VALUE` arguments from the pipeline's
`__call__` signature: `call_parameters` reads the signature (in the worker, which has the pipeline), `check_call`
types the values against it (in the search, before any trial runs). Light: no torch at import, so the command line
checks its flags before the heavy imports.
"""

from __future__ import annotations

import contextlib
import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from .exceptions import InvalidInput

# Image k of a call seeded s is drawn from its own generator seeded s + IMAGE_SEED_STRIDE * k: the prompts' seeds
# s, s + 1, ... never meet another prompt's images, and image 0 is seeded s as a single generator would be.
IMAGE_SEED_STRIDE = 1_000_000

CallValue = bool | int | float | str | None  # a YAML scalar, as a profile stores it
# What the batch knob's `num_images_per_prompt` is called by a video pipeline.
VIDEO_BATCH_ARGUMENT = "num_videos_per_prompt"

# Call arguments autotune sets itself, each with what to use instead: a `--call` of one would be overridden or would
# change what is measured behind the search's back.
CONTROLLED: dict[str, str] = {
    "prompt": "--prompt or --prompts", "negative_prompt": "--negative-prompt", "guidance_scale": "--guidance-scale",
    "height": "--height or --size", "width": "--width or --size", "num_inference_steps": "--steps (or the steps knob)",
    "num_images_per_prompt": "the batch_size knob (--pin batch_size=N)",
    VIDEO_BATCH_ARGUMENT: "the batch_size knob (--pin batch_size=N)", "generator": "--seed",
    "output_type": "nothing: autotune reads the output as arrays", "return_dict": "nothing: autotune reads the output",
    "latents": "--seed",
}


class Workload(BaseModel):
    """What is rendered: size, prompts, seed, guidance, negative prompt, further call arguments, and how the seed
    becomes each image's noise.

    `guidance_scale` and `negative_prompt` None are the pipeline's own defaults (not passed to the call). `call`
    holds any other call argument (`num_frames: 33`, `max_sequence_length: 256`). `output: video` is a video
    pipeline's: its batch argument is `num_videos_per_prompt` and each output is a clip of frames. `seeding:
    per-image` gives each image of a call its own generator, so an image does not depend on the batch size, even
    with a scheduler that draws noise at every step (LCM, Euler ancestral); `shared` (profiles written before it
    was recorded) is one generator for the whole batch.
    """

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    height: PositiveInt
    """Image height in pixels."""
    width: PositiveInt
    """Image width in pixels."""
    prompts: list[str] = Field(min_length=1)
    """The prompts: each timed call renders the next; quality is scored on each."""
    seed: int = 0
    """The first prompt's seed; the next prompts' follow it."""
    guidance_scale: float | None = Field(default=None, ge=0)
    """The guidance scale of every call; None: the pipeline's own (not passed)."""
    negative_prompt: str | None = None
    """The negative prompt of every call; None: none passed."""
    call: dict[str, CallValue] = Field(default_factory=dict)
    """Any other argument of the pipeline call (`num_frames: 33`, `max_sequence_length: 256`)."""
    output: Literal["image", "video"] = "image"
    """A video pipeline's batch argument is `num_videos_per_prompt` and each output is a clip."""
    seeding: Literal["shared", "per-image"] = "per-image"
    """per-image: each image of a call has its own generator; shared: one for the whole batch (older profiles)."""
    other_sizes: list[tuple[PositiveInt, PositiveInt]] = Field(default_factory=list)
    """Further (height, width) the app renders with the same pipeline: a trial times each, with a batch of its own."""

    def sizes(self) -> list[tuple[int, int]]:
        """Every (height, width) the workload renders, its own first."""
        return [(self.height, self.width), *self.other_sizes]

    def at(self, height: int, width: int) -> Workload:
        """This workload at one of its sizes, alone."""
        return self.model_copy(update={"height": height, "width": width, "other_sizes": []})

    def prompt_seed(self, index: int) -> int:
        """The seed of the workload's `index`-th prompt (prompts repeat past the last)."""
        return self.seed + index % len(self.prompts)

    def generators(self, seed: int, batch: int) -> Any:
        """The `generator` argument of a call of `batch` images seeded `seed`, as this workload's seeding says."""
        import torch

        if self.seeding == "shared":
            return torch.Generator("cpu").manual_seed(seed)
        return [torch.Generator("cpu").manual_seed(seed + IMAGE_SEED_STRIDE * k) for k in range(batch)]

    def call_kwargs(self, knob_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The call's keyword arguments but prompt and generator: size, guidance and negative prompt (when set), the
        extra call arguments, then the knobs' (steps, batch), the batch named as this kind of pipeline names it.

        >>> Workload(height=64, width=64, prompts=["a"], call={"num_frames": 9}, output="video").call_kwargs(
        ...     {"num_images_per_prompt": 2})
        {'height': 64, 'width': 64, 'num_frames': 9, 'num_videos_per_prompt': 2}
        """
        kwargs: dict[str, Any] = {"height": self.height, "width": self.width}
        if self.guidance_scale is not None:
            kwargs["guidance_scale"] = self.guidance_scale
        if self.negative_prompt is not None:
            kwargs["negative_prompt"] = self.negative_prompt
        kwargs |= self.call
        kwargs |= knob_kwargs
        if self.output == "video" and "num_images_per_prompt" in kwargs:
            kwargs[VIDEO_BATCH_ARGUMENT] = kwargs.pop("num_images_per_prompt")
        return kwargs


def parse_size(text: str) -> tuple[int, int]:
    """`--size WxH` (width first, as image sizes are written) as (height, width).

    >>> parse_size("768x512")
    (512, 768)
    """
    width, sep, height = text.lower().partition("x")
    if not sep or not width.strip().isdigit() or not height.strip().isdigit() or not int(width) or not int(height):
        raise InvalidInput(f"--size takes WIDTHxHEIGHT in pixels (768x512), got {text!r}")
    return int(height), int(width)


def check_sizes(sizes: list[tuple[int, int]], height: int | None, width: int | None, several_allowed: bool
                ) -> tuple[int, int, list[tuple[int, int]]]:
    """The workload's size and its other sizes from `sizes` ((height, width) each, the first the workload's own),
    refused in one line when --height/--width are given too, a size repeats, or there are several where the search
    scores one size (`several_allowed` False: a quality floor, a Pareto search)."""
    if not sizes:
        raise InvalidInput("give at least one size")
    if height is not None or width is not None:
        raise InvalidInput("give the sizes with --size or with --height/--width, not both")
    if any(not (isinstance(side, int) and side > 0) for size in sizes for side in size):
        raise InvalidInput(f"each size is a (height, width) of positive pixel counts, got {sizes}")
    if len(set(sizes)) < len(sizes):
        raise InvalidInput("a size is given twice")
    if len(sizes) > 1 and not several_allowed:
        raise InvalidInput("several sizes are searched for speed (throughput or latency); a quality floor or a Pareto "
                           "search scores one size: give one --size")
    return sizes[0][0], sizes[0][1], list(sizes[1:])


def parse_call(pairs: list[str]) -> dict[str, str]:
    """`--call KEY=VALUE` flags as KEY -> the text VALUE (typed later, from the pipeline's signature); a malformed
    pair or a key autotune sets itself is refused here, before the model loads."""
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise InvalidInput(f"--call takes KEY=VALUE (a pipeline call argument), got {pair!r}")
        parsed[key] = value
    check_controlled(parsed)
    return parsed


def check_controlled(call: Mapping[str, Any]) -> None:
    for key in call:
        if key in CONTROLLED:
            raise InvalidInput(f"--call {key}: autotune sets {key} itself; use {CONTROLLED[key]}")


# ---- typing call arguments from the pipeline's signature ----

_SCALARS: dict[Any, str] = {bool: "bool", int: "int", float: "float", str: "str", type(None): "null"}


def call_parameters(pipeline_class: type) -> dict[str, tuple[str, ...]]:
    """Each named argument of `pipeline_class.__call__` -> the YAML scalar kinds it takes (`int`, `float`, `bool`,
    `str`, `null`), from its annotation, else from its default's type; () for one that takes no scalar (tensors,
    callbacks, lists)."""
    parameters = list(inspect.signature(pipeline_class.__call__).parameters.values())[1:]  # without self
    kinds: dict[str, tuple[str, ...]] = {}
    for parameter in parameters:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue  # diffusers' **kwargs only catch deprecated arguments
        found = _annotation_kinds(parameter.annotation)
        if not found and parameter.default is not parameter.empty:
            found = [_SCALARS[type(parameter.default)]] if type(parameter.default) in _SCALARS else []
        if parameter.default is None:
            found.append("null")  # `original_inference_steps: int = None`
        # `timesteps: list[int] | None` takes only null as a scalar: nothing to set from a flag.
        kinds[parameter.name] = tuple(dict.fromkeys(found)) if set(found) - {"null"} else ()
    return kinds


def _annotation_kinds(annotation: Any) -> list[str]:
    if annotation is inspect.Parameter.empty:
        return []
    if isinstance(annotation, str):  # a module with `from __future__ import annotations`
        names = {"bool": "bool", "int": "int", "float": "float", "str": "str", "None": "null"}
        text = annotation.replace("Optional[", "").replace("Union[", "").replace("]", "")
        return [names[part.strip()] for part in text.replace(",", "|").split("|") if part.strip() in names]
    if annotation in _SCALARS:
        return [_SCALARS[annotation]]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [kind for member in typing.get_args(annotation) for kind in _annotation_kinds(member)]
    return []  # list[str], torch.Tensor, Callable: no scalar


def check_call(call: Mapping[str, Any], parameters: Mapping[str, tuple[str, ...]],
               pipeline: str) -> dict[str, CallValue]:
    """`call` typed by `parameters` (what `call_parameters` read from `pipeline`'s signature): text values become
    the kind the argument takes (`true` a bool where it takes a bool, `256` an int); an argument the pipeline does
    not take, or a value it cannot take, is refused in one line naming both."""
    check_controlled(call)
    typed: dict[str, CallValue] = {}
    for key, value in call.items():
        if key not in parameters:
            raise InvalidInput(f"--call {key}: {pipeline} takes no argument {key!r}")
        kinds = parameters[key]
        if not kinds:
            raise InvalidInput(f"--call {key}: {pipeline}'s {key} is not a number, true/false or text, so it cannot "
                               "be given on the command line or stored in a profile")
        typed[key] = _typed(key, value, kinds, pipeline)
    return typed


def _typed(key: str, value: Any, kinds: tuple[str, ...], pipeline: str) -> CallValue:
    text = value.strip() if isinstance(value, str) else None
    if "null" in kinds and (value is None or text in ("null", "none", "None")):
        return None
    if "bool" in kinds and (isinstance(value, bool) or text in ("true", "false")):
        return value if isinstance(value, bool) else text == "true"
    if "int" in kinds and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        if text is not None and text.lstrip("+-").isdigit():
            return int(text)
    if "float" in kinds and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return float(value)
        with contextlib.suppress(ValueError, TypeError):
            return float(text)  # type: ignore[arg-type]
    if "str" in kinds and isinstance(value, str):
        return value
    return _refuse(key, value, kinds, pipeline)


_KIND_WORDS = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "text", "null": "null"}


def _refuse(key: str, value: Any, kinds: tuple[str, ...], pipeline: str) -> typing.NoReturn:
    wanted = " or ".join(_KIND_WORDS[kind] for kind in kinds)
    raise InvalidInput(f"--call {key}={value}: {pipeline}'s {key} takes {wanted}")


def output_kind(pipeline_class: type) -> Literal["image", "video"]:
    """`video` for a pipeline whose call takes `num_videos_per_prompt` (Wan, LTX, CogVideoX), else `image`."""
    names = inspect.signature(pipeline_class.__call__).parameters
    return "video" if VIDEO_BATCH_ARGUMENT in names and "num_images_per_prompt" not in names else "image"
