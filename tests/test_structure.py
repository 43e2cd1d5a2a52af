"""The package's shape, as the contributors' guide promises it: a few folders by part, small modules and functions,
one direction of imports between the parts, no private name reached into from another module, and nothing the linter
finds."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "autotune"
MAX_LINES = 400
MAX_FUNCTION_LINES = 60  # a function's body, its signature and docstring aside
MAX_TOP_LEVEL_ENTRIES = 21
# Folders a part may never import, by the folder (or "" for the package's top level) the importing module sits in.
# The deployment path (the top level, knobs/, pipelines/, profile/, measure/) is what an app loads to apply a
# profile: it never loads the search, the trial worker or the re-measurement.
PARTS = ("cli", "compare", "knobs", "measure", "pipelines", "profile", "report", "tuner", "worker")
NEVER = {
    "": {"cli", "compare", "report", "tuner", "worker"},
    "knobs": {"cli", "compare", "report", "tuner", "worker"},
    "pipelines": {"cli", "compare", "report", "tuner", "worker"},
    "profile": {"cli", "compare", "report", "tuner", "worker"},
    "measure": {"cli", "compare", "report", "tuner", "worker"},
    "worker": {"cli", "compare", "report", "tuner"},
    "compare": {"cli", "report", "tuner"},
    "tuner": {"cli", "report"},
    "report": {"cli"},
}
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


def part_of(module: str) -> str:
    """The folder `module` (dotted) belongs to: "" for the package's top-level modules."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in PARTS) else ""


def public_names(part: str) -> set[str] | None:
    """What a folder's `__init__` offers outside it (its `__all__`: modules or names), or None where it names none."""
    tree = ast.parse((PACKAGE / part / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    return None


def test_the_package_has_a_few_folders_not_a_crowd():
    entries = [p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"]
    assert len(entries) <= MAX_TOP_LEVEL_ENTRIES, sorted(entries)
    assert all((PACKAGE / part / "__init__.py").exists() for part in PARTS)


def test_every_folder_of_the_package_is_installed():
    """pyproject lists the packages explicitly (the shipped profiles live outside the package): a new folder must be
    listed there, or `pip install` leaves it out."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11's")
    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {module_name(init) for init in PACKAGE.rglob("__init__.py")}
    assert folders <= listed, sorted(folders - listed)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_a_part_imports_only_the_parts_below_it(path):
    if path == PACKAGE / "__init__.py":
        pytest.skip("the package's front door loads each public name from its part on first use")
    here = part_of(module_name(path))
    reached = {part_of(target) for target, _ in imports(path)} - {here}
    assert not reached & NEVER.get(here, set()), f"{module_name(path)} imports {sorted(reached & NEVER[here])}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_outside_a_folder_only_what_its_init_offers_is_imported(path):
    here = part_of(module_name(path))
    for target, names in imports(path):
        part = part_of(target)
        offered = public_names(part) if part and part != here else None
        if offered is None:
            continue
        rest = target.split(".")[2:]
        wanted = [rest[0]] if rest else names
        assert set(wanted) <= offered, f"{module_name(path)} imports {target} {names}: {part}/ offers {offered}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_function_is_over_the_line_limit(path):
    long = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body[1:] if ast.get_docstring(node) and len(node.body) > 1 else node.body
            if node.end_lineno - body[0].lineno + 1 > MAX_FUNCTION_LINES:
                long.append(node.name)
    assert not long, f"{module_name(path)}: {long} over {MAX_FUNCTION_LINES} lines"


# The two storage boundaries: a trial's results and a study's spec are read (and rebuilt) in one module each.
RECORD_READERS = {PACKAGE / "compare" / "records.py", PACKAGE / "tuner" / "spec.py"}
BENCH = sorted((PACKAGE.parent / "bench").rglob("*.py"))


@pytest.mark.parametrize("path", MODULES + BENCH, ids=lambda p: str(p.relative_to(PACKAGE.parent)))
def test_only_the_records_read_what_a_study_stores(path):
    if path in RECORD_READERS:
        return
    text = path.read_text()
    assert not re.search(r"user_attrs\s*(\[|\.get\b)", text), "read a trial with TrialRecord.of, a study with StudySpec"
    assert "Workload(**" not in text, "a study's workload comes typed from StudySpec.read"


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
