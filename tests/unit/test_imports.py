"""The shape of the package, checked from its source: no import cycle among orchestrator's
modules, no import hidden inside a function (but optional extras), the planner pure (planning
loads no SSH or HTTP library), and one error tree (every exception class orch defines derives
from OrchError)."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import orchestrator
from orchestrator.errors import OrchError

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "orchestrator"
# imports that may stay inside a function: optional extras only (module -> imported names)
OPTIONAL_IN_FUNCTIONS: dict[str, set[str]] = {}


def modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def module_level_imports(mod: str, path: Path, known: set[str]) -> set[str]:
    """orchestrator modules imported when `mod` is imported (function bodies excluded)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for st in body:
            if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if isinstance(st, ast.Import):
                found.update(a.name for a in st.names)
            elif isinstance(st, ast.ImportFrom):
                target = _resolve(mod, is_pkg, st)
                found.add(target)
                found.update(f"{target}.{a.name}" for a in st.names)
            elif isinstance(st, ast.If) and not _is_type_checking(st):
                visit(st.body)
                visit(st.orelse)
            elif isinstance(st, ast.Try):
                visit(st.body)
                for h in st.handlers:
                    visit(h.body)
                visit(st.orelse)
                visit(st.finalbody)

    visit(tree.body)
    deps = set()
    ancestors = {".".join(mod.split(".")[:i]) for i in range(1, len(mod.split(".")) + 1)}
    for name in found:
        parts = name.split(".")
        for i in range(2, len(parts) + 1):  # importing a.b.c runs a.b first
            sub = ".".join(parts[:i])
            if sub in known and sub not in ancestors:
                deps.add(sub)
    return deps


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_orchestrator() -> None:
    mods = modules()
    known = set(mods)
    graph = {m: module_level_imports(m, p, known) for m, p in mods.items()}
    assert graph["orchestrator.deploy.skeleton"] >= {"orchestrator.plan", "orchestrator.cluster"}
    assert not cycles(graph), f"import cycles: {cycles(graph)}"


def test_no_import_inside_a_function() -> None:
    bad = []
    for mod, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        names = {a.name for a in sub.names}
                        if not names <= OPTIONAL_IN_FUNCTIONS.get(mod, set()):
                            bad.append(f"{path.relative_to(ROOT)}:{sub.lineno} {ast.unparse(sub)}")
    assert not bad, "imports inside functions: " + "; ".join(bad)


def test_planning_loads_no_ssh_or_http_library() -> None:
    code = ("import sys; import orchestrator.plan, orchestrator.config; "
            "from orchestrator.plan import build_plan, fleet_plan; "
            "print(' '.join(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('asyncssh', 'httpx', 'httpcore', 'tenacity', 'structlog'))))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       check=True)
    assert r.stdout.strip() == "", f"the planner loaded: {r.stdout.strip()}"
    # and the check itself can see such a module when it is loaded
    r = subprocess.run([sys.executable, "-c", code.replace("import sys;", "import sys, httpx;")],
                       capture_output=True, text=True, cwd=ROOT, check=True)
    assert "httpx" in r.stdout


def test_every_exception_class_of_orch_derives_from_orch_error() -> None:
    stray = []
    seen = 0
    for info in pkgutil.walk_packages(orchestrator.__path__, "orchestrator."):
        if info.name.endswith("__main__"):
            continue
        mod = importlib.import_module(info.name)
        for name, obj in inspect.getmembers(mod, inspect.isclass):
            if obj.__module__ != mod.__name__ or not issubclass(obj, BaseException):
                continue
            seen += 1
            if not issubclass(obj, OrchError):
                stray.append(f"{info.name}.{name}")
    assert seen > 10
    assert not stray, f"exceptions outside OrchError: {stray}"
