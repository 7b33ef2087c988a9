"""Shared fixtures: configs composed once per session and copied per test with tmp output dirs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

import imgcls  # noqa: F401  (registers ${project_root:})
from imgcls.utils.config import project_root

ROOT = project_root()
CONFIGS = ROOT / "configs"
MNIST_DATA = ROOT / "data"


def compose_config(name: str, overrides: list[str], out: Path) -> DictConfig:
    """Compose ``configs/<name>.yaml`` like ``@hydra.main`` does, writing into ``out``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.paths.log_dir = str(out / "logs")
        cfg.extras.print_config = False
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg("train", ["model=mlp", ...])`` -> a config writing into this test's tmp dir."""

    def make(
        name: str = "train", overrides: list[str] | None = None, out: Path | None = None
    ) -> DictConfig:
        return compose_config(name, list(overrides or []), out or tmp_path)

    return make


# -- tiny runs -----------------------------------------------------------------------------------
# What `quiet` switches off, by callback key of the callbacks group in use: the console's progress
# bar and layer summary (set to null), and the diagnostics (confusion matrix, report.html: slow).
QUIET_CALLBACKS = ("rich_progress_bar", "model_summary")


def _group_keys(group: str, option: str) -> set[str]:
    """Top-level keys of ``configs/<group>/<option>.yaml``, with those of the options it includes."""
    conf = OmegaConf.load(CONFIGS / group / f"{option}.yaml")
    keys = {str(k) for k in conf if k != "defaults"}
    for entry in conf.get("defaults") or []:
        if isinstance(entry, str) and entry != "_self_":
            keys |= _group_keys(group, entry)
    return keys


def _default_option(config: str, group: str) -> str | None:
    """The option ``configs/<config>.yaml`` picks for ``group`` in its defaults list."""
    for entry in OmegaConf.load(CONFIGS / f"{config}.yaml").get("defaults") or []:
        if not isinstance(entry, str) and group in entry:
            return entry[group]
    return None


def tiny(
    *more: str,
    epochs: int | None = 1,
    train_batches: int | None = 2,
    val_batches: int | None = 1,
    test_batches: int | None = 1,
    quiet: bool = True,
    diagnostics: bool = False,
    logger: str | None = "none",
    callbacks: str | None = None,
    accelerator: str | None = None,
    task: str = "train",
    prefix: str = "+",
) -> list[str]:
    """Overrides for a tiny run; the one definition of "tiny" and "quiet" for the whole suite.

    ``tiny()`` is a 1-epoch run of 2 training, 1 validation and 1 test batch with no logger,
    quiet. Every limit is a parameter; ``None`` leaves the config's own value (e.g. all batches,
    for a test asserting an accuracy floor, or epochs given by each test). ``more`` are further
    overrides, appended last (so they win over the ones built here)::

        tiny("model=lenet", "data.val_size=200", train_batches=5, logger="csv")

    - ``epochs``: ``trainer.max_epochs``; ``*_batches``: ``<prefix>trainer.limit_*_batches``
      (``prefix="++"`` where a config may already set them, e.g. for the docs' commands).
    - ``quiet``: no progress bar, no model summary, no ``print_config`` (config_tree.log), no
      diagnostics callback unless ``diagnostics=True`` (a test reading report.html or checking
      the callback under DDP/sweeps keeps it).
    - ``logger``: ``logger=<logger>`` (``"csv"`` for a test reading CSV metrics); ``None`` keeps
      the config's default (TensorBoard).
    - ``callbacks``: ``callbacks=<group>`` (e.g. ``"none"``, ``"default_ema"``); quiet nulls only
      the callbacks that group has. ``None`` keeps the task's default group.
    - ``accelerator``: ``trainer.accelerator=<accelerator>`` (``"cpu"`` for exact comparisons).
    - ``task``: the config (``"train"``, ``"eval"``); an eval run only tests, so only
      ``test_batches`` of the limits applies to it.
    """
    fits = task == "train"
    out = [f"callbacks={callbacks}"] if callbacks is not None else []
    if fits and epochs is not None:
        out.append(f"trainer.max_epochs={epochs}")
    limits = {"train": train_batches, "val": val_batches} if fits else {}
    limits["test"] = test_batches
    out += [
        f"{prefix}trainer.limit_{split}_batches={n}" for split, n in limits.items() if n is not None
    ]
    if accelerator is not None:
        out.append(f"trainer.accelerator={accelerator}")
    if logger is not None:
        out.append(f"logger={logger}")
    if quiet:
        out += [
            f"{prefix}trainer.enable_progress_bar=false",
            f"{prefix}trainer.enable_model_summary=false",
        ]
        group = callbacks if callbacks is not None else _default_option(task, "callbacks")
        present = _group_keys("callbacks", group) if group else set()
        out += [f"callbacks.{key}=null" for key in QUIET_CALLBACKS if key in present]
        if not diagnostics and "diagnostics" in present:
            out.append("~callbacks.diagnostics")
        out.append("extras.print_config=false")
    return [*out, *more]


