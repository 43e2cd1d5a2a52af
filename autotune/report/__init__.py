"""The report: one self-contained HTML page about a search, for a person to read.

It shows what the study found (the Pareto front, or speed against memory), which knobs mattered, how the search went,
the top configurations, and the reference images beside the chosen configurations' so that a quality score can be
seen. plotly.js and the images are inlined: the page opens without a network.

This module assembles the page; its parts live beside it: `report.sources` (finding the study), `report.plots`,
`report.tables`, `report.images`, `report.trials` (how trials are read) and `report.page` (the frame).

>>> found = report_source("tiny.yaml")  # doctest: +SKIP
>>> write_report(found.study, Path("tiny.html"), found.profile, found.images)  # doctest: +SKIP
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from autotune.exceptions import Unavailable
from autotune.profile import Profile, write_atomic

from .images import REFERENCE, image_grid, psnr
from .page import CSS, ERROR_RECORDER, PAGE, section
from .plots import history_plot, importances_plot, tradeoff_plot
from .sources import ReportError, ReportSource, report_source
from .tables import TOP_CONFIGURATIONS, summary_table, top_table
from .trials import multi, objective_names

__all__ = ["REFERENCE", "TOP_CONFIGURATIONS", "ReportError", "ReportSource", "psnr", "report_source", "write_report"]


def write_report(
    study: optuna.Study,
    out: str | os.PathLike,
    profile: Profile | None = None,
    images: dict[str, np.ndarray] | None = None,
) -> Path:
    """Write one self-contained HTML page about `study` to `out` (atomically) and return its path.

    `profile` adds the goal and the re-measured result; `images` (label -> (prompts, H, W, 3) in [0, 1], with
    `"reference"`) adds the image grid.
    """
    try:
        import plotly.offline
    except ModuleNotFoundError:  # a dependency, but a machine without an index may lack it (the GPU run carries none)
        raise Unavailable("the report draws its plots with plotly, which is not installed here: pip install plotly, "
                          "or write the report on another machine from the study and profile") from None

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = objective_names(study, profile)
    title = f"autotune report: {study.study_name}"
    sections = [
        section("tradeoff", "Pareto front" if multi(study) else "Speed against memory",
                tradeoff_plot(study, trials, names, profile)),
        section("importances", "Which knobs mattered", importances_plot(study, trials, names)),
        section("history", "Optimization history", history_plot(study, names)),
        section("top", "Top configurations", top_table(study, trials, profile)),
        section("images", "Images: the reference beside the chosen configurations", image_grid(study, images)),
    ]
    page = PAGE.format(
        title=html.escape(title), css=CSS, error_recorder=ERROR_RECORDER, plotly=plotly.offline.get_plotlyjs(),
        summary=summary_table(study, trials, profile), sections="\n".join(sections),
    )
    try:
        return write_atomic(out, page)
    except OSError as error:
        raise ReportError(f"{out}: cannot write the report ({error.strerror or error})") from None
