"""The `autotune` command line: thin typer commands over the Python API.

How a command ends (one line and an exit status for an error the user can cause, the traceback of a bug) is
`cli.exit_codes`'s; `-v` adds the traceback to every error, `-q` keeps only results and errors. Flags are checked before
torch, diffusers or Optuna is imported: the modules imported here are light, the heavy ones inside each command.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import Annotated

# transformers announces optional image backends at import; that is noise on a command line.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from autotune.quiet import quiet_library_noise  # noqa: E402

quiet_library_noise()  # torchao's import messages, before anything imports diffusers

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.markup import escape  # noqa: E402
from rich.table import Table  # noqa: E402

from autotune.exceptions import InvalidInput, InvalidOption  # noqa: E402
from autotune.files import check_report_source, check_writable  # noqa: E402
from autotune.options import (  # noqa: E402
    DEFAULT_MODEL,
    SAMPLERS,
    STORAGE_ENV,
    SearchOptions,
)
from autotune.units import format_size  # noqa: E402
from autotune.worker.server import start_early as start_worker_server  # noqa: E402
from autotune.workload import parse_call, parse_size  # noqa: E402

from .exit_codes import run, show_tracebacks, versions  # noqa: E402
from .flags import check_setting_forms, parse_only, parse_pins, read_prompts  # noqa: E402
from .outcome import (  # noqa: E402
    SearchProgress,
    outcome_document,
    print_event,
    print_outcome,
    quiet,
    set_verbosity,
)
from .profiles import JsonOption, precompile, print_json, profiles_app  # noqa: E402
from .recommend import recommend  # noqa: E402
from .verify import verify  # noqa: E402

app = typer.Typer(help="Find the fastest diffusers configuration for this machine, and apply it.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(profiles_app, name="profiles")
app.command()(recommend)
app.command()(verify)
app.command()(precompile)
console = Console()
stderr = Console(stderr=True)  # progress, when stdout holds the JSON alone

SEARCH_DEFAULTS = SearchOptions()  # each flag of `autotune search` defaults to its option's default
StorageOption = Annotated[str | None, typer.Option(
    envvar=STORAGE_ENV, help="the study's Optuna storage: postgresql://user:password@host/db, mysql+pymysql://..., "
                             "sqlite:///file.db, or a journal file's path")]
StudyOption = Annotated[str | None, typer.Option(help="the study's name")]
OutOption = Annotated[str, typer.Option("--out", "-o", help="profile to write ({study}: study name)")]
WorkersOption = Annotated[int, typer.Option(help="worker processes on this host: one per visible GPU, or CPU workers "
                                                 "(search --workers 1 runs the trials in its own process)")]
TopKOption = Annotated[int, typer.Option(help="how many of the study's best configurations to re-measure at the end")]
RoundsOption = Annotated[int, typer.Option(help="rounds of the interleaved re-measurement")]
AblationOption = Annotated[bool | None, typer.Option(
    "--ablation/--no-ablation", help="re-measure the chosen configuration without each knob it changes, to say what "
                                     "each is worth (default: on, unless AUTOTUNE_ABLATION=0)")]


@app.command()
def probe(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
    model: Annotated[str | None, typer.Option("--model", "-m", help="also check knobs against this pipeline")] = None,
) -> None:
    """Print this machine's fingerprint and every knob value: available here or not, and why not."""
    from autotune import knobs, pipelines
    from autotune.hardware import probe as probe_machine

    fingerprint = probe_machine()
    pipe = pipelines.load_empty(model) if model else None  # classes and shapes are enough: no weight is loaded
    rows = knobs.availability(fingerprint.hardware, pipe)
    if as_json:
        print(json.dumps({**fingerprint.model_dump(mode="json"), "knobs": rows}, indent=2))
        return
    machine = Table(title="Machine", show_header=False)
    for section in (fingerprint.hardware, fingerprint.software):
        for key, value in section.model_dump().items():
            shown = format_size(value) if key.endswith("bytes") else value
            machine.add_row(key, "-" if shown is None else str(shown))
    console.print(machine)
    table = Table(title="Knobs" + (f" on {model}" if model else ""))
    for column in ("knob", "value", "available", "why not / note"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["knob"], knobs.show(row["value"]), "yes" if row["available"] else "[red]no[/red]",
                      escape(row["reason"] or row["note"] or ""))  # a reason's `[xformers]` is not markup
    console.print(table)


