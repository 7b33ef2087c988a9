"""``model=timm``: any timm backbone by name with the ResNets' machinery, on the digits folder set.

Random init (``model.weights=null``) or weights saved by the test into a temporary file or
Hugging Face cache; nothing needs the internet.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch

timm = pytest.importorskip("timm")

from imgcls.builder import build  # noqa: E402
from imgcls.models.classifier import ImageClassifier  # noqa: E402
from imgcls.models.load import load_classifier  # noqa: E402
from imgcls.models.nets.timm_net import TimmNet  # noqa: E402
from imgcls.tasks.train import train  # noqa: E402
from tests.conftest import compose_config, make_digits, run_entry  # noqa: E402


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return make_digits(tmp_path_factory, train=300, test=100)


def data_args(root: Path) -> list[str]:
    return [
        "data=folder",
        f"data.root={root}",
        "data.test_fraction=0.1",
        "data.cache_dir=null",
        "data.image_size=[32,32]",
        "data.mean=[0.25,0.25,0.25]",
        "data.std=[0.2,0.2,0.2]",
    ]


def timm_cfg(root: Path, out: Path, *overrides: str):
    return compose_config(
        "train",
        [
            "model=timm",
            "model.net.name=resnet18",
            "model.weights=null",
            *data_args(root),
            f"model.cache_dir={out.parent}/features",
            "logger=none",
            "~callbacks.rich_progress_bar",
            "~callbacks.lr_monitor",
            "~callbacks.model_summary",
            "~callbacks.diagnostics",
            "+trainer.enable_progress_bar=false",
            "trainer.max_epochs=1",
            *overrides,
        ],
        out,
    )


def initial_and_trained(cfg, out: Path) -> tuple[dict, dict, dict]:
    """(metrics, initial net state, trained net state from the best checkpoint)."""
    L.seed_everything(int(cfg.seed))
    initial = {k: v.clone() for k, v in build(cfg).model.net.state_dict().items()}
    metrics = train(cfg)
    summary = json.loads((out / "metrics.json").read_text())
    trained = load_classifier(summary["best_checkpoint"]).net.state_dict()
    return metrics, initial, trained


@pytest.fixture(scope="module")
def frozen_run(digits, tmp_path_factory, request) -> tuple[Path, dict, dict, dict, list]:
    """A frozen random timm resnet18, head trained from the feature cache (3 epochs)."""
    out = tmp_path_factory.mktemp("timm") / "frozen"
    batches: list[int] = []  # ndim of each training input
    step = ImageClassifier.training_step
    mp = pytest.MonkeyPatch()

    def spy(self, batch, batch_idx):
        batches.append(batch[0].ndim)
        return step(self, batch, batch_idx)

    mp.setattr(ImageClassifier, "training_step", spy)
    request.addfinalizer(mp.undo)
    cfg = timm_cfg(digits, out, "model.net.freeze=true", "trainer.max_epochs=3")
    metrics, initial, trained = initial_and_trained(cfg, out)
    mp.undo()
    return out, metrics, initial, trained, batches


def test_frozen_head_trains_from_the_feature_cache(frozen_run):
    out, metrics, initial, trained, batches = frozen_run
    # every step trained the head on cached 512-d features (the backbone ran once per image)
    assert batches and set(batches) == {2}
    files = sorted(p.name.split("-")[:2] for p in (out.parent / "features").glob("*.pt"))
    assert files == [["resnet18", "train"], ["resnet18", "val"]]
    backbone = [k for k in initial if k.startswith("backbone.")]
    assert any(k.endswith("running_var") for k in backbone)
    assert all(torch.equal(trained[k], initial[k]) for k in backbone)  # BN stats included
    assert not torch.equal(trained["head.0.weight"], initial["head.0.weight"])  # the head trained
    assert {"test/acc", "val/acc"} <= set(metrics)


def test_from_scratch_trains_the_whole_backbone(digits, tmp_path):
    # model.weights=null with freeze: null -> the whole net trains (as with the ResNets)
    cfg = timm_cfg(digits, tmp_path, "+trainer.limit_train_batches=2")
    metrics, initial, trained = initial_and_trained(cfg, tmp_path)
    assert cfg.model.net.freeze is False
    assert "val/acc" in metrics
    changed = [k for k in initial if not torch.equal(trained[k], initial[k])]
    assert "backbone.conv1.weight" in changed and len(changed) > len(initial) // 2
    assert not (tmp_path / "features").exists()  # nothing cached for a trainable backbone


def test_checkpoint_evaluates_in_a_subprocess(frozen_run, digits, tmp_path):
    out, metrics, *_ = frozen_run
    ckpt = json.loads((out / "metrics.json").read_text())["best_checkpoint"]
    r = run_entry(
        "eval",
        f"ckpt_path={ckpt}",
        *data_args(digits),
        f"paths.log_dir={tmp_path}/logs",
        "logger=none",
        "callbacks=none",
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    evaluated = json.loads(next(tmp_path.glob("logs/eval/runs/*/metrics.json")).read_text())
    assert evaluated["metrics"]["test/acc"] == pytest.approx(metrics["test/acc"])


def error_lines(r) -> list[str]:
    return [line for line in r.stderr.splitlines() if line.startswith("error")]


def test_missing_weights_file_or_cache_is_one_line_before_any_data(digits, tmp_path):
    absent = tmp_path / "absent.safetensors"
    common = ["model=timm", *data_args(digits), f"paths.log_dir={tmp_path}/logs"]
    r = run_entry("train", *common, f"model.weights={absent}", timeout=300)
    assert r.returncode != 0
    assert error_lines(r) == [
        f"error: weights file {absent} not found; fix model.weights or train from scratch "
        f"with model.weights=null"
    ]
    assert "Traceback" not in r.stdout + r.stderr and " images " not in r.stdout

    hub = tmp_path / "hf"
    r = run_entry("train", *common, env={"HF_HUB_CACHE": str(hub)}, timeout=300)
    assert r.returncode != 0
    [line] = error_lines(r)
    assert f"{hub}/models--timm--resnet18.a1_in1k/snapshots/<revision>/model.safetensors" in line
    assert "model.weights=null" in line and " images " not in r.stdout


def fake_hf_cache(hub: Path, repo: str, sd: dict) -> Path:
    """The Hugging Face hub cache layout timm reads ``repo``'s weights from."""
    from safetensors.torch import save_file

    root = hub / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("0" * 40)
    snap = root / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, snap / "model.safetensors")
    return snap / "model.safetensors"


