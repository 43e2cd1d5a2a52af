"""`autotune recommend`: a configuration chosen without measuring, printed with one line of why per choice.

Like every command, its flags are checked before torch or diffusers is imported; it never imports Optuna.
"""

from __future__ import annotations

from typing import Annotated

import typer

from autotune.files import check_writable
from autotune.units import check_size

from .flags import check_at_least_one, check_choice
from .profiles import JsonOption, print_json


def recommend(
    model: Annotated[str | None, typer.Option("--model", "-m", help="hub id, local folder, or builtin:tiny-sd: its "
                                                                    "sizes let the memory model choose savers")] = None,
    budget: Annotated[str | None, typer.Option(help="memory budget: 6GB, 6GiB, 6000MB, 6.5G or 80%")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda (default: cuda when a GPU is present)")] = None,
    height: Annotated[int | None, typer.Option(help="image height (default: the pipeline's own)")] = None,
    width: Annotated[int | None, typer.Option(help="image width (default: the pipeline's own)")] = None,
    out: Annotated[str | None, typer.Option("--out", "-o", help="also write the settings and reasons as YAML")] = None,
    as_json: JsonOption = False,
) -> None:
    """Print the configuration rules and the memory model choose for this machine (no trial is run), and why."""
    if budget is not None:
        check_size(budget)
    if device is not None:
        check_choice("device", device, ("cpu", "cuda"))
    check_at_least_one(("height", height), ("width", width))
    if out is not None:
        check_writable(out)
    from autotune.recommendation import recommend as choose

    recommendation = choose(model, budget=budget, device=device, height=height, width=width)
    document = {"model": model, "memory_budget_bytes": recommendation.memory_budget_bytes,
                "predicted_peak_bytes": recommendation.predicted_peak_bytes, "measured": False,
                "settings": recommendation.settings, "reasons": recommendation.reasons}
    if as_json:
        print_json({**document, "notes": recommendation.notes})
    else:
        for line in recommendation.lines():
            print(line)
    if out is not None:
        import yaml

        from autotune.files import write_atomic

        write_atomic(out, yaml.safe_dump(document, sort_keys=False))
        if not as_json:
            print(f"wrote {out}")
