"""The command line's checks of its flags: light (no torch, no Optuna), so that a bad flag is refused at once."""

from __future__ import annotations

from pathlib import Path

from autotune.exceptions import InvalidInput


def parse_pins(pins: list[str]) -> dict[str, object]:
    import yaml

    from autotune import knobs

    parsed: dict[str, object] = {}
    for pin in pins:
        name, sep, value = pin.partition("=")
        if not sep or not name:
            raise InvalidInput(f"--pin takes KNOB=VALUE, got {pin!r}")
        if name not in knobs.KNOBS:
            raise InvalidInput(f"--pin: unknown knob {name!r}; known: {', '.join(k.name for k in knobs.in_order())}")
        parsed[name] = yaml.safe_load(value)  # YAML scalars, as in a profile: true, 4, null, fp16
    return parsed


def check_at_least_one(*flags: tuple[str, int | None]) -> None:
    for flag, value in flags:
        if value is not None and value < 1:
            raise InvalidInput(f"--{flag} must be at least 1, got {value}")


def check_positive(*flags: tuple[str, float | None]) -> None:
    for flag, value in flags:
        if value is not None and not value > 0:
            raise InvalidInput(f"--{flag} must be more than 0 seconds, got {value:g}")


def check_choice(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidInput(f"--{flag} must be one of {', '.join(allowed)}, got {value!r}")


def read_prompts(prompts: list[str], path: str | None) -> list[str] | None:
    """The workload's prompts from `--prompt` (repeatable) or `--prompts FILE` (one per line, blank lines skipped);
    None when neither was given. Both at once is refused: which list the search tunes for would be a guess."""
    if path is not None and prompts:
        raise InvalidInput("give --prompt or --prompts FILE, not both")
    if path is None:
        if any(not prompt.strip() for prompt in prompts):
            raise InvalidInput("--prompt is blank; give the text of a prompt")
        return prompts or None
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"--prompts {path}: not UTF-8 text") from None
    except OSError as error:
        raise InvalidInput(f"--prompts {path}: cannot read the file ({error.strerror or error})") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise InvalidInput(f"--prompts {path}: the file has no prompts (one per line)")
    return lines
