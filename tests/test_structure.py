"""The package's shape, as the contributors' guide promises it: small modules, one direction of imports, no
private name reached into from another module, and nothing the linter finds."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "autotune"
MAX_LINES = 400
MODULES = sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported autotune module, names taken from it) for every import in `path`, at any depth."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "autotune":
                continue
            names = [alias.name for alias in node.names]
            submodules = [f"{target}.{n}" for n in names if (PACKAGE.parent / f"{target}.{n}".replace(".", "/")).
                          with_suffix(".py").exists() or (PACKAGE.parent / f"{target}.{n}".replace(".", "/")).is_dir()]
            found.append((target, [n for n in names if f"{target}.{n}" not in submodules]))
            found += [(sub, []) for sub in submodules]
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.split(".")[0] == "autotune"]
    return found


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_module_is_over_the_line_limit(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_private_name_is_imported_across_modules(path):
    private = [(target, name) for target, names in imports(path) for name in names
               if name.startswith("_") and not name.startswith("__")]
    assert not private, f"{module_name(path)} imports private names: {private}"


def test_no_import_cycle():
    graph = {module_name(path): {target for target, _ in imports(path)} for path in MODULES}
    # A package's __init__ that re-exports its modules is the package itself, not a cycle with them.
    graph = {name: {t for t in targets if not name.startswith(t + ".") and t != name}
             for name, targets in graph.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [cycle for name in graph if (cycle := cycle_from(name))]
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_ruff_finds_nothing_in_the_checkout():
    """The linter the project uses (pyproject's [tool.ruff]), run where CI runs the tests: a lint error fails CI."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is one of the test extras: pip install -e '.[test]'"
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=PACKAGE.parent, capture_output=True, text=True)
    files = tracked.stdout.split() if tracked.returncode == 0 else ["."]  # a tree without git: all of it
    linted = subprocess.run([ruff, "check", "--no-cache", *files], cwd=PACKAGE.parent, capture_output=True,
                            text=True)
    assert linted.returncode == 0, linted.stdout[-3000:]


def test_the_public_api_passes_mypy_strict():
    """The modules apps import from (pyproject's [tool.mypy] `files`) type-check under --strict."""
    pytest.importorskip("mypy", reason="mypy is one of the test extras: pip install -e '.[test]'")
    checked = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=PACKAGE.parent,
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout[-3000:]
