"""A profile's file: its YAML read safely, with PyYAML's safe loader within bounds, every problem one `ProfileError`
naming the file and field (a profile comes from an app's folder or a download, so a file that would expand without
end or nest past the stack is refused before anything is built from it); and written in field order, stable, under a
header, with no absolute path of the machine that made it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from autotune import knobs
from autotune.exceptions import ProfileError, UnreadableProfile

# An offending value is quoted up to this length: a message stays one readable line whatever the input.
MAX_QUOTED = 80
# What one profile file may expand to. A real profile is ~100 values a few levels deep; the bounds only stop a file
# whose aliases multiply (a "billion laughs") or whose nesting would exhaust the stack before a ProfileError.
MAX_YAML_DEPTH = 64
MAX_YAML_NODES = 100_000


def read_yaml(path: Path) -> Any:
    """A profile file's YAML as data, within the loader's bounds; any problem is one ProfileError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UnreadableProfile(f"{path}: cannot read the profile ({error.strerror or error})") from None
    except UnicodeDecodeError as error:
        raise UnreadableProfile(f"{path}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset "
                                f"{error.start}); save the profile as UTF-8") from None
    return parse_yaml(text, str(path))


class _Unbounded(yaml.MarkedYAMLError):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a document nested deeper than MAX_YAML_DEPTH or whose aliases expand to more
    than MAX_YAML_NODES values, before anything is built from it."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                raise _Unbounded(problem=f"nested deeper than {MAX_YAML_DEPTH} levels",
                                 problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_document(self, node: yaml.Node) -> Any:
        _expanded_size(node, {}, set())
        return super().construct_document(node)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many values `node` stands for once every alias is expanded; an alias is the same node object, so each node
    is counted once (linear time) however often it is referred to."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise _Unbounded(problem="an alias refers to itself", problem_mark=node.start_mark)
    open_nodes.add(id(node))
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    size = 1 + sum(_expanded_size(child, sizes, open_nodes) for child in children)
    if size > MAX_YAML_NODES:
        raise _Unbounded(problem=f"expands to more than {MAX_YAML_NODES} values (aliases?)",
                         problem_mark=node.start_mark)
    open_nodes.discard(id(node))
    sizes[id(node)] = size
    return size


def parse_yaml(text: str, source: str) -> Any:
    """`text` as data, within the loader's bounds; invalid YAML is one ProfileError naming `source`."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader with bounds
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ProfileError(f"{source}: not valid YAML{where}: {getattr(error, 'problem', error)}") from None


def dump_yaml(data: dict) -> str:
    """A profile's (or set's) data as the YAML apps ship: in field order, readable, stable."""
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False, width=120)


def check_schema(data: Any, source: str, supported: int, version: str) -> None:
    """Refuse, in one line naming both, a profile written for a newer schema than this autotune reads (its fields
    would otherwise be reported as unknown, one by one)."""
    found = data.get("schema") if isinstance(data, dict) else None
    if isinstance(found, int) and not isinstance(found, bool) and found > supported:
        raise ProfileError(f"{source}: written by a newer autotune (profile schema {found}; autotune {version} reads "
                           f"schemas 1 to {supported}): upgrade it with pip install -U diffusers-autotune")


def file_text(data: dict, path: Path) -> str:
    """A profile's (or set's) file as written to `path`: a header saying how it was made and how to apply it, and its
    study's storage, when that is a local file, relative to the profile's folder (no absolute path of the machine
    that made it: profiles are checked in and shipped)."""
    profiles = data["profiles"] if "profiles" in data else [data]
    for profile in profiles:
        provenance = profile.get("provenance") or {}
        if provenance.get("storage"):
            provenance["storage"] = relative_storage(provenance["storage"], path.parent)
    first = profiles[0]
    hardware, provenance = first["hardware"], first.get("provenance") or {}
    machine = hardware.get("gpu") or f"{hardware.get('cpu')} ({hardware.get('cpu_cores')} cores)"
    budget = first["goal"].get("memory_budget_bytes")
    made = (f"# autotune profile{' set' if 'profiles' in data else ''}: {first['model']['id']} on {machine}, "
            f"{first['goal']['objective']}" + (f" within {budget / 1e9:.3g} GB" if budget else "")
            + (f", made {str(provenance['created'])[:10]} by autotune {provenance.get('autotune')}"
               f" ({provenance.get('trials')} trials)" if provenance.get("created") else "") + ".\n")
    name = path.name + ("#PICK" if "profiles" in data else "")
    apply = (f"# Apply it: pipe = apply_profile(pipe, \"{name}\")\n"
             f"#           pipe(prompt, **load_profile(\"{name}\").call_kwargs())\n"
             f"# Check it on a machine: autotune verify {name}\n")
    return made + apply + dump_yaml(data)


def relative_storage(url: str, folder: Path) -> str:
    """An SQLite URL or journal path as seen from `folder` (`sqlite:///study.db`); a server's URL unchanged.

    >>> relative_storage("sqlite:////work/out/tiny.db", Path("/work/out"))
    'sqlite:///tiny.db'
    >>> relative_storage("postgresql+psycopg://tuner:***@db/autotune", Path("/work"))
    'postgresql+psycopg://tuner:***@db/autotune'
    """
    match = re.fullmatch(r"sqlite:///(/.+)", url)
    if match:
        return f"sqlite:///{os.path.relpath(match[1], folder.resolve())}"
    if "://" not in url and os.path.isabs(url):
        return os.path.relpath(url, folder.resolve())
    return url


def with_absolute_storage(data: Any, folder: Path) -> Any:
    """A profile's (or set's) data read from `folder`, its study's storage as a path of this machine again."""
    for profile in data.get("profiles", [data]) if isinstance(data, dict) else []:
        provenance = profile.get("provenance") if isinstance(profile, dict) else None
        if isinstance(provenance, dict) and isinstance(provenance.get("storage"), str):
            provenance["storage"] = absolute_storage(provenance["storage"], folder)
    return data


