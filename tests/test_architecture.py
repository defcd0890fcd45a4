"""The shape of the package: no import cycle inside ``dahu``, no module past ~500 lines,
one exception base, and executors that know nothing of the engine or ``dahu.job``."""

from __future__ import annotations

import ast
from pathlib import Path

import dahu
from dahu.errors import DahuError

SRC = Path(dahu.__file__).resolve().parent
MAX_LINES = 520  # "about 500"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every ``dahu`` module that ``name`` imports, anywhere in its code (functions too),
    resolved to the deepest module that exists (``from .x import y`` is ``x.y`` if ``y``
    is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            targets = [f"{origin}.{alias.name}" for alias in node.names] + [origin]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    edges = {name: imports_of(name, path, known) for name, path in mods.items()}
    # a package's own imports of its modules, and a module's import of its package
    # (``from . import x``), are how Python packages are built, not dependencies
    for name in edges:
        edges[name] = {t for t in edges[name] if not name.startswith(t + ".") or t == "dahu"}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_checker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_dahu():
    edges = graph()
    assert "dahu.engine.core" in edges["dahu.job"] or "dahu.engine" in edges["dahu.job"]
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges))


def test_executors_and_journal_do_not_know_the_engine_or_jobs():
    edges = graph()
    for name, targets in edges.items():
        if name.startswith(("dahu.executors", "dahu.journal")):
            assert not {t for t in targets if t.startswith(("dahu.engine", "dahu.job"))}, name


def test_no_module_over_about_500_lines():
    long = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_one_exception_base():
    import dahu.app.localserver
    import dahu.app.reprocess
    import dahu.integration

    for module in (dahu.app.localserver, dahu.app.reprocess, dahu.integration):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Exception):
                if value.__module__ == module.__name__:
                    assert issubclass(value, DahuError), value


def test_one_list_of_device_properties():
    import re

    from dahu.app import register
    from dahu.app import server as dahu_server
    from dahu.properties import PROPERTIES
    from dahu.server import DahuDS

    names = [p.name for p in PROPERTIES]
    assert all(hasattr(DahuDS, name) for name in names)
    options = {a.dest for a in register.build_parser()._actions}
    assert set(names) <= options
    server_options = {a.dest for a in dahu_server.build_parser()._actions}
    assert {p.name for p in PROPERTIES if p.server_option} <= server_options
    docs = (SRC.parents[1] / "docs" / "server.md").read_text()
    table = docs.split("## Device properties", 1)[1].split("\n\n", 2)[1]
    assert re.findall(r"^\| `(\w+)` \|", table, re.M) == names


def test_a_run_that_runs_no_test_fails(tmp_path):
    # CI takes pytest's "no tests ran" (status 5) for something other than a failure:
    # here such a run (a -k that matches nothing) fails, and says why
    import subprocess
    import sys

    tests = Path(__file__).resolve().parent
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            str(tests / "test_utils.py"),
            "-k",
            "no_test_has_this_name",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tests.parent,
    )
    assert run.returncode == 1, run.stdout[-2000:]
    assert "no test ran: this counts as a failure" in run.stdout
