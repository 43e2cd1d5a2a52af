"""Scenes made in code for the trained tiny Stable Diffusion: a coloured shape somewhere on a coloured background.

A scene is (shape colour, shape, position, background colour). `caption` writes it as a prompt, `parse` reads a prompt
back, `render` draws it at 32x32 (with a little random jitter of size, position and colour, so the data is a
distribution rather than a lookup table), and `sample` draws random scenes, never one of `HELD_OUT_PROMPTS`. A small
CNN, `Judge`, reads each attribute back from an image, so a generated image can be scored against its prompt.

>>> scene = Scene("red", "circle", "left", "blue")
>>> caption(scene)
'a red circle on the left, blue background'
>>> parse(caption(scene)) == scene
True
>>> render(scene).shape
torch.Size([3, 32, 32])
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.70, 0.15),
    "blue": (0.10, 0.20, 0.90),
    "yellow": (0.95, 0.90, 0.10),
    "purple": (0.55, 0.10, 0.75),
    "cyan": (0.10, 0.85, 0.90),
    "orange": (1.00, 0.55, 0.00),
    "white": (0.95, 0.95, 0.95),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
# Centre of the shape, as fractions of the image side (x, y).
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.28, 0.50),
    "right": (0.72, 0.50),
    "top": (0.50, 0.28),
    "bottom": (0.50, 0.72),
    "center": (0.50, 0.50),
}
_PLACE_WORDS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
                "center": "in the center"}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
POSITION_NAMES: tuple[str, ...] = tuple(POSITIONS)


class Scene(NamedTuple):
    """One scene: a `colour` `shape` at `position` on a `background` colour (never the shape's colour)."""

    colour: str
    shape: str
    position: str
    background: str


def caption(scene: Scene) -> str:
    """The prompt for `scene`, e.g. 'a red circle on the left, blue background'."""
    article = "an" if scene.colour[0] in "aeiou" else "a"
    return f"{article} {scene.colour} {scene.shape} {_PLACE_WORDS[scene.position]}, {scene.background} background"


_PROMPT = re.compile(
    r"^an? (?P<colour>\w+) (?P<shape>\w+) (?P<place>on the left|on the right|at the top|at the bottom|in the center),"
    r" (?P<background>\w+) background$")


def parse(prompt: str) -> Scene | None:
    """The scene a prompt written by `caption` asks for, or None when the prompt is not one (the inverse of caption).

    >>> parse("an orange cross at the top, white background")
    Scene(colour='orange', shape='cross', position='top', background='white')
    >>> parse("a photo of a cat") is None
    True
    """
    match = _PROMPT.match(prompt.strip().lower())
    if not match:
        return None
    position = {words: name for name, words in _PLACE_WORDS.items()}[match["place"]]
    scene = Scene(match["colour"], match["shape"], position, match["background"])
    if scene.colour not in COLOURS or scene.background not in COLOURS or scene.shape not in SHAPES:
        return None
    return scene if scene.colour != scene.background else None


HELD_OUT_PROMPTS: tuple[str, ...] = (
    "a red circle on the left, blue background",
    "a yellow square on the right, purple background",
    "a green triangle at the top, white background",
    "a white cross at the bottom, red background",
    "a blue triangle in the center, yellow background",
    "an orange cross on the left, cyan background",
    "a cyan square at the bottom, green background",
    "a purple circle at the top, orange background",
)
HELD_OUT_SCENES: frozenset[Scene] = frozenset(scene for scene in map(parse, HELD_OUT_PROMPTS) if scene is not None)


def all_scenes() -> list[Scene]:
    """Every scene the vocabulary can say (held-out ones included), in a fixed order."""
    return [Scene(colour, shape, position, background) for colour in COLOUR_NAMES for shape in SHAPES
            for position in POSITION_NAMES for background in COLOUR_NAMES if background != colour]


def sample(n: int, generator: torch.Generator | None = None, held_out: bool = False) -> list[Scene]:
    """`n` scenes drawn uniformly; the held-out prompts' scenes are never drawn unless `held_out`."""
    scenes = [scene for scene in all_scenes() if held_out or scene not in HELD_OUT_SCENES]
    picks = torch.randint(len(scenes), (n,), generator=generator)
    return [scenes[i] for i in picks.tolist()]


def _mask(shape: str, xs: torch.Tensor, ys: torch.Tensor, half: float) -> torch.Tensor:
    """Where `shape` of half-size `half`, centred at 0, covers the points (xs, ys)."""
    if shape == "circle":
        return xs**2 + ys**2 <= half**2
    if shape == "square":
        return (xs.abs() <= half * 0.88) & (ys.abs() <= half * 0.88)
    if shape == "triangle":  # apex up, base at the bottom
        return (ys <= half * 0.9) & (ys >= -half * 1.1 + 2.2 * xs.abs())
    if shape == "cross":
        arm = half * 0.36
        return ((xs.abs() <= arm) & (ys.abs() <= half)) | ((ys.abs() <= arm) & (xs.abs() <= half))
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, size: int = 32, generator: torch.Generator | None = None) -> torch.Tensor:
    """`scene` drawn as a 3 x size x size image in [-1, 1], anti-aliased (4x supersampled), with random jitter of the
    shape's size (+-15%), position (+-5% of the side) and both colours (+-0.06 per channel) drawn from `generator`."""
    jitter = torch.rand(9, generator=generator) * 2 - 1
    half = size * 0.21 * (1 + 0.15 * jitter[0].item())
    cx = POSITIONS[scene.position][0] * size + 0.05 * size * jitter[1].item()
    cy = POSITIONS[scene.position][1] * size + 0.05 * size * jitter[2].item()
    colour = (torch.tensor(COLOURS[scene.colour]) + 0.06 * jitter[3:6]).clamp(0, 1)
    background = (torch.tensor(COLOURS[scene.background]) + 0.06 * jitter[6:9]).clamp(0, 1)
    fine = size * 4
    coords = (torch.arange(fine, dtype=torch.float32) + 0.5) / 4
    ys, xs = torch.meshgrid(coords - cy, coords - cx, indexing="ij")
    cover = _mask(scene.shape, xs, ys, half).float()[None, None]
    cover = F.avg_pool2d(cover, 4)[0]  # 1 x size x size, the fraction of each pixel the shape covers
    image = cover * colour[:, None, None] + (1 - cover) * background[:, None, None]
    return image * 2 - 1


