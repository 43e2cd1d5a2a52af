"""An app that ships its own tuned profiles and lets autotune pick the one that fits the machine it runs on.

    python examples/tiny_app/app.py "a lighthouse at dusk"

The app's `profiles/` folder travels with the app (as package data, in a wheel, in a container image). At start-up
`apply_profile(pipe, "auto", search_path=PROFILES)` picks, among the app's profiles, the user's own
(`AUTOTUNE_PROFILE_PATH`) and autotune's shipped ones, the profile made for this pipeline on this kind of machine.
When none fits, it applies nothing and says why; the app then runs untuned rather than on a guess.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from autotune import NoProfileFits, apply_profile, load_pipeline, select_profile

PROFILES = Path(__file__).resolve().parent / "profiles"
MODEL = "builtin:tiny-sd"  # a real app names its hub id or folder here


def main(prompt: str) -> None:
    pipe = load_pipeline(MODEL)
    selection = select_profile(pipe, search_path=PROFILES)
    print(selection.explain())
    try:
        pipe = apply_profile(pipe, "auto", search_path=PROFILES)
        # Size and steps the profile was tuned for, one image per prompt (call_kwargs(batch=True): its batch).
        call = selection.require().call_kwargs()
    except NoProfileFits:
        call = {"height": 64, "width": 64, "num_inference_steps": 20}  # the app's own defaults, untuned
    for label in ("first call (includes warm-up, compiling if the profile compiles)", "next call"):
        started = time.perf_counter()
        images = pipe(prompt, output_type="np", **call).images
        print(f"{label}: {len(images)} images of {images.shape[1]}x{images.shape[2]} in "
              f"{time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main(" ".join(sys.argv[1:]) or "a lighthouse at dusk")
