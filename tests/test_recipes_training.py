"""Modern recipe options: warmup + cosine LR, EMA of the weights, flip TTA, the MNIST recipe.

One small LeNet run (warmup-cosine + EMA, 20 steps on real MNIST) is trained once per module and
shared by the checkpoint, EMA and TTA tests.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from imgcls.builder import build_datamodule
from imgcls.engine import boundary
from imgcls.engine.boundary import UnsafeCheckpointError
from imgcls.engine.checkpoints.resume import check_resume_plan
from imgcls.errors import CheckpointError, ConfigError
from imgcls.models.classifier import ImageClassifier
from imgcls.models.load import load_classifier
from imgcls.models.schedules import build_scheduler
from imgcls.tasks.evaluate import evaluate
from imgcls.tasks.train import train
from tests.conftest import CONFIGS, compose_config, tiny

# 20 steps per epoch (epochs: each test's), all 500 validation images, 2 test batches
RUN = tiny(
    "model=lenet",
    "model/scheduler=warmup_cosine",
    "callbacks.ema.decay=0.9",
    "data.val_size=500",
    epochs=None,
    train_batches=20,
    val_batches=None,
    test_batches=2,
    logger="csv",
    callbacks="default_ema",
    accelerator="cpu",
)


def _warmup_cosine() -> dict:
    return OmegaConf.to_container(OmegaConf.load(CONFIGS / "model/scheduler/warmup_cosine.yaml"))


def _lrs(cfg: dict, steps: int, epochs: int = 4) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    trainer = SimpleNamespace(max_epochs=epochs, estimated_stepping_batches=steps)
    make = partial(boundary.factory, kind="scheduler")  # a stored (plain) scheduler config
    sched = build_scheduler(cfg, opt, trainer, "step", lambda c, p: make(c, path=p))  # type: ignore[arg-type]
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return [*lrs, opt.param_groups[0]["lr"]]


def test_warmup_cosine_rises_linearly_peaks_and_decays_to_eta_min() -> None:
    lrs = _lrs(_warmup_cosine(), 100)  # warmup_fraction 0.05: 5 steps
    warm = lrs[:6]
    assert warm[0] == pytest.approx(0.1 * 0.01)
    rises = [b - a for a, b in zip(warm, warm[1:], strict=False)]
    assert rises == pytest.approx([rises[0]] * 5)  # linear
    assert rises[0] > 0 and max(lrs) == pytest.approx(0.1) and lrs.index(max(lrs)) == 5
    decay = lrs[5:]
    assert all(b <= a + 1e-12 for a, b in zip(decay, decay[1:], strict=False))
    assert decay[48] == pytest.approx(0.05, rel=0.05)  # cosine: half way down at mid-decay
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9)


def test_warmup_epochs_sets_the_warmup_length() -> None:
    lrs = _lrs({**_warmup_cosine(), "warmup_epochs": 1}, 100, epochs=4)  # 25 steps an epoch
    assert lrs.index(max(lrs)) == 25


def test_smoke_and_tiny_runs_still_get_a_warmup_cosine_schedule() -> None:
    # fast_dev_run (1 step) and a 5-step run whose 5 % warmup rounds to 0 steps
    assert all(lr > 0 for lr in _lrs(_warmup_cosine(), 1))
    lrs = _lrs(_warmup_cosine(), 5)
    assert lrs[1] == max(lrs) and lrs[-1] < lrs[1]  # one warmup step, then the decay


def test_a_warmup_longer_than_the_run_is_one_config_error() -> None:
    with pytest.raises(ConfigError, match="warmup of 100 step"):
        _lrs({**_warmup_cosine(), "warmup_epochs": 4}, 100, epochs=4)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ema_run")
    train(compose_config("train", [*RUN, "trainer.max_epochs=1"], out))
    return out


def _best(run: Path) -> Path:
    return Path(json.loads((run / "metrics.json").read_text())["best_checkpoint"])


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_a_sequentiallr_checkpoint_loads_through_the_safe_loader(run: Path) -> None:
    ckpt = _ckpt(_best(run))
    assert ckpt["hyper_parameters"]["scheduler"]["_target_"].endswith("SequentialLR")
    assert ckpt["lr_schedulers"][0]["_milestones"] == [1]  # 5 % of 20 steps
    model = load_classifier(_best(run))
    assert isinstance(model, ImageClassifier)


@pytest.mark.parametrize(
    ("child", "refused"),
    [
        ({"_target_": "os.system"}, "'os.system' is refused"),
        (
            {
                "_target_": "torch.optim.lr_scheduler.SequentialLR",
                "schedulers": [{"_target_": "torch.optim.lr_scheduler.StepLR"}],
            },
            "cannot be nested",
        ),
    ],
)
def test_a_crafted_child_scheduler_is_refused_naming_the_key(
    run: Path, tmp_path: Path, child: dict, refused: str
) -> None:
    ckpt = _ckpt(_best(run))
    ckpt["hyper_parameters"]["scheduler"]["schedulers"][1] = child
    bad = tmp_path / "bad.ckpt"
    torch.save(ckpt, bad)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_classifier(bad)
    assert "hyper_parameters.scheduler.schedulers[1]._target_=" in str(err.value)
    assert refused in str(err.value)


def test_resume_with_other_child_schedulers_is_refused(run: Path) -> None:
    ckpt = _ckpt(_best(run))
    ours = json.loads(json.dumps(ckpt["hyper_parameters"]))
    ours["scheduler"]["schedulers"][1]["_target_"] = "torch.optim.lr_scheduler.PolynomialLR"
    with pytest.raises(CheckpointError, match=r"\['LinearLR', 'PolynomialLR'\]"):
        check_resume_plan(ckpt, ours, 2, None, "x.ckpt")


def _validate(model: ImageClassifier, run: Path) -> float:
    dm = build_datamodule(compose_config("train", RUN, run / "val"))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    return float(trainer.validate(model, datamodule=dm, verbose=False)[0]["val/loss"])


def test_ema_weights_are_checkpointed_and_are_what_validation_scored(run: Path) -> None:
    ckpt = _ckpt(_best(run))
    ema, raw = ckpt["state_dict"], ckpt["current_model_state"]
    name = "net.classifier.weight" if "net.classifier.weight" in ema else next(iter(ema))
    assert not torch.allclose(ema[name].float(), raw[name].float())
    logged = json.loads((run / "metrics.json").read_text())["metrics"]["val/loss"]

    model = load_classifier(_best(run))  # the state_dict: EMA
    assert _validate(model, run) == pytest.approx(logged, abs=1e-5)
    model.load_state_dict(raw)
    assert abs(_validate(model, run) - logged) > 1e-3  # the raw weights score otherwise


def test_the_run_tests_the_ema_weights_and_eval_reproduces_it(run: Path, tmp_path: Path) -> None:
    trained = json.loads((run / "metrics.json").read_text())["metrics"]["test/acc"]
    cfg = compose_config(
        "eval",
        [
            f"ckpt_path={_best(run)}",
            "+trainer.limit_test_batches=2",
            "logger=csv",
            "callbacks=none",
        ],
        tmp_path,
    )
    assert evaluate(cfg)["test/acc"] == pytest.approx(trained, abs=1e-7)


def test_warmup_cosine_ema_run_extends_from_1_to_2_epochs(
    run: Path, tmp_path: Path, caplog
) -> None:
    out = tmp_path / "ext"
    train(compose_config("train", [*RUN, "trainer.max_epochs=1", "test=false"], out))
    with caplog.at_level(logging.INFO):
        train(compose_config("train", [*RUN, "trainer.max_epochs=2", "test=false"], out))
    assert "resumed SequentialLR at step 20 with this run's plan" in caplog.text
    state = _ckpt(out / "checkpoints" / "last.ckpt")["lr_schedulers"][0]
    assert state["_milestones"] == [2]  # the 40-step run's warmup
    assert state["_schedulers"][1]["T_max"] == 38
    assert state["last_epoch"] == 40


def test_flip_tta_is_the_mean_of_the_two_softmaxes(run: Path) -> None:
    model = load_classifier(_best(run))
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        plain = model.predict_step(x, 0)
        model.tta = "flip"
        tta = model.predict_step(x, 0)
        both = (torch.softmax(model(x), 1) + torch.softmax(model(x.flip(-1)), 1)) / 2
    assert not torch.allclose(tta, plain, atol=1e-4)
    assert torch.allclose(tta, both, atol=1e-6)


def test_eval_with_tta_records_it_and_scores_otherwise(run: Path, tmp_path: Path) -> None:
    common = [f"ckpt_path={_best(run)}", "+trainer.limit_test_batches=2", "logger=csv"]
    plain = evaluate(compose_config("eval", [*common, "callbacks=none"], tmp_path / "a"))
    flip = evaluate(compose_config("eval", [*common, "callbacks=none", "tta=flip"], tmp_path / "b"))
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["tta"] == "flip"
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["tta"] is None
    assert flip["test/loss"] != pytest.approx(plain["test/loss"], abs=1e-4)
    with pytest.raises(ConfigError, match="tta='rotate'"):
        evaluate(compose_config("eval", [*common, "tta=rotate"], tmp_path / "c"))


@pytest.mark.slow
def test_mnist_modern_recipe_reaches_99_percent(tmp_path: Path) -> None:
    # the recipe as it ships: its own epochs, every batch
    full = tiny(
        "experiment=mnist_modern",
        epochs=None,
        train_batches=None,
        val_batches=None,
        test_batches=None,
        logger="csv",
        accelerator="cpu",
    )
    metrics = train(compose_config("train", full, tmp_path))
    assert metrics["test/acc"] >= 0.99
