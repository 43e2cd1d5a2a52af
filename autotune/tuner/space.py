"""The search space as data: which knobs are searched, their domains, and how a trial samples them.

The space maps a knob's name to its `Domain` (the study records it as JSON, `spec.StudySpec`). Sampling is
define-by-run: an option (slice size, compile's options) is asked only when its parent activates it. A configuration
that breaks a rule between knobs is never run (the trial loop records it as infeasible). Nothing here imports Optuna: a
trial or a study is passed in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from autotune import knobs
from autotune.compare.records import TrialRecord, feasible
from autotune.exceptions import InvalidInput
from autotune.worker import protocol

if TYPE_CHECKING:
    import optuna

    from autotune.profile import Profile

# The user attr `recipe` of the trial that runs the reference configuration (under a quality floor).
REFERENCE_RECIPE = "reference"
# The user attr `recipe` of the trial that runs `recommend`'s configuration: the baseline the search must beat.
RECOMMENDED_RECIPE = "recommended"
# The user attr `recipe` of the trials that look, under a quality floor, for the fewest steps that meet it.
FEWER_STEPS_RECIPE = "fewer steps"

def searched_knobs(domains: Mapping[str, knobs.Domain], with_quality: bool = False) -> list[knobs.Knob]:
    """Knobs that change only speed and memory, plus those the image check guards, each with a choice to make here.

    Scheduler and VAE tiling change the image: they join only when a quality floor measures what they cost.
    """
    return [
        knob for knob in knobs.in_order()
        if not knob.call_time and knob.name in domains
        and (knob.exact or knob.guarded or with_quality)
        and len(searched_domain(knob, domains[knob.name], with_quality)) > 1
    ]


def searched_domain(knob: knobs.Knob, domain: knobs.Domain, with_quality: bool = False) -> knobs.Domain:
    """The knob's domain as searched: without a quality measurement, its lossy values are left out."""
    if with_quality or not knob.lossy or not isinstance(domain, knobs.Categorical):
        return domain
    return knobs.Categorical(tuple(value for value in domain.values if value not in knob.lossy))


