"""Sizes: bytes inside, human units only at the edges. The one place that parses and prints them."""

from __future__ import annotations

import re

from .exceptions import InvalidInput

_UNITS = {
    "": 1,
    "B": 1,
    "K": 1000, "KB": 1000, "KIB": 1024,
    "M": 1000**2, "MB": 1000**2, "MIB": 1024**2,
    "G": 1000**3, "GB": 1000**3, "GIB": 1024**3,
    "T": 1000**4, "TB": 1000**4, "TIB": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*$")


def parse_size(text: str | int, total_bytes: int | None = None) -> int:
    """Parse `6GB`, `6GiB`, `6000MB`, `6.5G`, `6000000000B`, or a share of `total_bytes` (`80%`); an int is bytes.

    A bare number in text is refused: `6` read as bytes and `0.5` as a share were both surprises.

    >>> parse_size("6GB"), parse_size("1GiB"), parse_size("50%", total_bytes=1000), parse_size(1000)
    (6000000000, 1073741824, 500, 1000)
    """
    if isinstance(text, int) and not isinstance(text, bool):
        text = f"{text}B"
    text = str(text).strip()
    not_understood = f"size {text!r} is not understood; write it like 6GB, 6GiB, 6000MB, 6.5G or 80%"
    if _is_number(text):
        raise InvalidInput(f"size {text!r} has no unit; add one (6GB, 6GiB, 6000MB) or write a share as 80%")
    if text.endswith("%"):
        try:
            share = float(text[:-1]) / 100
        except ValueError:
            raise InvalidInput(not_understood) from None
        if total_bytes is None:
            raise InvalidInput(f"size {text!r} is a share of the device's memory, but that memory is unknown")
        if not 0 < share <= 1:
            raise InvalidInput(f"size {text!r} must be a share between 0% and 100% of the device's memory")
        return int(total_bytes * share)
    match = _SIZE.match(text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS:
        raise InvalidInput(not_understood)
    value = float(match.group(1)) * _UNITS[unit]
    if value <= 0:
        raise InvalidInput(f"size {text!r} must be more than zero")
    return int(value)


def check_size(text: str) -> None:
    """Refuse a size that `parse_size` could never read, without knowing the device's memory (a share is checked
    for its range only): the CLI calls it before it probes the machine.

    >>> check_size("6XB")  # doctest: +SKIP
    InvalidInput: size '6XB' is not understood; write it like 6GB, 6GiB, 6000MB, 6.5G or 80%
    """
    parse_size(text, total_bytes=1)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def format_size(num_bytes: int | float | None) -> str:
    """`6442450944` -> `6.0 GiB`: binary units, as GPU memory is sold and reported."""
    if num_bytes is None:
        return "-"
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
