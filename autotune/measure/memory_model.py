"""A configuration's peak memory, predicted before it runs, from the pipeline's sizes and the study's measurements.

The estimate has three parts, each from what the worker's `Describe` read off the real modules (`measure.memory_facts`):

- **weights**: every component's floating-point elements at the precision's bytes (the VAE kept in fp32 under fp16
  when it must upcast), the denoiser's Linear weights at one byte when quantized, its Linear/Conv weights at one
  byte with fp8 storage; with offload, only what stays on the device (model offload: the largest component; group
  offload: a block or a leaf and the next one it prefetches; sequential: one leaf).
- **attention scores**: the N x N score and probability matrices that full-matrix attention (`vanilla`,
  `sdpa-math`) materializes for every head at once, or for `attention_slice_size` heads at a time when sliced. The
  fused kernels (SDPA's flash / memory-efficient, xformers, flash-attn, flex) never hold them.
- **other activations**: the UNet's skip connections or the DiT's widest hidden state, the largest attention
  layer's q, k, v and output, the VAE decoder's full-resolution feature map (one image at a time when sliced, one
  tile when tiled), and the decoded images.

The arithmetic is exact about sizes, not about what the allocator and the runtime add. So the model is calibrated
online from the study's own measured trials: the scale of the "other activations" comes from how the measured peak
grew with the batch inside each trial (median over trials), and an offset (the CUDA context and allocator slack on
a GPU; the torch runtime and freed-but-resident memory in the worker on a CPU) is the median of what is left,
separately for compiled and eager trials, since compiled code holds its own buffers. Before any trial has run, the
offset is what the worker measured besides the model (`ModelFacts.baseline_bytes`), or nothing.

Nothing here imports torch or Optuna: the search's trial loop and `recommend` call it with plain settings.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .memory_facts import ComponentSize, ModelFacts

DTYPE_BYTES = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2}
# int8 and fp8 weights, quantized (torchao) or stored (layerwise casting): one byte each; torchao's per-row scales
# are a rounding error beside them.
ONE_BYTE_WEIGHT = 1
# Attention that materializes the full N x N scores and their softmax.
FULL_SCORES = frozenset({"vanilla", "sdpa-math"})
# A configuration predicted to need more than this many times the budget is not run (once the model is calibrated).
REFUSE_MARGIN = 1.5
# Measured trials the calibration needs before a prediction may refuse a configuration.
MIN_CALIBRATION_TRIALS = 2


@dataclass(frozen=True)
class Estimate:
    """The uncalibrated parts of a prediction, in bytes."""

    weights: float
    scores: float
    other: float

    @property
    def total(self) -> float:
        return self.weights + self.scores + self.other


@dataclass(frozen=True)
class Observation:
    """A measured trial: the settings it ran (read back) and its (batch size, peak bytes) points."""

    settings: Mapping[str, Any]
    points: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Calibration:
    """What the study's measurements say the arithmetic misses: a scale on the other activations, and an offset."""

    other_scale: float = 1.0
    offsets: dict[str, float] = field(default_factory=dict)  # trial group (`group_of`) -> bytes
    trials: int = 0  # measured trials it was fitted on

    @property
    def ready(self) -> bool:
        return self.trials >= MIN_CALIBRATION_TRIALS

    def offset(self, group: str, default: float) -> float:
        if group in self.offsets:
            return self.offsets[group]
        if self.offsets:
            return statistics.median(self.offsets.values())
        return default


def group_of(settings: Mapping[str, Any]) -> str:
    """Trials whose unmodelled memory differs: compiled code holds buffers of its own."""
    return "compiled" if compiles(settings) else "eager"


def compiles(settings: Mapping[str, Any]) -> bool:
    """Whether a configuration compiles its denoiser (an older study may record `compile: null` for none)."""
    return settings.get("compile", "none") not in (None, "none")


