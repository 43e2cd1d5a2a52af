"""A profile's YAML: read safely, with PyYAML's safe loader within bounds, every problem one `ProfileError` naming
the file (a profile comes from an app's folder or a download, so a file that would expand without end or nest past
the stack is refused before anything is built from it); and written in field order, stable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .exceptions import ProfileError, UnreadableProfile

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


def without_empty_sizes(profile: dict) -> dict:
    """A dumped profile without the empty lists of other sizes: one size, as most profiles are, says nothing of
    others."""
    if not profile.get("other_sizes"):
        profile.pop("other_sizes", None)
    if not profile["workload"].get("other_sizes"):
        profile["workload"].pop("other_sizes", None)
    return profile
