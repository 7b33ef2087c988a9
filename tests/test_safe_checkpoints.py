"""Checkpoints are data: crafted checkpoints never run code, at any entry point.

One tiny real LeNet checkpoint (2 training steps) is made once; each crafted file is that
checkpoint with a payload in its ``hyper_parameters`` (written with torch.save, read back with
weights_only=True, as a downloaded file would be). A payload deletes (``pathlib.Path.unlink``)
or truncates (``builtins.open(path, "w")``) a victim file when a config is instantiated.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra.utils import instantiate

from imgcls.engine.boundary import UnsafeCheckpointError, allow_from_config, check_classifier
from imgcls.errors import ConfigError
from imgcls.models.classifier import ImageClassifier
from imgcls.models.load import load_classifier
from imgcls.models.nets.lenet import LeNet
from imgcls.tasks.evaluate import evaluate
from imgcls.tasks.export import export
from imgcls.tasks.predict import predict
from imgcls.tasks.train import train
from tests.conftest import compose_config, run_entry, tiny

# 1 epoch of 2 training steps and 1 validation batch, no test (test_trust_boundary, test_new_net)
TINY = tiny("model=lenet", "data.val_size=200", "test=false", test_batches=None, accelerator="cpu")
PRECIOUS = "precious data\n"


class RenamedLeNet(LeNet):
    """A user's own net (outside the package)."""


def _unlink(victim: Path) -> dict[str, Any]:
    return {"_target_": "pathlib.Path.unlink", "_args_": [str(victim)]}


def _truncate(victim: Path) -> dict[str, Any]:
    return {"_target_": "builtins.open", "_args_": [str(victim), "w"]}


def _nested(role: str, key: str, payload: Callable) -> Callable:
    def craft(h: dict[str, Any], victim: Path) -> None:
        h[role][key] = payload(victim)

    return craft


def _top_level_net(h: dict[str, Any], victim: Path) -> None:
    h["net"] = {"_target_": "builtins.open", "file": str(victim), "mode": "w"}


def _instantiator(h: dict[str, Any], victim: Path) -> None:  # GHSA-qqmf-gpg7-g8gw's vector
    h["_instantiator"] = "pathlib.Path.unlink"


