"""The package stays readable: small files, short functions, a README map that matches the tree."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "imgcls"
MAX_FILE_LINES = 350
MAX_FUNCTION_LINES = 60


def _sources() -> list[Path]:
    return sorted(p for p in (ROOT / "src").rglob("*.py") if "egg-info" not in str(p))


def test_no_source_file_is_longer_than_the_limit() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for p in _sources()
        if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert not long, f"files over {MAX_FILE_LINES} lines: {long}"


def test_no_function_is_longer_than_the_limit() -> None:
    long = {}
    for p in _sources():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{p.relative_to(ROOT)}:{node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def _readme_map() -> dict[str, set[str]]:
    """Folder -> module names in the README's package map: a line starts with its folder
    (``.`` for the package root) and names its modules as ``name.py``; indented lines continue."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Package map\n.*?```text\n(.*?)```", text, re.S)
    assert block, "README has no '## Package map' text block"
    named: dict[str, set[str]] = {}
    folder = ""
    for line in block.group(1).splitlines():
        if line and not line[0].isspace():
            folder = line.split()[0].rstrip("/")
        named.setdefault(folder, set()).update(re.findall(r"(?<![\w/.])(\w+)\.py\b", line))
    return named


def test_readme_package_map_matches_the_tree() -> None:
    named = _readme_map()
    modules: dict[str, set[str]] = {}
    for p in PACKAGE.rglob("*.py"):
        if p.name == "__init__.py":
            continue
        folder = str(p.parent.relative_to(PACKAGE))
        modules.setdefault(folder, set()).add(p.stem)
    missing = {f: sorted(s - named.get(f, set())) for f, s in modules.items()}
    extra = {f: sorted(s - modules.get(f, set())) for f, s in named.items()}
    assert not {f: s for f, s in missing.items() if s}, f"modules not in the README map: {missing}"
    assert not {f: s for f, s in extra.items() if s}, f"README map names missing modules: {extra}"


def test_readme_group_table_lists_every_option() -> None:
    """The README's table of config groups offers exactly what configs/ has."""
    text = (ROOT / "README.md").read_text()
    for group in ("data", "model", "trainer", "logger", "callbacks", "debug", "experiment"):
        row = re.search(rf"^\| `{group}` \|(.*)\|$", text, re.M)
        assert row, f"README table has no row for {group}"
        listed = set(re.findall(r"`(\w+)`", row.group(1)))
        options = {p.stem for p in (ROOT / "configs" / group).glob("*.yaml")}
        assert options <= listed, f"{group}: not in the README table: {sorted(options - listed)}"


def test_entry_points_import_no_optional_heavy_library() -> None:
    """The README's start-up claim: onnx, Optuna, TensorBoard's writer, trackers, timm, the
    streaming engine and matplotlib (report figures) load only when a run uses them, not when an entry point is imported."""
    import subprocess
    import sys

    optional = [
        "onnx",
        "onnxruntime",
        "optuna",
        "torch.utils.tensorboard",
        "tensorboard",
        "mlflow",
        "wandb",
        "timm",
        "litdata",
        "matplotlib",
    ]
    code = (
        "import sys; sys.path.insert(0, 'src')\n"
        "import imgcls.tasks.train, imgcls.tasks.evaluate, imgcls.tasks.predict, imgcls.tasks.export\n"
        f"print(','.join(m for m in {optional!r} if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"imported at start-up: {proc.stdout.strip()}"
