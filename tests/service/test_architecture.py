"""The module layout holds: no import cycle among Parley's modules (function-level imports
included), one Celery app per web process (the producer built from Settings, none from
os.environ at import), and task names that follow their module paths and routes."""

from __future__ import annotations

import ast
import fnmatch
import importlib
import os
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "domain", "models", "web", "tasks", "moderation", "storage", "push")
TOP_MODULES = ("celery_config.py", "worker.py")


def project_files(root: Path = ROOT) -> dict[str, Path]:
    """Every project module by dotted name (`pkg/__init__.py` is `pkg`)."""
    files: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    for name in TOP_MODULES:
        if (root / name).exists():
            files[name.removesuffix(".py")] = root / name
    return files


def _is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`: imports for the type checker only."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports anywhere in the tree (functions and methods too), minus `if TYPE_CHECKING:`
    bodies (their `else:` branch runs, so it counts)."""
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for child in node.orelse:
            yield from _import_nodes(child)
        return
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    for child in ast.iter_child_nodes(node):
        yield from _import_nodes(child)


def _with_packages(module: str) -> list[str]:
    """`a.b.c` imports `a`, then `a.b`, then `a.b.c`: each package's __init__ runs first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def imports_of(name: str, path: Path, modules: Iterable[str]) -> set[str]:
    """The project modules that importing `name` (at `path`) runs, directly.

    A package a module lives in is no dependency of it when only passed through on the way to
    a sibling (`from models.base import Base` inside models/): its __init__ has started before
    the module runs. Reading a name from it (`from models import Base`) is one."""
    known = set(modules)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    own = set(_with_packages(package)) if package else set()
    found: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        explicit: list[str] = []  # the modules whose namespace the statement reads
        if isinstance(node, ast.Import):
            explicit = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from pkg import name` imports the submodule pkg.name when there is one.
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            explicit = [*subs, *([base] if len(subs) < len(node.names) else [])]
        for target in explicit:
            passed = [m for m in _with_packages(target)[:-1] if m not in own]
            found.update(m for m in [*passed, target] if m in known)
    found.discard(name)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = project_files(root)
    return {name: imports_of(name, path, files) for name, path in files.items()}


def tangles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan): the modules of
    one tangle all import each other, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph) + 100))
    try:
        for v in sorted(graph):
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """For each import inside a tangle, the shortest cycle it closes (a → … → a), each cycle
    once: enough to see every import that would have to go."""
    found: set[tuple[str, ...]] = set()
    for component in tangles(graph):
        for v in component:
            for w in graph[v] & component:
                path = _shortest_path(graph, component, w, v)
                i = path.index(min(path))
                found.add(tuple(path[i:] + path[:i]))
    return sorted([*c, c[0]] for c in found)


def _shortest_path(graph: dict[str, set[str]], within: set[str], a: str, b: str) -> list[str]:
    """The modules from `a` to `b` (both included) by the fewest imports, inside `within`."""
    paths: dict[str, list[str]] = {a: [a]}
    frontier = [a]
    while b not in paths:
        following: list[str] = []
        for v in frontier:
            for w in sorted(graph[v] & within):
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    following.append(w)
        assert following, f"no path from {a} to {b}"  # in one component there always is
        frontier = following
    return paths[b]


def _explain(found: list[list[str]]) -> str:
    return "import cycles:\n" + "\n".join(" → ".join(c) for c in found)


def test_no_import_cycle_among_project_modules() -> None:
    """Function-level imports count (they run on first call, and then the cycle bites),
    `if TYPE_CHECKING:` imports do not (they never run)."""
    graph = import_graph()
    assert "celery_config" in graph and "worker" in graph and "web" in graph
    found = cycles(graph)
    assert not found, _explain(found)


def test_the_cycle_check_sees_function_level_package_and_submodule_imports(
    tmp_path: Path,
) -> None:
    """The checker itself: a cycle closed by a function-level import through a package's
    __init__, and through `from pkg import submodule`, is found; one through a
    TYPE_CHECKING import is not."""
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "__init__.py").write_text("from core import services\n")
    (tmp_path / "core" / "services.py").write_text("def f():\n    import web.views\n")
    (tmp_path / "web").mkdir()
    (tmp_path / "web" / "__init__.py").write_text("")
    (tmp_path / "web" / "views.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import tasks\n"
        "from core.config import x\n"
    )
    (tmp_path / "core" / "config.py").write_text("")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "__init__.py").write_text("import web\n")
    graph = import_graph(tmp_path)
    assert graph["web.views"] == {"core", "core.config"}
    assert graph["core"] == {"core.services"}
    assert graph["tasks"] == {"web"}
    assert cycles(graph) == [["core", "core.services", "web.views", "core"]]