# name -> (how to craft, the key path the refusal names, the target it names)
CRAFTED = {
    "net_nested_unlink": (
        _nested("net", "block", _unlink),
        "hyper_parameters.net.block._target_",
        "pathlib.Path.unlink",
    ),
    "optimizer_nested_truncate": (
        _nested("optimizer", "betas", _truncate),
        "hyper_parameters.optimizer.betas._target_",
        "builtins.open",
    ),
    "scheduler_nested_unlink": (
        _nested("scheduler", "max_lr", _unlink),
        "hyper_parameters.scheduler.max_lr._target_",
        "pathlib.Path.unlink",
    ),
    "net_outside_registry": (_top_level_net, "hyper_parameters.net._target_", "builtins.open"),
    "spec_nested_truncate": (
        _nested("spec", "mean", _truncate),
        "hyper_parameters.spec.mean._target_",
        "builtins.open",
    ),
    "lightning_instantiator": (
        _instantiator,
        "hyper_parameters._instantiator",
        "pathlib.Path.unlink",
    ),
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run dir of a 2-step LeNet run (OneCycleLR), trained in-process once for this module."""
    out = tmp_path_factory.mktemp("tiny_run")
    train(compose_config("train", TINY, out))
    return out


@pytest.fixture
def crafted(tiny_run: Path, tmp_path: Path) -> Callable[[str], tuple[Path, Path, str, str]]:
    """``crafted(name)`` -> (checkpoint file, victim file, key path, target)."""
    raw = torch.load(tiny_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)

    def make(name: str) -> tuple[Path, Path, str, str]:
        craft, key, target = CRAFTED[name]
        victim = tmp_path / f"victim_{name}.txt"
        victim.write_text(PRECIOUS)
        ckpt = copy.deepcopy(raw)
        craft(ckpt["hyper_parameters"], victim)
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        path = tmp_path / name / "checkpoints" / "last.ckpt"
        torch.save(ckpt, path)
        return path, victim, key, target

    return make


def test_the_payloads_are_live(tmp_path: Path) -> None:
    """Without the registry, instantiating these configs deletes/truncates the victim."""
    gone, cut = tmp_path / "gone.txt", tmp_path / "cut.txt"
    gone.write_text(PRECIOUS)
    cut.write_text(PRECIOUS)
    instantiate(_unlink(gone))
    instantiate(_truncate(cut)).close()
    assert not gone.exists() and cut.read_text() == ""


def _assert_one_line_refusal(proc, key: str, target: str) -> None:
    assert proc.returncode not in (0, None), proc.stdout[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), proc.stderr[-3000:]
    assert f"{key}={target!r} is refused" in errors[0]


ENTRY_ARGS = {
    "eval": lambda ckpt, out, imgs: [f"ckpt_path={ckpt}", f"paths.log_dir={out}"],
    "predict": lambda ckpt, out, imgs: [
        f"ckpt_path={ckpt}",
        f"input={imgs}",
        f"paths.log_dir={out}",
    ],
    "export": lambda ckpt, out, imgs: [f"ckpt_path={ckpt}", f"paths.log_dir={out}"],
    "train": lambda ckpt, out, imgs: [*TINY, f"resume={ckpt.parent.parent}"],
}
# every entry point as a user runs it, with a different payload each; the other pairs are slow
# (each subprocess costs ~10 s here) and every pair is also run in-process below
SUBPROCESS_CASES = [
    ("eval", "net_nested_unlink"),
    ("predict", "optimizer_nested_truncate"),
    ("export", "scheduler_nested_unlink"),
    ("train", "net_outside_registry"),
] + [
    pytest.param(entry, name, marks=pytest.mark.slow)
    for entry, name in [
        ("eval", "lightning_instantiator"),
        ("predict", "spec_nested_truncate"),
        ("export", "net_outside_registry"),
        ("train", "net_nested_unlink"),
        ("eval", "scheduler_nested_unlink"),
        ("predict", "lightning_instantiator"),
        ("export", "optimizer_nested_truncate"),
        ("train", "spec_nested_truncate"),
    ]
]


@pytest.mark.parametrize(("entry", "name"), SUBPROCESS_CASES)
def test_entry_points_refuse_crafted_checkpoints(
    entry: str, name: str, crafted, tmp_path: Path, mnist_png_folder
) -> None:
    ckpt, victim, key, target = crafted(name)
    images, _ = mnist_png_folder
    args = ENTRY_ARGS[entry](ckpt, tmp_path / "logs", images)
    proc = run_entry(entry, *args, "extras.print_config=false", timeout=300)
    assert victim.read_text() == PRECIOUS
    _assert_one_line_refusal(proc, key, target)
    assert str(ckpt) in proc.stderr  # names the file


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_eval_predict_export_tasks_refuse_every_payload(
    name: str, crafted, tmp_path: Path, mnist_png_folder
) -> None:
    ckpt, victim, key, target = crafted(name)
    images, _ = mnist_png_folder
    tasks = {
        "eval": (evaluate, []),
        "predict": (predict, [f"input={images}"]),
        "export": (export, []),
    }
    for config, (task, extra) in tasks.items():
        cfg = compose_config(config, [f"ckpt_path={ckpt}", *extra], tmp_path / config)
        with pytest.raises(UnsafeCheckpointError, match=rf"{key}={target!r} is refused"):
            task(cfg)
        assert victim.read_text() == PRECIOUS


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_load_from_checkpoint_and_load_classifier_refuse(name: str, crafted) -> None:
    ckpt, victim, key, target = crafted(name)
    for load in (ImageClassifier.load_from_checkpoint, load_classifier):
        with pytest.raises(UnsafeCheckpointError, match=rf"{key}={target!r} is refused") as e:
            load(ckpt)
        assert victim.read_text() == PRECIOUS
        assert str(ckpt) in str(e.value)


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_resume_in_process_refuses_before_training(name: str, crafted, tmp_path: Path) -> None:
    ckpt, victim, key, _ = crafted(name)
    with pytest.raises(UnsafeCheckpointError, match=key):
        train(compose_config("train", [*TINY, f"ckpt_path={ckpt}"], tmp_path / "run"))
    assert victim.read_text() == PRECIOUS
    assert not (tmp_path / "run" / "checkpoints").exists() or not list(
        (tmp_path / "run" / "checkpoints").glob("*.ckpt")
    )


def _tiny_loader() -> torch.utils.data.DataLoader:
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 10
    return torch.utils.data.DataLoader(list(zip(x, y, strict=True)), batch_size=4)


def test_trainer_fit_with_a_crafted_ckpt_path_refuses(tiny_run: Path, crafted) -> None:
    """Library use: a model from a good file, then ``fit(ckpt_path=<crafted>)``."""
    ckpt, victim, key, _ = crafted("optimizer_nested_truncate")
    model = ImageClassifier.load_from_checkpoint(tiny_run / "checkpoints" / "last.ckpt")
    trainer = L.Trainer(
        max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    with pytest.raises(UnsafeCheckpointError, match=key):
        trainer.fit(model, train_dataloaders=_tiny_loader(), ckpt_path=ckpt, weights_only=True)
    assert victim.read_text() == PRECIOUS


def test_load_from_checkpoint_then_fit_uses_the_registry(tiny_run: Path) -> None:
    model = ImageClassifier.load_from_checkpoint(tiny_run / "checkpoints" / "last.ckpt")
    trainer = L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(model, train_dataloaders=_tiny_loader())
    assert type(trainer.optimizers[0]) is torch.optim.Adam
    assert trainer.global_step == 2


def test_user_nets_are_allowed_through_config_only(tiny_run: Path, tmp_path: Path) -> None:
    raw = torch.load(tiny_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    hp = raw["hyper_parameters"]
    hp["net"]["_target_"] = "tests.test_safe_checkpoints.RenamedLeNet"
    with pytest.raises(UnsafeCheckpointError, match="add your own with extras.allowed_nets"):
        check_classifier(hp, "hyper_parameters")
    with pytest.raises(ConfigError, match="not a subclass of Module"):
        allow_from_config({"extras": {"allowed_nets": ["pathlib.Path"]}})
    allow_from_config({"extras": {"allowed_nets": ["tests.test_safe_checkpoints.RenamedLeNet"]}})
    try:
        path = tmp_path / "user_net.ckpt"
        torch.save(raw, path)
        assert isinstance(load_classifier(path).net, RenamedLeNet)
    finally:
        allow_from_config({})
    with pytest.raises(UnsafeCheckpointError, match="extras.allowed_nets"):
        load_classifier(path)