@pytest.fixture(scope="session")
def tiny_overrides() -> Callable[..., list[str]]:
    """:func:`tiny` as a fixture: ``make_cfg("train", tiny_overrides("model=mlp", epochs=2))``."""
    return tiny


def run_entry(
    script: str,
    *overrides: str,
    cwd: Path | None = None,
    timeout: int = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python src/<script>.py overrides...`` as a user would; returns the completed process."""
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, str(ROOT / "src" / f"{script}.py"), *overrides],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


def copy_project(project: Path) -> Path:
    """A copy of ``src/`` and ``configs/`` at ``project``, as a user's fresh clone to edit."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", project / "src", ignore=ignore)
    shutil.copytree(ROOT / "configs", project / "configs")
    return project


def run_in_project(project: Path, script: str, *overrides: str) -> subprocess.CompletedProcess:
    """``python src/<script>.py`` of the copy at ``project``; it must succeed without a traceback."""
    env = {**os.environ, "PYTHONPATH": str(project / "src"), "PROJECT_ROOT": str(project)}
    cmd = [sys.executable, str(project / "src" / f"{script}.py"), *overrides]
    proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc


def make_digits(
    tmp_path_factory: pytest.TempPathFactory, train: int, test: int, form: str = "folder"
) -> Path:
    """A small digits set (``scripts/make_digit_datasets.py``) from the bundled MNIST.

    ``folder``: RGB digits of mixed sizes in class folders (train/, valid/, test/);
    ``csv``: ``train.csv`` (id,label) + ``test.csv`` (id only) beside the PNGs.
    """
    import make_digit_datasets

    out = tmp_path_factory.mktemp(f"digits_{form}")
    argv = ["--out", str(out), "--train", str(train), "--test", str(test), "--forms", form]
    assert make_digit_datasets.main(argv) == 0
    return out / f"digits_{form}"


@pytest.fixture(autouse=True)
def _seed_and_threads() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def mnist_dm():
    """The real MNIST datamodule, loaded once per session (read-only for tests)."""
    from imgcls.data.mnist_datamodule import MNISTDataModule

    dm = MNISTDataModule(data_dir=str(MNIST_DATA))
    dm.prepare_data()
    dm.setup()
    return dm


@pytest.fixture(scope="session")
def trained_lenet_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LeNet checkpoint trained briefly on MNIST by ``src/train.py`` (~97 % test accuracy).

    Trained through the entry point, so its run dir is a real one (``.hydra/config.yaml``
    beside ``checkpoints/``), as predict/export meet it.
    """
    logs = tmp_path_factory.mktemp("lenet_run")
    proc = run_entry(
        "train",
        f"paths.log_dir={logs}",
        "extras.print_config=false",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=150",
        "+trainer.limit_val_batches=1",
        "test=false",
        "~callbacks.diagnostics",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(logs.glob("train/runs/*/checkpoints/epoch_000.ckpt"))


@pytest.fixture(scope="session")
def mnist_png_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The first 200 MNIST test digits as PNG files (a third in a subfolder) and their labels."""
    from torchvision.datasets import MNIST

    from imgcls.data.mnist_datamodule import ensure_mnist_raw

    ensure_mnist_raw(MNIST_DATA)
    test = MNIST(str(MNIST_DATA), train=False, download=False)
    folder = tmp_path_factory.mktemp("digits")
    (folder / "sub").mkdir()
    truth: dict[str, str] = {}
    for i in range(200):
        image, label = test[i]
        name = f"{'sub/' if i % 3 == 0 else ''}digit_{i:03d}.png"
        image.save(folder / name)
        truth[name] = str(label)
    return folder, truth
