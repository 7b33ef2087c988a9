"""run.json, the data fingerprint (in checkpoints, checked by eval) and report.html of a run."""

from __future__ import annotations

import json
import logging
import platform
import re
import shutil
import subprocess
from html.parser import HTMLParser
from importlib import metadata
from pathlib import Path

import pytest
import torch
from PIL import Image

from imgcls.data.folder_datamodule import FolderDataModule
from imgcls.runs.fingerprint import CHECKPOINT_KEY, data_fingerprint
from imgcls.runs.record import CORE, DIFF_FILE, git_state
from imgcls.tasks.evaluate import evaluate
from imgcls.tasks.train import train
from tests._tiny_mnist import TinyMNIST
from tests.conftest import MNIST_DATA, ROOT, compose_config, tiny

# the default logger and the diagnostics callback stay: report.html is made of their output
SHARED = ("+trainer.num_sanity_val_steps=0", "data.eval_batch_size=100")
FAST = tiny(
    *SHARED, epochs=2, train_batches=5, val_batches=2, test_batches=2, logger=None, diagnostics=True
)
FAST_EVAL = tiny(*SHARED, task="eval", test_batches=2, logger=None, diagnostics=True)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_git_state_of_a_repo(tmp_path: Path, monkeypatch) -> None:
    repo, out = tmp_path / "repo", tmp_path / "run"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    clean = git_state(repo, out)
    assert clean is not None
    assert clean["commit"] == _git(repo, "rev-parse", "HEAD") and clean["dirty"] is False
    assert clean["diff"] is None and not (out / DIFF_FILE).exists()
    (repo / "a.py").write_text("x = 2\n")
    (repo / "new.py").write_text("")
    dirty = git_state(repo, out)
    assert dirty["dirty"] is True and dirty["untracked"] == ["new.py"]
    assert dirty["diff"] == DIFF_FILE and "+x = 2" in (out / DIFF_FILE).read_text()
    # not a repository, or no git at all: null, no crash
    assert git_state(tmp_path / "run") is None
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert git_state(repo) is None


def _folder(root: Path) -> None:
    for label, shade in (("cat", 40), ("dog", 200)):
        (root / "train" / label).mkdir(parents=True)
        for i in range(5):
            Image.new("L", (8, 8), shade + i).save(root / "train" / label / f"{i}.png")


def _print(root: Path) -> dict:
    dm = FolderDataModule(root=str(root), val_fraction=0.4, cache_dir=None, num_workers=1)
    return data_fingerprint(dm)


def test_fingerprint_follows_the_files_not_their_place(tmp_path: Path) -> None:
    root = tmp_path / "a"
    _folder(root)
    first = _print(root)
    assert set(first) == {"train", "val"}
    assert first["train"]["counts"] == {"cat": 3, "dog": 3}
    assert first["val"]["counts"] == {"cat": 2, "dog": 2} and first["val"]["n"] == 4
    assert _print(root) == first  # computed again
    moved = shutil.copytree(root, tmp_path / "elsewhere")  # another place, new mtimes
    assert _print(moved) == first
    # one file's bytes change (its size with it): its split's hash changes, the other's stays
    target = next(p for p in (moved / "train" / "cat").iterdir())
    Image.frombytes("L", (8, 8), bytes(range(0, 256, 4))).save(target)  # same size, more bytes
    changed = _print(moved)
    differ = [s for s in first if changed[s]["sha256"] != first[s]["sha256"]]
    assert len(differ) == 1 and changed[differ[0]]["n"] == first[differ[0]]["n"]
    # a label change (file moved to the other class) changes the fingerprint
    relabeled = shutil.copytree(root, tmp_path / "relabeled")
    shutil.move(relabeled / "train" / "cat" / "0.png", relabeled / "train" / "dog" / "9.png")
    assert _print(relabeled) != first


def test_in_memory_fingerprint_covers_pixels_and_labels() -> None:
    dm = TinyMNIST(n_train=64, n_val=32, n_test=32, data_dir=str(MNIST_DATA))
    first = data_fingerprint(dm)
    assert {s: v["n"] for s, v in first.items()} == {"test": 32, "train": 64, "val": 32}
    assert sum(first["train"]["counts"].values()) == 64
    assert data_fingerprint(dm) == first
    dm.splits["test"].images[0, 0, 0, 0] += 1
    assert data_fingerprint(dm)["test"]["sha256"] != first["test"]["sha256"]
    assert data_fingerprint(dm)["train"] == first["train"]
    dm.splits["train"].targets[0] = (dm.splits["train"].targets[0] + 1) % 10
    assert data_fingerprint(dm)["train"]["sha256"] != first["train"]["sha256"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(compose_config("train", FAST, out))
    return out


def test_run_record_fields_are_filled_and_true(run_dir: Path) -> None:
    rec = json.loads((run_dir / "run.json").read_text())
    assert rec["task"] == "train" and rec["status"] == "completed" and rec["error"] is None
    git = rec["git"]
    assert git["commit"] == _git(ROOT, "rev-parse", "HEAD")
    assert git["dirty"] == bool(_git(ROOT, "status", "--porcelain"))
    assert (git["diff"] == DIFF_FILE) == (run_dir / DIFF_FILE).is_file()
    assert rec["python"] == platform.python_version()
    for dist in CORE:
        assert rec["packages"][dist] == metadata.version(dist)
    assert rec["packages"]["matplotlib"] == metadata.version("matplotlib")  # the report's
    assert rec["seed"] == 12345
    assert rec["hardware"]["cpu_count"] >= 1 and rec["hardware"]["cpu"]
    assert rec["trainer"]["precision"] == "32-true" and rec["trainer"]["devices"] == 1
    assert rec["stopped"] == {"epoch": 2, "step": 10}
    assert rec["wall_time_s"] > 0 and rec["memory"]["peak_rss_mb"] > 100
    fp = rec["data_fingerprint"]
    assert {s: v["n"] for s, v in fp.items()} == {"test": 10000, "train": 55000, "val": 5000}
    assert all(sum(v["counts"].values()) == v["n"] for v in fp.values())
    assert fp["test"]["counts"]["1"] == 1135  # MNIST's t10k labels
    # the same fingerprint in every checkpoint, as plain data
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
        assert torch.load(ckpt, weights_only=True)[CHECKPOINT_KEY] == fp
    rows = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 5), (2, 10)]
    assert all("train/acc" in r and "val/acc" in r for r in rows)