def render_batch(scenes: Sequence[Scene], size: int = 32, generator: torch.Generator | None = None) -> torch.Tensor:
    """`render` for each scene, stacked into an N x 3 x size x size batch."""
    return torch.stack([render(scene, size, generator) for scene in scenes])


class Judge(nn.Module):
    """A small CNN that reads a scene back from a 32x32 image in [-1, 1]: one head (logits) per attribute."""

    heads: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("colour", COLOUR_NAMES), ("shape", SHAPES), ("position", POSITION_NAMES), ("background", COLOUR_NAMES))

    def __init__(self, width: int = 32) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                                 nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU())

        self.features = nn.Sequential(
            block(3 + 2, width), nn.MaxPool2d(2), block(width, 2 * width), nn.MaxPool2d(2),
            block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out = nn.ModuleDict({name: nn.Linear(4 * width, len(labels)) for name, labels in self.heads})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute for N x 3 x H x W images in [-1, 1] (two coordinate channels let it see position)."""
        n, _, h, w = images.shape
        ys = torch.linspace(-1, 1, h, device=images.device).view(1, 1, h, 1).expand(n, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=images.device).view(1, 1, 1, w).expand(n, 1, h, w)
        features = self.features(torch.cat([images, xs, ys], dim=1))
        return {name: head(features) for name, head in self.out.items()}


def labels(scenes: Sequence[Scene]) -> dict[str, torch.Tensor]:
    """The index of each scene's attribute in each of the judge's heads, as tensors of length N."""
    return {name: torch.tensor([names.index(getattr(scene, name)) for scene in scenes]) for name, names in Judge.heads}


JUDGE_WEIGHTS = Path(__file__).parent / "weights" / "judge.safetensors"


@functools.cache
def load_judge() -> Judge:
    """The shipped judge (trained by `training/train_judge.py`), in eval mode; loaded once per process."""
    from safetensors.torch import load_file

    judge = Judge()
    judge.load_state_dict(load_file(JUDGE_WEIGHTS))
    return judge.eval()


@torch.no_grad()
def judge_reads(judge: Judge, images: torch.Tensor, prompts: Sequence[str]) -> list[bool]:
    """For each image (N x 3 x H x W in [-1, 1]), whether the judge reads it as its prompt: every attribute the prompt
    names is the judge's argmax. A prompt that `parse` cannot read counts as not drawn."""
    judge.eval()
    if images.shape[-1] != 32 or images.shape[-2] != 32:
        images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    logits = judge(images.float())
    reads = []
    for i, prompt in enumerate(prompts):
        scene = parse(prompt)
        reads.append(scene is not None and all(
            names[int(logits[name][i].argmax())] == getattr(scene, name) for name, names in Judge.heads))
    return reads