@app.command()
def search(
    model: Annotated[str, typer.Option("--model", "-m", help="hub id, local folder, single-file checkpoint "
                                       "(.safetensors), or builtin:tiny-sd")] = "",
    revision: Annotated[str | None, typer.Option(help="the hub model's branch, tag or commit (the profile records "
                                                      "the commit)")] = None,
    variant: Annotated[str | None, typer.Option(help="the weights variant to load (fp16)")] = None,
    local_files_only: Annotated[bool, typer.Option("--local-files-only", help="load from the hub's cache only "
                                                   "(HF_HUB_OFFLINE=1 does the same)")] = False,
    config: Annotated[str | None, typer.Option(help="a single-file checkpoint's pipeline: a diffusers folder or hub "
                                                    "id with its configs (default: inferred from the file)")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N (default: cuda when a GPU is present)")
                      ] = None,
    budget: Annotated[str | None, typer.Option(help="memory budget: 6GB, 6GiB, 6000MB, 6.5G or 80%")] = None,
    objective: Annotated[str, typer.Option(
        help="throughput (images/s), latency (s/image, batch 1), or pareto (images/s, memory and quality: writes a "
             "profile set with the picks fastest, balanced, smallest)")] = SEARCH_DEFAULTS.objective,
    trials: Annotated[int, typer.Option(help="trials in the study (a resumed study counts its finished ones)")
                      ] = SEARCH_DEFAULTS.n_trials,
    timeout: Annotated[float | None, typer.Option(
        help="seconds the whole search may take: trials get the first three quarters (a trial still running then is "
             "stopped and queued again for a resume), the re-measurement of the best the rest, and stops there with "
             "what it has; the profile is always written")] = None,
    height: Annotated[int | None, typer.Option(help="image height (default: the pipeline's own)")] = None,
    width: Annotated[int | None, typer.Option(help="image width (default: the pipeline's own)")] = None,
    size: Annotated[list[str] | None, typer.Option(help="WIDTHxHEIGHT the app renders (repeatable: one profile, the "
                                                        "knobs tuned for every size, a batch for each)")] = None,
    steps: Annotated[int | None, typer.Option(help="inference steps (default: the pipeline's own)")] = None,
    prompt: Annotated[list[str] | None, typer.Option(help="a prompt the app renders (repeatable; default: a "
                                                          "built-in model's own four, else four general ones)")] = None,
    prompts: Annotated[str | None, typer.Option(help="a text file of prompts, one per line (blank lines skipped); "
                                                     "instead of --prompt")] = None,
    negative_prompt: Annotated[str | None, typer.Option(help="the negative prompt of every call")] = None,
    guidance: Annotated[float | None, typer.Option("--guidance-scale", "--guidance", help="guidance scale (default: "
                                                   "a built-in's own, else the pipeline's); --guidance is its short "
                                                   "name")] = None,
    call: Annotated[list[str] | None, typer.Option(
        help="KEY=VALUE: any other argument of the pipeline call, typed from its signature (num_frames=33, "
             "max_sequence_length=256, use_resolution_binning=false; repeatable)")] = None,
    out: OutOption = "{study}.yaml",
    storage: Annotated[str | None, typer.Option(envvar=STORAGE_ENV, help="Optuna storage URL (default: SQLite "
                                                                       "next to --out)")] = None,
    study: Annotated[str | None, typer.Option(help="study name (default: model, hardware, size, objective)")] = None,
    seed: Annotated[int, typer.Option(help="sampler seed, recorded in the profile; also the images' seed unless "
                                           "--image-seed is given")] = SEARCH_DEFAULTS.seed,
    image_seed: Annotated[int | None, typer.Option(help="the workload's images' seed (default: --seed): a study "
                                                        "repeated with other sampler seeds keeps its images")] = None,
    sampler: Annotated[str, typer.Option(help=", ".join(SAMPLERS))] = SEARCH_DEFAULTS.sampler,
    pruner: Annotated[str, typer.Option(help="percentile: a trial in the study's bottom quarter at a batch size "
                                             "stops growing its batch; none: every trial tries every batch")
                      ] = SEARCH_DEFAULTS.pruner,
    trial_timeout: Annotated[float, typer.Option(help="seconds before a trial is killed as hung")
                             ] = SEARCH_DEFAULTS.trial_timeout_s,
    max_batch: Annotated[int, typer.Option(help="largest batch a trial tries")] = SEARCH_DEFAULTS.max_batch,
    pin: Annotated[list[str] | None, typer.Option(help="KNOB=VALUE: keep a knob at a value (repeatable)")] = None,
    only: Annotated[list[str] | None, typer.Option(help="KNOB=VALUE,VALUE,...: search a knob among these values "
                                                        "only (repeatable)")] = None,
    quality_floor: Annotated[str | None, typer.Option(
        help="ssim=0.90, psnr=30, ssim=-5% (of the reference's own noise), or prompt=0.9 (trained built-ins: the share "
             "of prompts the judge reads as drawn): the worst prompt must score this against the reference rendering; "
             "scheduler, steps, precision and VAE tiling then join the search")] = None,
    reference_steps: Annotated[int, typer.Option(help="steps of the reference rendering")
                               ] = SEARCH_DEFAULTS.reference_steps,
    report: Annotated[bool, typer.Option("--report", help="write the HTML report next to the profile")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="say what the search would run, and an estimate of its "
                                                            "time, without loading any weight; then stop")] = False,
    workers: WorkersOption = SEARCH_DEFAULTS.workers,
    top_k: TopKOption = SEARCH_DEFAULTS.top_k,
    rounds: RoundsOption = SEARCH_DEFAULTS.rounds,
    ablation: AblationOption = None,
    as_json: JsonOption = False,
) -> None:
    """Search the fastest configuration under a memory budget and write its profile."""
    with flags_named(SEARCH_FLAGS):  # every check of SearchOptions, named as the flags are
        options = SearchOptions(
            budget=budget, objective=objective, n_trials=trials, timeout_s=timeout, height=height, width=width,
            sizes=[parse_size(text) for text in size] if size else None, steps=steps,
            prompts=read_prompts(prompt or [], prompts), negative_prompt=negative_prompt, guidance_scale=guidance,
            call=parse_call(call or []), seed=seed, image_seed=image_seed, sampler=sampler, pruner=pruner,
            storage=storage,
            study_name=study, out=out, device=device, revision=revision, variant=variant,
            local_files_only=local_files_only, config=config, trial_timeout_s=trial_timeout, max_batch=max_batch,
            top_k=top_k, rounds=rounds, workers=workers, quality_floor=quality_floor,
            reference_steps=reference_steps, ablation=ablation)
        options.check_model(model or DEFAULT_MODEL)
    if dry_run:
        from autotune.pipelines import HubOptions
        from autotune.tuner.dry_run import dry_run as describe

        height, width = options.sizes[0] if options.sizes else (height, width)
        with flags_named(SEARCH_FLAGS):
            options = replace(options, pinned=parse_pins(pin or []), only=parse_only(only or []))
        told = describe(model or DEFAULT_MODEL, budget, height, width, steps, options.pinned,
                        options.floor is not None, reference_steps, device,
                        HubOptions(revision, variant, local_files_only, config), options.only)
        console.print("\n".join(told.lines()), highlight=False)
        return
    with flags_named(SEARCH_FLAGS):
        check_setting_forms(pin or [], only or [])  # before the worker server: a process that exits waits for it
    check_writable(out.replace("{study}", "study"))  # before the model loads, not after the whole search
    start_worker_server()  # its imports run beside this process's own from here on
    with flags_named(SEARCH_FLAGS):  # the knob registry, so torch: after every light check
        options = replace(options, pinned=parse_pins(pin or []), only=parse_only(only or []))
    from autotune.tuner.run import run_search

    if not model:
        model = DEFAULT_MODEL
        if not quiet():
            (stderr if as_json else console).print(f"[dim]no --model given: using the built-in {model} (shipped "
                                                   "with autotune, no download)[/dim]")
    progress = SearchProgress(stderr if as_json else console, trials)
    with resume_line(), progress:
        outcome = run_search(model, options, on_event=progress.event)
    if as_json:
        print_json(outcome_document(outcome))
    else:
        print_outcome(console, outcome)
    if report:
        _write_search_report(outcome)


