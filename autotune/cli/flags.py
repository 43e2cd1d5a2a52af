"""The command line's checks of its flags: light (no torch, no Optuna), so that a bad flag is refused at once."""

from __future__ import annotations

from pathlib import Path

from autotune.exceptions import InvalidInput


def parse_pins(pins: list[str]) -> dict[str, object]:
    """`--pin KNOB=VALUE` (repeatable), the value read as a YAML scalar, as in a profile: true, 4, null, fp16."""
    import yaml

    return {name: yaml.safe_load(value) for name, value in (knob_and_value("--pin", pin) for pin in pins)}


def parse_only(narrowed: list[str]) -> dict[str, list[object]]:
    """`--only KNOB=V1,V2` (repeatable): the values of a knob the search tries, each read as a YAML scalar."""
    import yaml

    check_setting_forms([], narrowed)
    parsed: dict[str, list[object]] = {}
    for text in narrowed:
        name, listed = knob_and_value("--only", text)
        parsed.setdefault(name, []).extend(yaml.safe_load(value.strip()) for value in listed.split(","))
    return parsed


def check_setting_forms(pins: list[str], narrowed: list[str]) -> None:
    """`--pin KNOB=VALUE` and `--only KNOB=V1,V2` checked in form only: at once, where the knobs' names need the
    registry, which imports diffusers (seconds on a small CPU)."""
    for pin in pins:
        split_setting("--pin", pin)
    for text in narrowed:
        _, listed = split_setting("--only", text)
        if not all(value.strip() for value in listed.split(",")):
            raise InvalidInput(f"--only takes KNOB=VALUE,VALUE,..., got {text!r}")


def split_setting(flag: str, text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise InvalidInput(f"{flag} takes KNOB=VALUE, got {text!r}")
    return name, value


def knob_and_value(flag: str, text: str) -> tuple[str, str]:
    name, value = split_setting(flag, text)
    from autotune import knobs

    if name not in knobs.KNOBS:
        raise InvalidInput(f"{flag}: unknown knob {name!r}; known: {', '.join(k.name for k in knobs.in_order())}")
    return name, value


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