def steps_range(workload_steps: int, reference_steps: int) -> knobs.IntRange:
    """Step counts searched under a quality floor: from a tenth of the reference (or the workload's own steps, when
    fewer) up to the reference itself."""
    low = min(workload_steps, max(2, reference_steps // 10))
    return knobs.IntRange(max(1, low), max(workload_steps, reference_steps))


def build_space(domains: Mapping[str, knobs.Domain], steps: knobs.IntRange | None = None,
                batch_sizes: tuple[int, ...] | None = None) -> dict[str, knobs.Domain]:
    """Knob name -> the domain to search (what the worker found available here); `steps` only with a quality floor.

    `steps` and `batch_size` are the call-time knobs the space makes itself rather than take their registered
    domain: the steps range depends on the reference's step count, and `batch_sizes` makes the batch a searched
    value (a Pareto search trades it for memory) instead of the largest batch that pays, found within each trial.
    """
    space = {knob.name: searched_domain(knob, domains[knob.name], with_quality=steps is not None)
             for knob in searched_knobs(domains, with_quality=steps is not None)}
    if steps is not None:
        space["steps"] = steps
    if batch_sizes:
        space["batch_size"] = knobs.Categorical(tuple(batch_sizes))
    return space


# Knobs whose value a trial under a quality floor finds by rendering (`calibration`) rather than samples: the largest
# that meets the floor is the fastest allowed, and a few renders find it where a sampler spends whole trials.
CALIBRATED = ("cache_threshold",)


def calibrated_part(space: dict[str, knobs.Domain], floor: bool) -> dict[str, knobs.Domain]:
    """Take out of `space` (and return) the knobs a trial calibrates: those of `CALIBRATED` in it as a range (not
    narrowed to a few values), under a floor."""
    return {name: space.pop(name) for name in CALIBRATED
            if floor and name in space and not isinstance(space[name], knobs.Categorical)}


def calibration_for(calibrated: Mapping[str, knobs.Domain] | None, settings: Mapping[str, Any], metric: str,
                    minimum: float | None) -> protocol.Calibrate | None:
    """What a trial with `settings` calibrates before it is timed, if anything (a cache that uses a threshold)."""
    for name, domain in (calibrated or {}).items():
        if minimum is not None and knobs.get(name).active(settings) and isinstance(domain, knobs.FloatRange):
            return protocol.Calibrate(name, domain.low, domain.high, metric, minimum)
    return None


def suggest(trial: optuna.trial.BaseTrial, space: Mapping[str, knobs.Domain],
            fixed: Mapping[str, Any]) -> dict[str, Any]:
    """Every knob's value for this trial: the defaults, the fixed values, and what the trial samples from `space`.

    Knobs are sampled in application order; a knob that the values so far leave one legal value (`fuse_qkv` once
    attention is not SDPA) takes it without being asked, so the sampler never spends a trial on a broken rule there.
    """
    settings: dict[str, Any] = {**knobs.defaults(), **fixed}
    for name, domain in space.items():
        if not knobs.get(name).active(settings):
            continue
        legal = _legal_values(domain, name, settings)
        settings[name] = legal[0] if len(legal) == 1 else sample(trial, name, domain)
    return settings


def _legal_values(domain: knobs.Domain, name: str, settings: Mapping[str, Any]) -> list:
    if not isinstance(domain, knobs.Categorical):
        return []
    before = set(knobs.violations(settings))
    return [v for v in domain.values if set(knobs.violations({**settings, name: v})) <= before]


def sample(trial: optuna.trial.BaseTrial, name: str, domain: knobs.Domain) -> Any:
    """One value of `domain` from `trial`: categorical, integer or float (linear or log) as the domain says."""
    if isinstance(domain, knobs.IntRange):
        return trial.suggest_int(name, domain.low, domain.high, log=domain.log)
    if isinstance(domain, knobs.FloatRange):
        return trial.suggest_float(name, domain.low, domain.high, log=domain.log)
    return trial.suggest_categorical(name, list(domain.values))


def narrow(space: Mapping[str, knobs.Domain], only: Mapping[str, Sequence[Any]]) -> dict[str, knobs.Domain]:
    """`space` with each knob of `only` searched among the values given (`--only quantization=none,int8-dynamic`):
    a subset of its domain here, typed as a profile types it. A knob not searched here, or a value outside its domain
    here, is refused. An integer or float range becomes the values given: an enumerable space, as a benchmark's
    oracle needs, and a threshold given values is sampled among them rather than calibrated."""
    narrowed = dict(space)
    for name, values in only.items():
        if name not in space:
            raise InvalidInput(f"only: {name} is not searched here (searched: {', '.join(space) or 'nothing'})")
        typed = []
        for value in values:
            checked = _typed({name: value}, "only")[name]
            if checked not in space[name]:
                raise InvalidInput(f"only: {name}={value!r} is not among its values here ({_shown(space[name])})")
            typed.append(checked)
        narrowed[name] = knobs.Categorical(tuple(dict.fromkeys(typed)))
    return narrowed


def _typed(values: Mapping[str, Any], what: str) -> dict[str, Any]:
    """`values` checked against the profile schema and typed as a profile types them (YAML's "4" is 4)."""
    from autotune.profile import Settings
    from autotune.profile.yaml_form import describe_errors

    try:
        typed = Settings.model_validate(dict(values))
    except ValidationError as error:
        raise InvalidInput(f"{what}: {describe_errors(error)}") from None
    return {name: getattr(typed, name) for name in values}


def _shown(domain: knobs.Domain) -> str:
    if isinstance(domain, knobs.Categorical):
        return ", ".join(map(str, domain.values))
    return f"{domain.low} to {domain.high}"


def validate_pinned(pinned: Mapping[str, Any]) -> dict[str, Any]:
    """Check pinned knob values against the profile schema and the rules between knobs; return them typed."""
    values = _typed(pinned, "pinned settings")
    broken = knobs.violations(values)
    if broken:
        raise InvalidInput(f"pinned settings break a rule: {'; '.join(broken)}")
    return values


def compile_step(device: str) -> dict[str, Any]:
    """The guides' compile step: channels-last, then torch.compile in their mode for the device."""
    return {"channels_last": True, "compile": "max-autotune-no-cudagraphs" if device == "cuda" else "default"}


def compiled_recommendation(recommended: Mapping[str, Any], space: Mapping[str, knobs.Domain],
                            device: str) -> dict[str, Any] | None:
    """The recommendation with the guides' compile step, where compile is searched. On CUDA in torch.compile's
    default mode on the repeated blocks where the model has them: the guides' whole-UNet max-autotune benchmarks
    every GEMM and convolution template for each batch size, minutes that a short search's second trial cannot spend
    (the guides' recipe itself stays among the later seeds)."""
    if "compile" not in space:
        return None
    step = compile_step(device)
    if device == "cuda":
        step["compile"] = "default"
        if "compile_scope" in space and "regional" in space["compile_scope"]:
            step["compile_scope"] = "regional"
    return {**recommended, **step}


def documentation_recipes(device: str) -> dict[str, dict[str, Any]]:
    """The diffusers optimization guides' usual recipes, by name (restricted to the space before they run)."""
    return {
        "as loaded": {},
        "fp16 + SDPA": {"precision": "fp16", "attention": "sdpa"},
        "fp16 + SDPA + channels-last + compile": {"precision": "fp16", "attention": "sdpa", **compile_step(device)},
        "fp16 + attention slicing": {"precision": "fp16", "attention": "sliced", "attention_slice_size": "auto"},
        "fp16 + model offload": {"precision": "fp16", "offload": "model"},
        "fp16 + sequential offload": {"precision": "fp16", "offload": "sequential"},
    }


def recipes(space: Mapping[str, knobs.Domain], device: str, defaults: Mapping[str, Any] | None = None) -> list[dict]:
    """The documentation recipes as trial params, restricted to the knobs and values searched here."""
    restricted = (restrict(recipe, space, defaults) for recipe in documentation_recipes(device).values())
    return [params for params in restricted if params is not None]


def restrict(recipe: Mapping[str, Any], space: Mapping[str, knobs.Domain],
             defaults: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The recipe as full trial params over `space`, or None when one of its values is not searched here.

    A knob the recipe leaves out takes its value from `defaults` (the workload's steps), else the knob's default,
    else the first value of its domain. Knobs of the recipe that are not searched are left out.
    """
    params: dict[str, Any] = {}
    for name, domain in space.items():
        knob = knobs.get(name)
        if not knob.active({**knobs.defaults(), **params}):
            continue
        value = recipe.get(name, (defaults or {}).get(name, knob.default))
        if value not in domain:
            if name in recipe:
                return None
            value = domain.first()
        params[name] = value
    return params


def warm_start(study: optuna.Study, space: Mapping[str, knobs.Domain], device: str, previous: Profile | None,
               fixed: Mapping[str, Any], with_recipes: bool = True, reference: Mapping[str, Any] | None = None,
               defaults: Mapping[str, Any] | None = None, recommended: Mapping[str, Any] | None = None) -> None:
    """Enqueue, in this order: under a quality floor the reference's own scheduler and steps (so the search always
    has a configuration that meets the floor), the recommended configuration (`recommend`), the same with the guides'
    compile step where compile is searched, the previous profile's settings, then the documentation recipes.

    The compiled recommendation keeps the recommendation's precision: the guides' own compile recipe is fp16, written
    for GPUs, and on a CPU fp16 ran 5x slower than fp32. It comes second so that a short search (`--timeout`) times
    a compiled configuration: on two CPU cores a 30-trial search chose compile, and the 200-second quickstart, which
    ran the guides' fp16 compile recipe instead, ended at 0.89x its choice.

    A seed that breaks a rule between knobs (with the fixed values) is left out: it would never run; one with the
    same params as an earlier seed is enqueued once, under the earlier one's label (the recommendation is often the
    configuration as loaded).
    """
    compiled = compiled_recommendation(recommended, space, device) if recommended is not None else None
    firsts = ((reference, REFERENCE_RECIPE), (recommended, RECOMMENDED_RECIPE), (compiled, None),
              (previous.settings_dict() if previous is not None else None, None))
    seeds = []
    for first, label in firsts:
        if first is not None:
            restricted = restrict({k: v for k, v in first.items() if k in space}, space, defaults)
            if restricted is not None:
                seeds.append((restricted, label))
    seeds += [(params, None) for params in recipes(space, device, defaults)] if with_recipes else []
    for params, label in seeds:
        if not knobs.violations({**fixed, **params}):
            # The label lets the trial loop give the reference its time, and the end of a search say it failed.
            study.enqueue_trial(params, user_attrs={"recipe": label} if label else None, skip_if_exists=True)


def fewer_steps(trials: Sequence[Any], space: Mapping[str, knobs.Domain]) -> dict[str, Any] | None:
    """Under a quality floor, the next trial of a bisection on steps from the reference configuration, or None when
    it is over (or steps are not searched, or no reference trial has met the floor).

    Fewer steps is the largest speed-up a floor allows, and quality falls as steps fall: the fewest steps that meet
    the floor take a handful of trials to find this way, where a sampler drawing from the whole space may need many
    (`bench/efficiency.py --floor`). Every other knob keeps the reference's value, so these trials tell the sampler
    what steps alone cost. `trials` are the study's complete ones; any trial with the reference's params but its
    steps counts, whoever queued it. The next step count is the median of those left between the most steps that
    missed the floor below the fewest that met it, and those.
    """
    domain = space.get("steps")
    records = [TrialRecord.of(trial) for trial in trials]
    reference = next((record for record in records if record.recipe == REFERENCE_RECIPE), None)
    if domain is None or reference is None or "steps" not in reference.params:
        return None

    def without_steps(params: Mapping[str, Any]) -> dict[str, Any]:
        return {name: value for name, value in params.items() if name != "steps"}

    others = without_steps(reference.params)
    met, missed = [], []
    for trial in records:
        if "steps" in trial.params and without_steps(trial.params) == others:
            (met if feasible(trial) else missed).append(trial.params["steps"])
    if not met:
        return None
    fewest = min(met)
    below = max((steps for steps in missed if steps < fewest), default=None)
    step_counts = domain.values if isinstance(domain, knobs.Categorical) else range(domain.low, domain.high + 1)
    left = sorted(steps for steps in step_counts if steps < fewest and (below is None or steps > below))
    return {**others, "steps": left[len(left) // 2]} if left else None