@app.command()
def worker(
    storage: StorageOption = None,
    study: StudyOption = None,
    timeout: Annotated[float | None, typer.Option(
        help="run trials for at most this many seconds (a trial still running then is stopped and queued again)",
    )] = None,
    log: Annotated[str, typer.Option(help="where the trial processes write what torch prints ({study}: study "
                                          "name)")] = "{study}.log",
    workers: WorkersOption = SEARCH_DEFAULTS.workers,
) -> None:
    """Join a study and run its trials until it has its trial count or its time limit: one per host or per GPU."""
    storage, study = _study_flags(storage, study)
    with flags_named(SEARCH_FLAGS):  # the checks `autotune search` makes of the same options
        options = SearchOptions(timeout_s=timeout, workers=workers)
    from autotune.tuner.distributed import run_worker

    with resume_line():
        completed = run_worker(storage, study, timeout_s=options.timeout_s, log_path=log.replace("{study}", study),
                               workers=options.workers, on_event=print_event)
    if workers == 1:
        console.print(f"this worker completed {completed} trials of study {study}")


@app.command()
def export(
    storage: StorageOption = None,
    study: StudyOption = None,
    out: OutOption = "{study}.yaml",
    top_k: TopKOption = SEARCH_DEFAULTS.top_k,
    rounds: RoundsOption = SEARCH_DEFAULTS.rounds,
    ablation: AblationOption = SEARCH_DEFAULTS.ablation,
    as_json: JsonOption = False,
) -> None:
    """Write the profile of a study that workers filled, re-measuring its top candidates on this host."""
    storage, study = _study_flags(storage, study)
    with flags_named(SEARCH_FLAGS):  # the checks `autotune search` makes of the same options
        options = SearchOptions(top_k=top_k, rounds=rounds, ablation=ablation)
    check_writable(out.replace("{study}", study))
    from autotune.tuner.distributed import export_profile

    outcome = export_profile(storage, study, out, top_k=options.top_k, rounds=options.rounds,
                             ablation=options.ablation,
                             on_event=lambda kind, data: print_event(kind, data, stderr if as_json else console))
    if as_json:
        print_json(outcome_document(outcome))
    else:
        print_outcome(console, outcome)