@dataclass(frozen=True)
class MemoryModel:
    """Predicts the peak bytes of `settings` at a batch size, for one pipeline and image size.

    >>> model = MemoryModel(facts, height=512, width=512).calibrated(observations)  # doctest: +SKIP
    >>> model.predict({"precision": "fp16", "attention": "sliced"}, batch=4)  # doctest: +SKIP
    """

    facts: ModelFacts
    height: int
    width: int
    guidance_scale: float | None = None
    calibration: Calibration = Calibration()

    def estimate(self, settings: Mapping[str, Any], batch: int) -> Estimate:
        return Estimate(weights=self.weight_bytes(settings), scores=self.score_bytes(settings, batch),
                        other=self.other_bytes(settings, batch))

    def predict(self, settings: Mapping[str, Any], batch: int) -> int:
        """The calibrated peak, in bytes, of `settings` at `batch` images per call."""
        parts = self.estimate(settings, batch)
        offset = self.calibration.offset(group_of(settings), float(self.facts.baseline_bytes or 0))
        return int(round(parts.weights + parts.scores + self.calibration.other_scale * parts.other + offset))

    def refuses(self, settings: Mapping[str, Any], batch: int, budget_bytes: int,
                margin: float = REFUSE_MARGIN) -> bool:
        """True when the calibrated model says `settings` needs more than `margin` times the budget at `batch`."""
        return self.calibration.ready and self.predict(settings, batch) > margin * budget_bytes

    def calibrated(self, observations: Sequence[Observation]) -> MemoryModel:
        """This model fitted to the study's measured trials (see the module's docstring)."""
        observations = [o for o in observations if o.points]
        scales = []
        for observation in observations:
            (first, low), (last, high) = min(observation.points), max(observation.points)
            if last == first:
                continue
            before, after = self.estimate(observation.settings, first), self.estimate(observation.settings, last)
            modelled = after.other - before.other
            if modelled > 0:
                scales.append((high - low - (after.scores - before.scores)) / modelled)
        scale = max(0.0, statistics.median(scales)) if scales else 1.0
        residuals: dict[str, list[float]] = {}
        for observation in observations:
            left = [peak - self._fixed(observation.settings, batch, scale) for batch, peak in observation.points]
            residuals.setdefault(group_of(observation.settings), []).append(statistics.median(left))
        offsets = {group: statistics.median(values) for group, values in residuals.items()}
        return replace(self, calibration=Calibration(scale, offsets, len(observations)))

    def _fixed(self, settings: Mapping[str, Any], batch: int, scale: float) -> float:
        parts = self.estimate(settings, batch)
        return parts.weights + parts.scores + scale * parts.other

    # ---- the arithmetic ----

    def _bytes_each(self, settings: Mapping[str, Any]) -> int:
        return DTYPE_BYTES.get(str(settings.get("precision", "fp32")), 4)

    def _vae_bytes_each(self, settings: Mapping[str, Any]) -> int:
        # The precision knob keeps an upcasting VAE (SD 1.x) in fp32 under fp16.
        if settings.get("precision") == "fp16" and self.facts.vae_force_upcast:
            return 4
        return self._bytes_each(settings)

    def component_bytes(self, name: str, size: ComponentSize, settings: Mapping[str, Any]) -> float:
        """One component's weights at the settings' precision, quantization and storage dtype."""
        each = self._vae_bytes_each(settings) if name == "vae" else self._bytes_each(settings)
        one_byte = 0
        if name == self.facts.denoiser:
            if settings.get("quantization", "none") not in (None, "none"):
                one_byte = size.linear_elements
            elif settings.get("layerwise_casting", "none") not in (None, "none"):
                one_byte = size.cast_elements
        return one_byte * ONE_BYTE_WEIGHT + (size.elements - one_byte) * each + size.other_bytes

    def weight_bytes(self, settings: Mapping[str, Any]) -> float:
        """The weights on the device while the pipeline runs."""
        sizes = {name: self.component_bytes(name, size, settings) for name, size in self.facts.components.items()}
        offload = settings.get("offload", "none")
        each = self._bytes_each(settings)
        if offload == "model":  # one component on the device at a time
            return max(sizes.values(), default=0.0)
        if offload == "group-block":  # the block running and the next, prefetched on a stream
            return 2.0 * each * max((s.largest_block_elements for s in self.facts.components.values()), default=0)
        if offload in ("group-leaf", "sequential"):
            return 2.0 * each * max((s.largest_leaf_elements for s in self.facts.components.values()), default=0)
        return sum(sizes.values())

    def _latent_pixels(self) -> int:
        factor = self.facts.vae_scale_factor
        return max(1, self.height // factor) * max(1, self.width // factor)

    def _denoiser_batch(self, batch: int) -> int:
        guided = self.guidance_scale is None or self.guidance_scale > 1
        return batch * (self.facts.guidance_batch if guided else 1)

    def score_bytes(self, settings: Mapping[str, Any], batch: int) -> float:
        """The largest attention layer's score and probability matrices, when the attention materializes them."""
        attention = settings.get("attention", "sdpa")
        if attention not in FULL_SCORES and attention != "sliced" or not self.facts.attention:
            return 0.0
        each, pixels = self._bytes_each(settings), self._latent_pixels()
        rows = self._denoiser_batch(batch)
        largest = 0.0
        for site in self.facts.attention:
            tokens = pixels / site.pixels_per_token
            # Sliced attention runs `slice_size` of the (batch x heads) score matrices at a time.
            in_flight = rows * site.heads
            if attention == "sliced":
                in_flight = min(in_flight, _slice(settings, site.heads))
            largest = max(largest, 2.0 * in_flight * tokens * tokens * each)
        return largest

    def other_bytes(self, settings: Mapping[str, Any], batch: int) -> float:
        """The other activations: the denoiser's kept tensors, the VAE decode, the decoded images."""
        each, pixels = self._bytes_each(settings), self._latent_pixels()
        rows = self._denoiser_batch(batch)
        facts = self.facts
        kept = facts.skip_channels_per_pixel * pixels
        if facts.hidden_per_token and facts.attention:
            kept += facts.hidden_per_token * pixels / facts.attention[0].pixels_per_token
        qkvo = max((4.0 * site.heads * site.head_dim * pixels / site.pixels_per_token for site in facts.attention),
                   default=0.0)
        denoiser = rows * (kept + qkvo) * each
        image_pixels = self.height * self.width
        tile = facts.vae_tile_pixels
        decoded = image_pixels
        if settings.get("vae_tiling") and tile and (self.height > tile or self.width > tile):
            decoded = min(self.height, tile) * min(self.width, tile)
        at_once = 1 if settings.get("vae_slicing") else batch
        # A decoder convolution at full resolution holds its input and its output.
        channels = facts.vae_channels[0] if facts.vae_channels else 0
        vae = at_once * 2.0 * channels * decoded * self._vae_bytes_each(settings)
        images = batch * 3 * image_pixels * 4 * 2  # fp32 as the VAE's postprocess returns them, and as numpy
        return denoiser + vae + images


def _slice(settings: Mapping[str, Any], heads: int) -> int:
    """Score matrices computed at once by sliced attention: diffusers' `auto` is half the heads, `max` one."""
    size = settings.get("attention_slice_size", "auto")
    if size == "max":
        return 1
    if isinstance(size, int):
        return max(1, min(size, heads))
    return max(1, heads // 2)

