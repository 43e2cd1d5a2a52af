"""Image fidelity against a reference rendering: the reference, its on-disk cache, the metrics, the floor.

The reference is the workload's prompts and seeds rendered by the reference configuration (fp32, the pipeline's own
scheduler, `reference_steps`), one image per prompt. A trial renders the same prompts and seeds and is scored against
it. Each image of a call has its own generator (the workload's `seeding: per-image`), so the first image of a batch
is the same image at any batch size, even under a scheduler that draws noise at every step (unless a knob makes
images depend on their batch: `Knob.batch_dependent`); the timed calls of a trial double as its quality renders. This
module knows nothing of Optuna.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from autotune.exceptions import InvalidInput, Unavailable
from autotune.files import cache_dir, write_atomic
from autotune.options import METRICS, FloorSpec

DEFAULT_METRICS = ("psnr", "ssim")
# Identical images have an infinite PSNR; YAML and the samplers want a number.
PSNR_CAP = 100.0


def check_judgeable(floor: FloorSpec | None, prompts: list[str]) -> None:
    """Refuse a `prompt` floor over prompts the judge cannot read (it knows only the built-in scenes' captions)."""
    from autotune.pipelines.shapes import HELD_OUT_PROMPTS, parse

    unreadable = [prompt for prompt in prompts if parse(prompt) is None] if floor and floor.metric == "prompt" else []
    if unreadable:
        raise InvalidInput(f"--quality-floor {floor}: the prompt judge reads only the built-in scenes' captions "
                           f"(such as {HELD_OUT_PROMPTS[0]!r}), not {unreadable[0]!r}")


# ---- the reference cache ----


def reference_key(model_id: str, workload: dict[str, Any], steps: int, device: str, versions: dict[str, Any]) -> str:
    """What a reference rendering depends on: the model, the workload, the steps, the device and library versions."""
    identity = {"model": model_id, "workload": workload, "steps": steps, "device": device,
                "torch": versions.get("torch"), "diffusers": versions.get("diffusers"),
                "transformers": versions.get("transformers")}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def reference_path(key: str) -> Path:
    return cache_dir() / "references" / f"{key}.npz"


def save_reference(path: Path, images: np.ndarray, noise_floor: dict[str, float]) -> Path:
    """Write atomically: two searches sharing a cache never read half a file."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images, noise_floor=json.dumps(noise_floor))
    return write_atomic(path, buffer.getvalue())


def load_reference(path: str | Path) -> tuple[np.ndarray, dict[str, float]]:
    with np.load(path) as data:
        return data["images"], json.loads(str(data["noise_floor"]))


# ---- the images sidecar (for the report) ----


def images_path(profile_path: str | os.PathLike) -> Path:
    """The images sidecar of a profile: `tiny.yaml` -> `tiny.images.npz`."""
    path = Path(profile_path)
    return path.with_name(f"{path.stem}.images.npz")


def save_images(path: str | os.PathLike, images: dict[str, np.ndarray]) -> Path:
    """Save label -> (prompts, H, W, 3) arrays in [0, 1], atomically; `"reference"` is the reference rendering.

    A video pipeline's clips (prompts, frames, H, W, 3) are saved as their first frames: the report's grid shows
    one still per prompt (quality is scored on every frame).
    """
    path = Path(path)
    images = {label: array[:, 0] if np.ndim(array) == 5 else array for label, array in images.items()}
    for label, array in images.items():
        _check_images(label, np.asarray(array))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **images)
    return write_atomic(path, buffer.getvalue())


def load_images(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read what `save_images` wrote, in the order it was written."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            images = {label: archive[label] for label in archive.files}
    except (OSError, ValueError) as error:
        raise InvalidInput(f"{path}: cannot read the images ({error})") from None
    for label, array in images.items():
        _check_images(label, array)
    return images


def _check_images(label: str, array: np.ndarray) -> None:
    if array.ndim != 4 or array.shape[-1] != 3:
        raise InvalidInput(f"images {label!r}: expected (prompts, height, width, 3), got shape {array.shape}")


# ---- metrics ----


def score(images: np.ndarray, reference: np.ndarray, metrics: tuple[str, ...] = DEFAULT_METRICS,
          prompts: list[str] | None = None) -> dict[str, float]:
    """Fidelity of `images` to `reference` (both N x H x W x 3 in [0, 1], one image per prompt), per metric; higher
    is better. A fidelity metric's score is its worst prompt's, so a configuration that ruins one prompt of four
    fails a floor the others meet; `prompt` is the share of prompts the judge reads as drawn (`aggregate`).

    >>> reference = np.zeros((2, 8, 8, 3)); images = reference.copy(); images[1] += 0.1
    >>> score(images, reference, ("psnr",))
    {'psnr': 20.0}
    """
    return aggregate(score_by_prompt(images, reference, metrics, prompts))


def aggregate(by_prompt: dict[str, list[float]]) -> dict[str, float]:
    """The scores of a trial from its prompts': the worst prompt's for a fidelity metric, the mean for `prompt` (the
    share of prompts drawn as asked: one unread prompt of four is 0.75)."""
    return {metric: float(np.mean(values)) if metric == "prompt" else float(min(values))
            for metric, values in by_prompt.items()}


def score_by_prompt(images: np.ndarray, reference: np.ndarray, metrics: tuple[str, ...] = DEFAULT_METRICS,
                    prompts: list[str] | None = None) -> dict[str, list[float]]:
    """Each prompt's score per metric (`score` takes the worst). A video prompt's clip (frames x H x W x 3) scores
    the mean over its frames.

    PSNR and SSIM are torchmetrics'. LPIPS (reported as 1 - distance, so that higher is better) and CLIP score
    need their models on this machine; they are never downloaded. `prompt` is the built-in scenes' judge
    (`autotune.pipelines.shapes.Judge`): 1 where it reads the image as its prompt, else 0.
    """
    import torch

    if np.shape(images) != np.shape(reference):
        raise InvalidInput(f"images of shape {np.shape(images)} cannot be scored against a reference of shape "
                           f"{np.shape(reference)}")
    n_prompts = np.shape(images)[0]
    prompts = [(prompts or [""])[index % len(prompts or [""])] for index in range(n_prompts)]
    frames = np.shape(images)[1] if np.ndim(images) == 5 else 1
    if np.ndim(images) == 5:
        images, reference = (np.reshape(a, (-1, *np.shape(a)[2:])) for a in (images, reference))
    produced = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2).clamp(0, 1)
    wanted = torch.from_numpy(np.ascontiguousarray(reference, dtype=np.float32)).permute(0, 3, 1, 2).clamp(0, 1)
    if not torch.isfinite(produced).all():
        return {metric: [worst_score(metric)] * n_prompts for metric in metrics}
    texts = [prompt for prompt in prompts for _ in range(frames)]
    scores = {}
    for metric in metrics:
        if metric == "psnr":
            values = _psnr(produced, wanted)
        elif metric == "ssim":
            from torchmetrics.functional.image import structural_similarity_index_measure

            values = structural_similarity_index_measure(produced, wanted, data_range=1.0, reduction="none").tolist()
        elif metric == "lpips":
            values = [1.0 - _lpips(a[None], b[None]) for a, b in zip(produced, wanted, strict=True)]
        elif metric == "clip":
            values = [_clip(image[None], [text]) for image, text in zip(produced, texts, strict=True)]
        elif metric == "prompt":
            values = _judged(produced, texts)
        else:
            raise InvalidInput(f"unknown quality metric {metric!r}; use one of {', '.join(METRICS)}")
        scores[metric] = [float(np.mean(values[i * frames:(i + 1) * frames])) for i in range(n_prompts)]
    return scores


def _psnr(produced, wanted) -> list[float]:
    from torchmetrics.functional.image import peak_signal_noise_ratio

    # Capped: an identical image's infinite PSNR would make any mean infinite.
    return [min(PSNR_CAP, float(peak_signal_noise_ratio(a[None], b[None], data_range=1.0)))
            for a, b in zip(produced, wanted, strict=True)]


def worst_score(metric: str) -> float:
    """The lowest score a metric gives: what unusable or unscored images count as."""
    return {"psnr": 0.0, "ssim": -1.0, "lpips": 0.0, "clip": 0.0, "prompt": 0.0}[metric]


def _lpips(produced, wanted) -> float:
    try:
        from torchmetrics.functional.image import learned_perceptual_image_patch_similarity

        return float(learned_perceptual_image_patch_similarity(produced * 2 - 1, wanted * 2 - 1, net_type="alex"))
    except Exception as error:  # torchvision or the LPIPS weights missing
        raise Unavailable(f"LPIPS needs torchvision and the LPIPS weights on this machine ({error}); "
                          "use psnr or ssim") from None


def _clip(produced, prompts: list[str]) -> float:
    model = os.environ.get("AUTOTUNE_CLIP_MODEL")
    if not model or not Path(model).is_dir():
        raise Unavailable("the CLIP score needs a local CLIP model folder in AUTOTUNE_CLIP_MODEL "
                          "(it is never downloaded); use psnr or ssim")
    import torch
    from torchmetrics.functional.multimodal import clip_score

    texts = [prompts[index % len(prompts)] for index in range(len(produced))]
    return float(clip_score((produced * 255).to(torch.uint8), texts, model_name_or_path=model))


def _judged(produced, texts: list[str]) -> list[float]:
    from autotune.pipelines import shapes

    if any(shapes.parse(text) is None for text in texts):
        raise Unavailable("the prompt metric reads only the built-in scenes' prompts (such as "
                          f"{shapes.HELD_OUT_PROMPTS[0]!r}); use psnr or ssim")
    return [float(read) for read in shapes.judge_reads(shapes.load_judge(), produced * 2 - 1, texts)]


def meets(scores: dict[str, float], metric: str, minimum: float) -> bool:
    return scores.get(metric, worst_score(metric)) >= minimum