# SearchOptions' fields as `autotune search` names them, where the flag is not the field's name with dashes.
SEARCH_FLAGS = {"n_trials": "--trials", "timeout_s": "--timeout", "trial_timeout_s": "--trial-timeout",
                "study_name": "--study", "prompts": "--prompt", "pinned": "--pin", "only": "--only"}


@contextlib.contextmanager
def flags_named(flags: dict[str, str]) -> Iterator[None]:
    """An option refused by its Python name (`n_trials must be at least 1`) is refused by its flag here
    (`--trials must be at least 1`)."""
    try:
        yield
    except InvalidOption as error:
        flag = flags.get(error.option, "--" + error.option.replace("_", "-"))
        raise InvalidInput(f"{flag} {error.problem}") from None


@contextlib.contextmanager
def resume_line() -> Iterator[None]:
    """Ctrl-C in a command says how to resume, in one line, exit 130; typer would turn it into a silent 130."""
    try:
        yield
    except KeyboardInterrupt as stop:
        print(f"autotune: {str(stop) or 'interrupted'}", file=sys.stderr)
        raise typer.Exit(130) from None


def _study_flags(storage: str | None, study: str | None) -> tuple[str, str]:
    if not storage:
        raise InvalidInput(f"--storage is required (or {STORAGE_ENV}): the URL of the study's storage")
    if not study:
        raise InvalidInput("--study is required: the name of the study")
    return storage, study


def _write_search_report(outcome) -> None:
    import optuna

    from autotune.measure.quality import load_images
    from autotune.report import write_report
    from autotune.tuner.study import open_storage

    if outcome.profile_path is None:
        return
    # open_storage reads every storage a search writes to, a journal file's plain path too.
    study = optuna.load_study(study_name=outcome.study_name, storage=open_storage(outcome.storage_url))
    images = load_images(outcome.images_path) if outcome.images_path else None
    path = write_report(study, outcome.profile_path.with_suffix(".html"), outcome.profile, images)
    console.print(f"report written to [bold]{path}[/bold]")


@app.command()
def report(
    source: Annotated[str, typer.Argument(metavar="STUDY_OR_PROFILE",
                                          help="a profile YAML, a study's .db or .journal file, or a storage URL")],
    output: Annotated[str | None, typer.Option("--out", "-o", "--output", help="the HTML file to write (default: "
                                               "next to the profile or .db, as <stem>.html); --output is its older "
                                               "name")] = None,
    study: Annotated[str | None, typer.Option(help="study name (needed when the storage holds several)")] = None,
    storage: Annotated[str | None, typer.Option(help="storage URL instead of the one the profile records")] = None,
) -> None:
    """Write one self-contained HTML page about a search: trade-offs, knob importances, history, top
    configurations, and the reference images beside the chosen configurations'."""
    check_report_source(source)
    from autotune.report import report_source, write_report

    found = report_source(source, study_name=study, storage=storage)
    print(write_report(found.study, output or found.default_output, found.profile, found.images))


def _print_versions(asked: bool) -> None:
    if asked:
        console.print(versions(), highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", help="print the versions and exit", is_eager=True,
                                          callback=_print_versions)] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print results and errors only, no progress")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="also each error's traceback "
                                                                  "(as AUTOTUNE_DEBUG=1)")] = False,
) -> None:
    """Find the fastest diffusers configuration for this machine, and apply it."""
    if quiet and verbose:
        raise InvalidInput("--quiet and --verbose ask for opposite things; give one")
    set_verbosity(-1 if quiet else 1 if verbose else 0)
    if verbose:
        show_tracebacks()


def main() -> None:
    """The `autotune` console script."""
    run(typer.main.get_command(app))


if __name__ == "__main__":
    main()