def test_a_web_process_builds_one_celery_app_its_producer_from_settings(tmp_path: Path) -> None:
    """Building the web app (as gunicorn does through web.wsgi) creates exactly one Celery app:
    the producer, connected to the broker Settings name even when CELERY_BROKER_URL says
    otherwise. No second app from os.environ at import, and no task or worker module loaded."""
    script = (
        "import gc\n"
        "from celery import Celery\n"
        "from web import create_app\n"
        "app = create_app({'broker_url': 'redis://127.0.0.1:1/7', 'testing': True})\n"
        # type(), not isinstance(): Celery's current_app proxies would build an app to answer
        "made = [o for o in gc.get_objects() if issubclass(type(o), Celery)]\n"
        "assert made == [app.extensions['parley'].tasks], made\n"
        "import sys\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('tasks', 'worker')]\n"
        "with made[0].connection_for_write() as w, made[0].connection_for_read() as r:\n"
        "    print(*(f'{c.hostname}:{c.port}/{c.virtual_host}' for c in (w, r)))\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "CELERY_"))},
        "CELERY_BROKER_URL": "redis://127.0.0.1:1/9",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "PARLEY_DATA_DIR": str(tmp_path),
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["127.0.0.1:1/7", "127.0.0.1:1/7"]


def test_every_task_is_named_after_its_module_and_routed_to_its_stage_queue(
    tmp_path: Path,
) -> None:
    """Explicit names that follow the module path (a rename never orphans queued work); each
    task routed by celery_config's task_routes, not left to the default queue; every task
    module listed for the worker to import; beat sends only tasks that exist."""
    from celery_config import QUEUES, ROUTES, TASK_MODULES
    from core.celery_app import make_celery
    from core.config import load_settings

    settings = load_settings(
        {"redis_url": "redis://127.0.0.1:1/0", "data_dir": tmp_path}, env_file=None
    )
    app = make_celery(settings)
    for module in TASK_MODULES:
        importlib.import_module(module)
    ours = {name: task for name, task in app.tasks.items() if not name.startswith("celery.")}
    assert ours, "no task registered"
    for name, task in ours.items():
        assert name == f"{type(task).__module__}.{type(task).__name__}", name
        assert any(fnmatch.fnmatchcase(name, pattern) for pattern in ROUTES), name
        assert app.amqp.router.route({}, name)["queue"].name in QUEUES, name
    defining = {type(task).__module__ for task in ours.values()}
    on_disk = {
        f"tasks.{path.stem}"
        for path in (ROOT / "tasks").glob("*.py")
        if "@shared_task" in path.read_text()
    }
    assert defining == set(TASK_MODULES) == on_disk
    for entry in app.conf.beat_schedule.values():
        assert entry["task"] in ours, entry


def test_every_blueprint_is_registered_by_create_app() -> None:
    """One place to see the whole HTTP surface: no module registers itself on the app (a
    blueprint may nest its own parts, as web/attachments.py does)."""
    elsewhere = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in (ROOT / "web").rglob("*.py")
        if path != ROOT / "web" / "__init__.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "app.register_blueprint(" in line
    ]
    assert not elsewhere, elsewhere


def test_no_module_over_400_lines_outside_migrations() -> None:
    """Big modules were split along their seams; a module that grows past this splits too."""
    folders = ("core", "domain", "models", "moderation", "push", "storage", "tasks", "web")
    big = {
        str(path.relative_to(ROOT)): n
        for folder in folders
        for path in (ROOT / folder).rglob("*.py")
        if "migrations" not in path.parts and (n := len(path.read_text().splitlines())) > 400
    }
    assert not big, big


def test_domain_never_reaches_into_flask_or_celery() -> None:
    """The rules take what they need as arguments (the Services object, its producer), so they
    run the same from a view, a task, the CLI or a test, with no app context."""

    def runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
        for node in ast.iter_child_nodes(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue  # annotations only: never imported at run time
            yield node
            yield from runtime_nodes(node)

    found = []
    for path in (ROOT / "domain").rglob("*.py"):
        for node in runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
                if node.module == "core.services":
                    names += [f"core.services.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in ("flask", "celery", "web", "tasks") or name == "core.services.services":
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    assert not found, found
