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


def _readme_folders() -> set[str]:
    """Folders in the README's package map: each line that starts unindented names one."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Package map\n.*?```text\n(.*?)```", text, re.S)
    assert block, "README has no '## Package map' text block"
    return {ln.split()[0].rstrip("/") for ln in block.group(1).splitlines() if ln[:1].strip()}


def test_readme_package_map_names_every_folder() -> None:
    """Folders and their roles, not modules: a fork that adds a net file keeps passing."""
    folders = {str(p.parent.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")}
    named = _readme_folders()
    assert folders - named == set(), "folders not in the README map"
    assert named - folders == set(), "README map names folders that do not exist"


def test_readme_group_table_lists_every_option() -> None:
    """Every choice the README's table of config groups offers exists in configs/ (a fork's
    added YAML need not be listed there)."""
    text = (ROOT / "README.md").read_text()
    for group in ("data", "model", "trainer", "logger", "callbacks", "debug", "experiment"):
        row = re.search(rf"^\| `{group}` \|(.*)\|$", text, re.M)
        assert row, f"README table has no row for {group}"
        listed = set(re.findall(r"`(\w+)`", row.group(1)))
        options = {p.stem for p in (ROOT / "configs" / group).rglob("*.yaml")}
        assert listed <= options, f"{group}: the README table offers {sorted(listed - options)}"
        assert len(listed) >= 3, f"{group}: the README table row lists no choices"


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
