"""The package's import graph: no cycles (not even ones hidden by imports inside functions or under
TYPE_CHECKING), every module importable on its own, and the model registry free of frameworks."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "competition"
FRAMEWORKS = ("torch", "torchvision", "timm", "tensorflow", "keras")
# Known, documented exceptions (each a sorted list of modules); nothing may be added here without a reason.
# (competition.kaggle.kernel is given the CLI's command table by the CLI: competition.cli.command_table.)
ALLOWED_CYCLES: list[list[str]] = []


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules `name` imports anywhere in its file (top level, functions, TYPE_CHECKING blocks)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_package_has_no_import_cycle() -> None:
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(name, path, known) for name, path in modules.items()}
    assert graph["competition.models.registry"] >= {"competition.models.base"}  # the graph is read at all
    cycles = [c for c in _cycles(graph) if c not in ALLOWED_CYCLES]
    detail = "; ".join(" <-> ".join(c) + f" ({', '.join(f'{a} -> {b}' for a in c for b in sorted(graph[a]) if b in c)})" for c in cycles)
    assert not cycles, f"import cycles: {detail}"


@pytest.mark.parametrize("module", sorted(m for m in _modules() if m.startswith(("competition.models", "competition.data", "competition.bench"))))
def test_each_module_imports_alone_in_a_fresh_interpreter(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_model_registry_imports_no_framework() -> None:
    code = (
        "import sys\n"
        "from competition.models import registry\n"
        "names = registry.list_models()\n"
        "assert 'vgg16_angle' in names, names\n"
        "[registry.load_model_config(n) for n in names]\n"
        "registry.describe_models()\n"
        f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("args", [["--help"], ["models"]])
def test_the_cli_loads_no_framework_for_help_or_the_model_table(args: list[str]) -> None:
    code = (
        "import sys\nfrom competition.cli import app\n"
        f"try:\n    app({args!r}, standalone_mode=False)\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY', sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "HEAVY []" in done.stdout, done.stdout[-2000:]


def test_torch_and_torchvision_are_imported_before_keras_in_every_scope() -> None:
    """torch 2.14 + TensorFlow 2.21 segfault in one process when TensorFlow comes first (docs/architecture.md);
    an import sorter once put keras above torch. In every function or module body that imports keras or
    tensorflow, torch and torchvision must come earlier."""
    import ast

    def imported(body: list[ast.stmt]) -> list[str]:
        return [
            alias.name.split(".")[0] if isinstance(node, ast.Import) else (node.module or "").split(".")[0]
            for node in body
            if isinstance(node, (ast.Import, ast.ImportFrom))
            for alias in (node.names if isinstance(node, ast.Import) else node.names[:1])
        ]

    offenders = []
    for path in sorted((ROOT / "competition").rglob("*.py")):
        tree = ast.parse(path.read_text())
        module = imported(tree.body)
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for name, before, order in [("<module>", [], module), *((f.name, module, imported(f.body)) for f in functions)]:
            frameworks = [i for i, found in enumerate(order) if found in ("keras", "tensorflow")]
            if frameworks and not {"torch", "torchvision"} <= {*before, *order[: frameworks[0]]}:
                offenders.append(f"{path.relative_to(ROOT)}:{name}")
    assert offenders == [], offenders