def absolute_storage(url: str, folder: Path) -> str:
    """The inverse of `relative_storage`: a relative SQLite URL or journal path read from a profile in `folder`.

    >>> absolute_storage("sqlite:///tiny.db", Path("/work/out"))
    'sqlite:////work/out/tiny.db'
    """
    match = re.fullmatch(r"sqlite:///([^/].*)", url)
    if match:
        return f"sqlite:///{os.path.normpath(folder.resolve() / match[1])}"
    if "://" not in url and not os.path.isabs(url):
        return os.path.normpath(folder.resolve() / url)
    return url


def without_empty_fields(profile: dict) -> dict:
    """A dumped profile without the empty fields that most profiles have no use for: other sizes (one size, as most
    profiles are, says nothing of others), per-prompt scores (none without a quality floor), an ablation not measured,
    and its knobs' empty quality and missing notes."""
    metrics = profile.get("metrics") or {}
    for key in ("quality_by_prompt", "ablation"):
        if key in metrics and not metrics[key]:
            metrics.pop(key)
    for effect in metrics.get("ablation", []):
        for key in ("quality", "note", "speedup", "peak_memory_bytes"):
            if key in effect and not effect[key]:
                effect.pop(key)
    if not profile.get("other_sizes"):
        profile.pop("other_sizes", None)
    if not profile["workload"].get("other_sizes"):
        profile["workload"].pop("other_sizes", None)
    return profile


def describe_errors(error: ValidationError) -> str:
    """Pydantic's errors as `field.path: what is wrong (got value)`, joined on one line.

    A value that matches no member of a union (`auto`, `max` or a positive integer) gives one entry per member;
    they are merged into one `field: a or b` entry.
    """
    messages: dict[str, list[str]] = {}
    inputs: dict[str, str] = {}
    for item in error.errors():
        # Union members add their tags (`literal['auto','max']`, `constrained-int`) to the location; drop them.
        path = [str(part) for part in item["loc"] if isinstance(part, int) or str(part).isidentifier()]
        field = ".".join(path) or "(top level)"
        if item["type"] == "extra_forbidden" and path[:1] == ["settings"]:
            known = ", ".join(knob.name for knob in knobs.in_order())
            message = f"unknown knob {path[-1]!r}; known: {known}"
        elif item["type"] == "extra_forbidden":
            message = "unknown field"
        elif item["type"] == "missing":
            message = "required field is missing"
        else:
            message = item["msg"].removeprefix("Value error, ")
            inputs.setdefault(field, _quoted(item["input"]))
        messages.setdefault(field, []).append(message)
    return "; ".join(
        f"{field}: {' or '.join(texts)}" + (f" (got {inputs[field]})" if field in inputs else "")
        for field, texts in messages.items()
    )


def _quoted(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= MAX_QUOTED else f"{text[:MAX_QUOTED - 3]}..."