def _eval_lines(out: Path, ckpt: Path, overrides: list[str], caplog) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.INFO):
        evaluate(compose_config("eval", [f"ckpt_path={ckpt}", *overrides, *FAST_EVAL], out))
    return [r.getMessage() for r in caplog.records if "fingerprint" in r.getMessage()]


def test_eval_names_other_data_in_one_line(run_dir: Path, tmp_path: Path, caplog) -> None:
    (ckpt,) = (run_dir / "checkpoints").glob("epoch_*.ckpt")
    assert _eval_lines(tmp_path / "same", ckpt, [], caplog) == []
    (line,) = _eval_lines(tmp_path / "other", ckpt, ["data.test_size=500"], caplog)
    assert line.startswith("data fingerprint: the data differs")
    assert "test " in line and "500 images" in line and "10000 images" in line
    assert "train " not in line and "val " not in line  # only the split that changed
    assert json.loads((tmp_path / "other" / "run.json").read_text())["status"] == "completed"
    # a checkpoint whose fingerprint is not plain data of the expected shape: ignored, one line
    bad = tmp_path / "bad.ckpt"
    torch.save({**torch.load(ckpt, weights_only=True), CHECKPOINT_KEY: {"test": 3}}, bad)
    (line,) = _eval_lines(tmp_path / "bad", bad, [], caplog)
    assert "no fingerprint" in line


class _Page(HTMLParser):
    """Images, tables (rows of cell texts; nested tables apart) and attribute values of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict] = []
        self.tables: list[list[list[str]]] = []
        self.attrs: list[str] = []
        self.text = ""
        self._open: list[list[list[str]]] = []
        self._cells: list[list[str]] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.attrs += [v or "" for _, v in attrs]
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag == "table":
            self._open.append([])
        elif tag == "tr":
            self._open[-1].append([])
        elif tag in ("td", "th"):
            self._cells.append([])

    def handle_endtag(self, tag) -> None:
        if tag in ("td", "th"):
            self._open[-1][-1].append("".join(self._cells.pop()).strip())
        elif tag == "table":
            self.tables.append(self._open.pop())

    def handle_data(self, data) -> None:
        if self._cells:
            self._cells[-1].append(data)

    def table(self, header: list[str]) -> dict[str, list[str]]:
        """The table with this header row: first cell -> the other cells."""
        (found,) = [t for t in self.tables if t and t[0] == header]
        return {r[0]: r[1:] for r in found[1:]}


def parse_report(path: Path) -> _Page:
    text = path.read_text()
    page = _Page()
    page.feed(text)
    page.close()
    page.text = text
    outside = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)
    assert not re.search(r"https?:|src=[\"']?//|href=|<script|<link|url\(", outside)
    for img in page.images:
        head = img["src"].removeprefix("data:image/png;base64,")
        assert img["src"].startswith("data:image/png;base64,") and head.startswith("iVBORw0KGgo")
    return page


def test_report_is_self_contained_and_matches_metrics_json(run_dir: Path) -> None:
    page = parse_report(run_dir / "report.html")
    summary = json.loads((run_dir / "metrics.json").read_text())
    diag = summary["diagnostics"]
    assert diag["split"] == "test" and len(diag["mistakes"]) == 16
    # curves + confusion matrix + one thumbnail per mistake in metrics.json
    assert len(page.images) == 2 + len(diag["mistakes"])
    captions = [img["alt"] for img in page.images[2:]]
    assert captions == [
        f"true {m['true']} → {m['pred']} ({m['confidence']:.1%})" for m in diag["mistakes"]
    ]
    rows = page.table(["metric", "value"])
    assert rows == {name: [json.dumps(v)] for name, v in summary["metrics"].items()}
    per_class = page.table(["class", "precision", "recall", "f1", "support"])
    assert list(per_class) == diag["classes"] == [str(i) for i in range(10)]
    for i, cls in enumerate(diag["classes"]):
        expected = [json.dumps(diag[k][i]) for k in ("precision", "recall", "f1", "support")]
        assert per_class[cls] == expected
    assert sum(diag["support"]) == 200  # 2 test batches of 100
    assert json.loads((run_dir / "run.json").read_text())["git"]["commit"] in page.text
