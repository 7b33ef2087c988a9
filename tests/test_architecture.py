"""The package's shape: no import cycles (lazy imports included), and a default run that loads
only the engine parts its config uses."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, package: str) -> list[str]:
    """Every imported name, at any depth (function bodies too), except under TYPE_CHECKING."""
    found: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append(base)
            found.extend(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = {t for t in _imports(ast.parse(path.read_text()), package) if t in files}
        graph[name] = {t for t in targets if t != name and not name.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def test_cycle_finder_sees_a_lazy_cycle() -> None:
    tree = ast.parse(
        "def f():\n    from imgcls.b import x\nif TYPE_CHECKING:\n    import imgcls.c\n"
    )
    assert _imports(tree, "imgcls") == ["imgcls.b", "imgcls.b.x"]
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_import_cycles_in_src() -> None:
    graph = import_graph()
    assert "imgcls.builder" in graph and graph["imgcls.builder"], "the graph is empty"
    assert cycles(graph) == []


def test_layers_are_crossed_only_downwards() -> None:
    """Entry points -> tasks -> builder -> models/data -> engine/utils: the engine never imports
    the surface that uses it (tasks, the builder, the LightningModule), and only tasks import
    the builder; nothing but entry points and tasks imports a task."""
    surface = ("imgcls.tasks", "imgcls.builder", "imgcls.models.classifier", "imgcls.callbacks")
    crossings = []
    for module, imported in import_graph().items():
        for target in imported:
            if module.startswith("imgcls.engine") and target.startswith(surface):
                crossings.append(f"{module} -> {target}")
            task_or_entry = module.startswith("imgcls.tasks") or "." not in module
            if target.startswith("imgcls.tasks") and not task_or_entry:
                crossings.append(f"{module} -> {target}")
            if target == "imgcls.builder" and not task_or_entry:
                crossings.append(f"{module} -> {target}")
    assert sorted(crossings) == []


ENGINE_ONLY_WHEN_ASKED = (
    "imgcls.engine.sweeps",
    "imgcls.engine.streaming",
    "imgcls.engine.checkpoints.preemption",
    "imgcls.engine.feature_cache",
    "imgcls.data.shards_datamodule",
    "optuna",
    "litdata",
)

_PROBE = """
import json, sys
sys.argv = ["train.py", *json.loads(sys.argv[1])]
sys.path.insert(0, "src")
import runpy
try:
    runpy.run_path("src/train.py", run_name="__main__")
except SystemExit as exc:
    if exc.code not in (None, 0):
        raise
print("MODULES=" + json.dumps(sorted(sys.modules)))
"""


def test_default_run_imports_no_sweep_streaming_or_preemption_code(tmp_path: Path) -> None:
    overrides = [
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=2",
        "+trainer.limit_test_batches=2",
        f"hydra.run.dir={tmp_path}",
        "logger=csv",
    ]
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(overrides)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("MODULES="))
    modules = json.loads(line.removeprefix("MODULES="))
    assert "imgcls.builder" in modules and "imgcls.tasks.train" in modules
    assert list((tmp_path / "checkpoints").glob("*.ckpt")), "the run trained nothing"
    loaded = [m for m in modules if m.startswith(ENGINE_ONLY_WHEN_ASKED)]
    assert loaded == []