def test_default_weights_load_from_the_hf_cache_and_a_wrong_file_is_refused(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from imgcls.errors import WeightsError

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    torch.manual_seed(1)
    sd = timm.create_model("resnet18").state_dict()
    fake_hf_cache(tmp_path / "hf", "timm/resnet18.a1_in1k", sd)
    TimmNet.check_weights("DEFAULT", name="resnet18")
    net = TimmNet(3, 10, (32, 32), name="resnet18", weights="DEFAULT", hidden=[8])
    assert net.backbone_frozen  # freeze: None -> frozen with pretrained weights
    assert torch.equal(net.backbone.conv1.weight, sd["conv1.weight"])
    # grayscale: timm sums the RGB filters of the stem; normalization is the channel average
    gray = TimmNet(1, 10, (32, 32), name="resnet18", weights="a1_in1k", hidden=[8])
    assert torch.allclose(gray.backbone.conv1.weight, sd["conv1.weight"].sum(1, keepdim=True))
    mean, std = TimmNet.input_normalization("DEFAULT", 1, name="resnet18")
    assert mean == pytest.approx((0.449,)) and std == pytest.approx((0.226,))

    torch.save(timm.create_model("resnet34").state_dict(), tmp_path / "r34.pth")
    with pytest.raises(
        WeightsError, match=r"r34\.pth does not fit resnet18: unexpected keys layer1\.2"
    ):
        TimmNet(3, 10, (32, 32), name="resnet18", weights=str(tmp_path / "r34.pth"))
    with pytest.raises(WeightsError, match=r"'zz' is not a pretrained tag of resnet18 \(DEFAULT"):
        TimmNet.check_weights("zz", name="resnet18")


def test_unfreeze_at_epoch_trains_the_backbone_from_that_epoch(digits, tmp_path):
    seen: list[tuple[int, bool]] = []  # (epoch, backbone has trainable parameters)
    step = ImageClassifier.training_step

    def spy(self, batch, batch_idx):
        seen.append(
            (self.current_epoch, any(p.requires_grad for p in self.net.backbone.parameters()))
        )
        return step(self, batch, batch_idx)

    cfg = timm_cfg(
        digits,
        tmp_path,
        "model.net.freeze=true",
        "model.unfreeze_at_epoch=1",
        "callbacks.model_checkpoint.save_top_k=-1",
        "trainer.max_epochs=2",
        "+trainer.limit_train_batches=1",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ImageClassifier, "training_step", spy)
        initial_and_trained(cfg, tmp_path)
    assert sorted(set(seen)) == [(0, False), (1, True)]
    L.seed_everything(int(cfg.seed))
    initial = build(cfg).model.net.state_dict()
    trained = load_classifier(tmp_path / "checkpoints" / "epoch_001.ckpt").net.state_dict()
    assert not torch.equal(trained["backbone.conv1.weight"], initial["backbone.conv1.weight"])
