"""Measuring a pipeline: the time and peak memory of its calls, the quality of its images, what its weights and
activations take, and how two sets of timings compare.

Each module is light to import on its own (`timing` and `quality` load torch when they measure), so the command line
can check a floor or a size before torch loads. Outside this folder, import these modules:
"""

__all__ = [
    "comparison",  # a ratio of medians with its bootstrap interval and verdict
    "figures",  # the figures a profile records (Stat, SpeedRatio, Metrics, KnobEffect, SizeSettings)
    "host_load",  # how much of the CPU other processes use
    "memory_facts",  # what a loaded model's weights take, read from its modules
    "memory_model",  # the peak a configuration will reach, predicted from facts and observations
    "quality",  # PSNR, SSIM, LPIPS, CLIP score and the prompt judge; quality floors
    "timing",  # rendering and timing pipeline calls
]
