"""The tuner, the search itself: the space of knob settings, the shared Optuna study and its storage, the trials,
and what a search ends with (the re-measured choice, written as a profile). `autotune.tuner.run.run_search` runs one
(the folder is not named `search`: that is `autotune.search`, the function).

Outside this folder, import these modules (`space`, `storages`, `trials` and `time_split` are its own):
"""

__all__ = [
    "distributed",  # `autotune worker` and `autotune export`: many workers on one study
    "dry_run",  # `autotune search --dry-run`: what a search would do, without loading weights
    "outcome",  # what a finished search returns and writes
    "run",  # `run_search` and `search`
    "spec",  # what a study records for its workers (`StudySpec`), typed
    "study",  # the shared study: its specification, name, storage and sampler
]
