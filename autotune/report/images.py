"""The report's image grid: the reference rendering beside each chosen configuration's, for the same prompts and
seeds, each image inlined as a PNG and captioned with its PSNR against the reference."""

from __future__ import annotations

import base64
import html
import io
import math

import numpy as np
import optuna

from autotune.measure.quality import PSNR_CAP, score
from autotune.tuner.spec import recorded_spec

from .page import note

REFERENCE = "reference"  # the images key of the reference rendering
# Small images are enlarged (pixelated) to at least this width, so a person can see what the scores mean.
_MIN_IMAGE_PX = 128


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of one image against its reference, as the search scores it (capped for identical images)."""
    return score(np.asarray(image)[None], np.asarray(reference)[None], ("psnr",))["psnr"]


def image_grid(study: optuna.Study, images: dict[str, np.ndarray] | None) -> str:
    """One row per rendering (the reference first), one column per prompt; a note when there are no images."""
    if not images:
        return note("No images were saved with this study (no <profile>.images.npz next to the profile).")
    if REFERENCE not in images:
        return note(f"The saved images have no {REFERENCE!r} rendering to compare with: "
                    f"{', '.join(images)}.")
    reference = images[REFERENCE]
    spec = recorded_spec(study)
    prompts = spec.workload.prompts if spec else []
    head = "<th></th>" + "".join(
        f"<th>{html.escape(prompts[i] if i < len(prompts) else f'prompt {i + 1}')}</th>"
        for i in range(len(reference)))
    rows = [_image_row(REFERENCE, reference, None)]
    rows += [_image_row(label, array, reference) for label, array in images.items() if label != REFERENCE]
    return ('<p>Each row renders the same prompts with the same seeds. PSNR compares each image with the reference '
            f'above it (higher is closer; identical images are capped at {PSNR_CAP:g} dB).</p>\n'
            f'<table class="grid"><thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(rows) + "\n</tbody></table>")


def _image_row(label: str, array: np.ndarray, reference: np.ndarray | None) -> str:
    comparable = reference is not None and array.shape == reference.shape
    per_image = [psnr(image, reference[i]) for i, image in enumerate(array)] if comparable else []
    if reference is None:
        header = "the reference rendering"
    elif not comparable:
        header = f"size {array.shape[1:3]} differs from the reference: not compared"
    else:
        # The search scores the worst prompt: the least of the per-image values already computed for the captions.
        ssim = score(array, reference, ("ssim",))["ssim"]
        header = f"worst prompt: PSNR {min(per_image):.1f} dB, SSIM {ssim:.4f} (as the search scores it)"
    cells = []
    for i, image in enumerate(array):
        caption = _psnr_text(per_image[i]) if per_image else ""
        cells.append(f'<td><figure>{_img_tag(image, f"{label}, prompt {i + 1}")}'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure></td>")
    return (f'<tr><th>{html.escape(label)}<br><span class="note">{html.escape(header)}</span></th>'
            + "".join(cells) + "</tr>")


def _psnr_text(decibels: float) -> str:
    return "identical" if decibels >= PSNR_CAP else f"PSNR {decibels:.1f} dB"


def _img_tag(image: np.ndarray, alt: str) -> str:
    from PIL import Image

    pixels = (np.clip(np.nan_to_num(np.asarray(image, np.float64)), 0, 1) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    height, width = pixels.shape[:2]
    scale = max(1, math.ceil(_MIN_IMAGE_PX / width))
    return (f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" '
            f'width="{width * scale}" height="{height * scale}">')
