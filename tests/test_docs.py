"""The README, CONTRIBUTING and docs/ stay true: links resolve, every page is reachable from the README, Python
blocks compile and their imports import, and every `autotune` command in a block parses with the CLI's own parser."""

from __future__ import annotations

import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest
import typer

from autotune.cli import app

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def links(page: Path) -> list[str]:
    text = BLOCK.sub("", page.read_text())  # a link inside a code block is code, not a link
    return [target for target in LINK.findall(text) if not re.match(r"[a-z]+:", target)]


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", BLOCK.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def blocks(language: str) -> list[tuple[Path, str]]:
    return [(page, body) for page in PAGES for lang, body in BLOCK.findall(page.read_text()) if lang == language]


def command_lines() -> list[tuple[Path, list[str]]]:
    """Each `autotune ...` command of the shell blocks, as argument lists (comments and `a && b` chains split)."""
    found = []
    for page, body in blocks(""):  # (the reference's `console` blocks are usage synopses: `[OPTIONS]`)
        for line in body.replace("\\\n", " ").splitlines():
            for part in re.split(r"\s&&\s", re.sub(r"(^|\s+)#(\s.*)?$", "", line.strip().removeprefix("$ "))):
                words = shlex.split(part)
                words = words[next((i for i, w in enumerate(words) if "=" not in w), len(words)):]  # VAR=x cmd
                if words[:1] == ["autotune"]:
                    found.append((page, words[1:]))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_link_resolves(page):
    for target in links(page):
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: the link {target!r} leads nowhere"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{page.name}: {resolved.name} has no heading #{anchor}"


def test_every_page_of_the_docs_is_reachable_from_the_readme():
    seen, todo = set(), [ROOT / "README.md"]
    while todo:
        page = todo.pop()
        if page in seen or page.suffix != ".md" or not page.exists():
            continue
        seen.add(page)
        todo += [(page.parent / target.partition("#")[0]).resolve() for target in links(page)
                 if target.partition("#")[0]]
    assert {page.name for page in PAGES} - {page.name for page in seen} == set()


def test_the_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 220


def test_python_blocks_compile_and_their_imports_import():
    assert blocks("python")
    for page, body in blocks("python"):
        tree = ast.parse(body, filename=page.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), (
                        f"{page.name}: {node.module} has no {alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)


def _parse(words: list[str]) -> None:
    """Parse `autotune WORDS` as the CLI would, down to the (sub)command, without running it."""
    command = typer.main.get_command(app)  # typer's own copy of click: its classes are not click's
    context = command.make_context("autotune", list(words))
    while hasattr(command, "resolve_command"):  # a group: parse down to the subcommand
        rest = [*context._protected_args, *context.args]
        name, command, rest = command.resolve_command(context, rest)
        context = command.make_context(name, rest, parent=context)


def test_every_autotune_command_in_the_docs_parses():
    commands = command_lines()
    assert len(commands) > 15
    for page, words in commands:
        try:
            _parse(words)
        except Exception as error:
            if not hasattr(error, "format_message"):  # not a usage error: a bug in the test or the CLI
                raise
            raise AssertionError(f"{page.name}: `autotune {shlex.join(words)}`: {error.format_message()}") from None


def test_the_cli_reference_has_every_command_and_option():
    reference = (ROOT / "docs" / "cli-reference.md").read_text()

    def walk(command, path: str) -> None:
        assert f"`{path}`" in reference, f"docs/cli-reference.md lacks {path}: run python docs/make_cli_reference.py"
        for parameter in command.params:
            for option in parameter.opts if parameter.param_type_name == "option" else []:
                assert option in reference, f"docs/cli-reference.md lacks {path} {option}"
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "autotune")
