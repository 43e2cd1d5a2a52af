"""The run's outputs: `gpu_check.json` (every check, its status, reason, figures and seconds) and `gpu_check.md`
(the same as markdown tables). A figure that is a list of rows becomes its own table."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .core import Result


def cell(value: Any) -> str:
    """One table cell: None is `-` (a missing number is not a zero), floats keep 4 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(item) for item in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{key}={cell(item)}" for key, item in value.items())
    return str(value).replace("|", "\\|").replace("\n", " ")


def md_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A markdown table of `rows`; the columns are every key met, in order, unless given.

    >>> print(md_table([{"a": 1, "b": None}]))
    | a | b |
    |---|---|
    | 1 | - |
    """
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def _is_rows(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, Mapping) for item in value)


def render_markdown(results: Iterable[Result], header: Mapping[str, Any],
                    boxes: Sequence[Mapping[str, Any]] = ()) -> str:
    results = list(results)
    parts = ["# GPU acceptance run", "", md_table([header], list(header)), ""]
    if boxes:
        parts += ["## Time boxes", "", md_table(boxes, ["part", "box_s"]), ""]
    parts += ["## Checks", "",
             md_table([{"check": r.title, "status": r.status, "seconds": r.seconds, "time box (s)": r.allotted_s,
                        "reason": r.reason} for r in results]), ""]
    for result in results:
        if not result.figures:
            continue
        parts += [f"## {result.title}", "", f"**{result.status}**" + (f": {cell(result.reason)}" if result.reason
                                                                       else ""), ""]
        scalars = [{"figure": key, "value": value} for key, value in result.figures.items() if not _is_rows(value)]
        if scalars:
            parts += [md_table(scalars), ""]
        for key, value in result.figures.items():
            if _is_rows(value):
                parts += [f"### {key}", "", md_table(value), ""]
    return "\n".join(parts)


def write_outputs(out: Path, results: list[Result], header: Mapping[str, Any],
                  boxes: Sequence[Mapping[str, Any]] = (), evidence: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write gpu_check.json (with the time boxes and the evidence archive's file list) and gpu_check.md."""
    out.mkdir(parents=True, exist_ok=True)
    as_json, as_md = out / "gpu_check.json", out / "gpu_check.md"
    document = {**header, "time_boxes": list(boxes), "checks": [asdict(r) for r in results],
                "evidence_files": list(evidence)}
    as_json.write_text(json.dumps(document, indent=2, default=str) + "\n")
    as_md.write_text(render_markdown(results, header, boxes) + "\n")
    return as_json, as_md
