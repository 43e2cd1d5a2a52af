"""Comparing configurations again, Optuna-free: the interleaved re-measurement of the candidates against the default
configuration, the reference images and quality floor they are scored against, the ablation of the chosen knobs, and
`autotune verify`, which re-measures a profile on this machine. The search, `verify` and `bench/` share it.

Outside this folder, import these modules:
"""

__all__ = [
    "ablation",  # which chosen knobs mattered, measured one by one
    "candidates",  # the configurations worth re-measuring, and the Pareto front among them
    "records",  # what a trial records in the study, written and read in one place
    "remeasure",  # timing the candidates in interleaved rounds
    "scoring",  # the reference images a search scores against, and its floor
    "verify",  # `autotune verify`: a profile re-measured here
]
