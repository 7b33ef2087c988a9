"""Frozen ResNet transfer learning: offline weights, frozen BatchNorm, feature cache, unfreezing.

Everything runs on a few hundred 28x28 digits with ``model.weights=null`` or a state dict saved
under a temporary ``TORCH_HOME``; nothing needs the internet.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch
import torchvision
from hydra.utils import instantiate

from imgcls.builder import build, build_datamodule, build_model
from imgcls.engine.feature_cache import FeatureCache
from imgcls.errors import WeightsError, find_user_error
from imgcls.models.classifier import ImageClassifier
from imgcls.models.nets.resnet import ResNetMLP
from imgcls.tasks.evaluate import evaluate
from tests.conftest import run_entry

RESNET_ON_TINY_MNIST = (
    "model=resnet18",
    # frozen even with model.weights=null (random init would otherwise train the whole net)
    "model.net.freeze=true",
    "data._target_=tests._tiny_mnist.TinyMNIST",
    "data.batch_size=32",
    "data.eval_batch_size=64",
    "+trainer.num_sanity_val_steps=0",
    "+trainer.enable_checkpointing=false",
)
IMAGENET_GRAY = (sum((0.485, 0.456, 0.406)) / 3, sum((0.229, 0.224, 0.225)) / 3)
RESNET18_FILE = "resnet18-f37072fd.pth"


@pytest.fixture
def tiny(make_cfg, tiny_overrides, tmp_path):
    """``tiny("model.weights=null", ...)``: a config for ResNet-18 on the tiny digits (2 epochs
    of every batch)."""
    base = tiny_overrides(
        *RESNET_ON_TINY_MNIST,
        f"model.cache_dir={tmp_path}/features",
        epochs=2,
        train_batches=None,
        val_batches=None,
        test_batches=None,
        callbacks="none",
    )

    def make(*overrides: str):
        return make_cfg("train", [*base, *overrides])

    return make


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty ``TORCH_HOME``; any download attempt fails the test."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return home


def save_weights(path: Path, arch: str = "resnet18", seed: int = 123) -> dict[str, torch.Tensor]:
    """A torchvision state dict (random, seeded) saved where a user would put real weights."""
    torch.manual_seed(seed)
    sd = torchvision.models.get_model(arch, weights=None).state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return sd


def fit(cfg, *callbacks: L.Callback):
    L.seed_everything(int(cfg.seed), workers=True)
    built = build(cfg)
    built.trainer.callbacks.extend(callbacks)
    built.trainer.fit(built.model, datamodule=built.datamodule)
    return built


class BackboneCalls(L.Callback):
    """Counts backbone forward calls by phase: ``setup`` (before the first training batch),
    ``train<epoch>``, ``val`` and ``test``."""

    def __init__(self, model: ImageClassifier) -> None:
        self.counts: Counter[str] = Counter()
        self.phase = "setup"
        model.net.backbone.register_forward_hook(lambda *args: self.counts.update([self.phase]))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.phase = f"train{trainer.current_epoch}"

    def on_validation_batch_start(
        self, trainer, pl_module, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self.phase = "val"

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.phase = "test"


def fit_counting(cfg) -> tuple[object, BackboneCalls, FeatureCache | None]:
    L.seed_everything(int(cfg.seed), workers=True)
    built = build(cfg)
    calls = BackboneCalls(built.model)
    built.trainer.callbacks.append(calls)
    built.trainer.fit(built.model, datamodule=built.datamodule)
    cache = next((c for c in built.trainer.callbacks if isinstance(c, FeatureCache)), None)
    return built, calls, cache


# -- weights ------------------------------------------------------------------------------------
def test_default_weights_load_from_torch_home_without_network(torch_home):
    saved = save_weights(torch_home / "hub" / "checkpoints" / RESNET18_FILE)
    for name in ("DEFAULT", "IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1"):
        net = ResNetMLP(1, 10, (28, 28), arch="resnet18", weights=name, hidden=[16])
        own = net.backbone.state_dict()
        assert set(own) == {k for k in saved if not k.startswith("fc.")}
        assert all(torch.equal(own[k], saved[k]) for k in own), name


def test_missing_weights_stop_at_once_with_one_line(tmp_path):
    home = tmp_path / "torch_home"
    t0 = time.perf_counter()
    r = run_entry(
        "train",
        "model=resnet18",
        "data=mnist",
        f"paths.log_dir={tmp_path}/logs/",
        env={"TORCH_HOME": str(home)},
        timeout=120,
    )
    elapsed = time.perf_counter() - t0
    expected = home / "hub" / "checkpoints" / RESNET18_FILE
    assert r.returncode == 1, r.stderr
    assert [line for line in r.stderr.splitlines() if line.startswith("error")] == [
        f"error: pretrained weights ResNet18_Weights.IMAGENET1K_V1 not found at {expected} "
        f"(offline: nothing is downloaded); put the file from "
        f"https://download.pytorch.org/models/{RESNET18_FILE} there, or train the whole net from scratch with model.weights=null"
    ]
    assert "Traceback" not in r.stdout + r.stderr
    assert " images " not in r.stdout  # stopped before the data was loaded
    assert elapsed < 60


def test_local_pth_weights_and_a_file_that_does_not_fit(tmp_path, torch_home):
    saved = save_weights(tmp_path / "mine.pth")
    net = ResNetMLP(3, 5, (32, 32), arch="resnet18", weights=str(tmp_path / "mine.pth"), hidden=[])
    assert torch.equal(net.backbone.conv1.weight, saved["conv1.weight"])

    save_weights(tmp_path / "r34.pth", arch="resnet34")
    with pytest.raises(
        WeightsError, match=r"weights file .*r34\.pth does not fit resnet18: unexpected layer1\.2\."
    ):
        ResNetMLP(3, 5, (32, 32), arch="resnet18", weights=str(tmp_path / "r34.pth"))
    with pytest.raises(
        WeightsError, match=r"weights file .*absent\.pth not found; .*model\.weights=null"
    ):
        ResNetMLP(3, 5, (32, 32), arch="resnet18", weights=str(tmp_path / "absent.pth"))
    with pytest.raises(
        WeightsError,
        match=r"'IMAGENET1K_V9' is not a weights name of resnet18 \(DEFAULT, IMAGENET1K_V1\)",
    ):
        ResNetMLP(3, 5, (32, 32), arch="resnet18", weights="IMAGENET1K_V9")


def test_pretrained_run_normalizes_like_the_weights_and_its_checkpoint_needs_no_weights_file(
    tiny, make_cfg, torch_home, tmp_path
):
    weights_file = torch_home / "hub" / "checkpoints" / RESNET18_FILE
    save_weights(weights_file)
    cfg = tiny("model.weights=DEFAULT", "trainer.max_epochs=1")
    built = fit(cfg)
    model, dm, trainer = built.model, built.datamodule, built.trainer
    # ImageNet statistics (averaged over RGB for grayscale), in the spec the checkpoint keeps
    assert model.spec.mean == pytest.approx((IMAGENET_GRAY[0],))
    assert model.spec.std == pytest.approx((IMAGENET_GRAY[1],))
    assert dm.spec == model.spec
    tested = trainer.test(model, datamodule=dm)[0]
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)

    weights_file.unlink()  # eval rebuilds the net from the checkpoint alone
    metrics = evaluate(
        make_cfg(
            "eval",
            [
                "data._target_=tests._tiny_mnist.TinyMNIST",
                f"ckpt_path={ckpt}",
                "logger=none",
                "+trainer.enable_progress_bar=false",
            ],
            tmp_path / "eval",
        )
    )
    assert metrics["test/acc"] == tested["test/acc"]
    assert metrics["test/loss"] == pytest.approx(tested["test/loss"], rel=1e-5)
    reloaded = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu")
    assert torch.equal(reloaded.net.backbone.conv1.weight, model.net.backbone.conv1.weight)


# -- frozen backbone -------------------------------------------------------------------------------
def test_frozen_backbone_keeps_batchnorm_statistics_bit_identical(tiny):
    cfg = tiny("model.weights=null", "model.cache_features=false", "trainer.max_epochs=1")
    L.seed_everything(0)
    built = build(cfg)
    model = built.model
    backbone0 = copy.deepcopy(model.net.backbone.state_dict())
    head0 = copy.deepcopy(model.net.head.state_dict())
    modes: list[tuple[bool, bool]] = []

    class Modes(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args) -> None:
            modes.append((pl_module.training, pl_module.net.backbone.training))

    built.trainer.callbacks.append(Modes())
    built.trainer.fit(model, datamodule=built.datamodule)

    after = model.net.backbone.state_dict()
    assert any("running_mean" in k for k in after)
    assert all(torch.equal(after[k], backbone0[k]) for k in after)  # incl. BN running stats
    assert any(not torch.equal(v, head0[k]) for k, v in model.net.head.state_dict().items())
    assert modes and all(m == (True, False) for m in modes)  # module trains, backbone stays in eval
    head_params = {id(p) for p in model.net.head.parameters()}
    optimized = {id(p) for g in built.trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimized == head_params


def test_resnet152_default_head_is_the_seed_head(make_cfg):
    cfg = make_cfg("train", ["model=resnet152"])
    assert cfg.model.weights == "DEFAULT" and cfg.model.optimizer.lr == 0.001
    from imgcls.models.transfer import resolve_freeze

    resolve_freeze(cfg.model)  # as the builder does: pretrained weights -> frozen backbone
    assert cfg.model.net.freeze is True
    net = instantiate(
        {**cfg.model.net, "weights": None}, in_channels=3, num_classes=102, image_size=[64, 64]
    )
    layers = [
        (
            type(m).__name__,
            getattr(m, "in_features", getattr(m, "p", None)),
            getattr(m, "out_features", None),
        )
        for m in net.head
    ]
    assert layers == [
        ("Linear", 2048, 1600),
        ("ReLU", None, None),
        ("Linear", 1600, 1024),
        ("ReLU", None, None),
        ("Dropout", 0.1, None),
        ("Linear", 1024, 102),
    ]
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert trainable == sum(p.numel() for p in net.head.parameters())


# -- feature cache -----------------------------------------------------------------------------------
def test_feature_cache_hit_reuse_and_invalidation(tiny, tmp_path):
    cache_dir = tmp_path / "features"
    # the data has no train augmentation: cache_features=auto turns the cache on
    built, calls, cache = fit_counting(tiny("model.weights=null"))
    assert cache is not None and cache.misses == ["train", "val"] and cache.hits == []
    # computed once before training; every epoch trains and validates the head from the cache
    assert set(calls.counts) == {"setup"}
    files = sorted(cache_dir.glob("*.pt"))
    assert [f.name.split("-")[:2] for f in files] == [["resnet18", "train"], ["resnet18", "val"]]

    # another run with a different head learning rate (a sweep) reuses both files
    again = ("model.weights=null", "trainer.max_epochs=1")
    built2, calls2, cache2 = fit_counting(tiny(*again, "model.optimizer.lr=0.003"))
    assert cache2.hits == ["train", "val"] and cache2.misses == []
    assert not calls2.counts
    assert sorted(cache_dir.glob("*.pt")) == files

    # a changed file list invalidates that split only; a changed transform invalidates both
    _, calls3, cache3 = fit_counting(tiny(*again, "+data.n_train=96"))
    assert cache3.misses == ["train"] and cache3.hits == ["val"]
    assert calls3.counts["setup"] == 2  # ceil(96 / 64) batches of the new train split
    _, _, cache4 = fit_counting(tiny(*again, "data.mean=[0.5]", "data.std=[0.5]"))
    assert cache4.misses == ["train", "val"]
    assert len(list(cache_dir.glob("*.pt"))) == 5

    # the test after the fit runs on images through the full net again
    tested = built.trainer.test(built.model, datamodule=built.datamodule, verbose=False)[0]
    assert calls.counts["test"] == 1 and 0 <= tested["test/acc"] <= 1


def test_training_from_the_cache_matches_training_through_the_backbone(tiny):
    one_epoch = ("model.weights=null", "trainer.max_epochs=1")
    cached, _, cache = fit_counting(tiny(*one_epoch, "model.cache_features=true"))
    direct, calls, none = fit_counting(tiny(*one_epoch, "model.cache_features=false"))
    assert cache is not None and none is None
    assert calls.counts == {"train0": 4, "val": 1}
    a, b = cached.trainer.callback_metrics, direct.trainer.callback_metrics
    for name in ("val/loss", "train/loss_epoch"):
        assert float(a[name]) == pytest.approx(float(b[name]), rel=1e-4), name
    assert float(a["val/acc"]) == float(b["val/acc"])


def test_bf16_mixed_precision_on_cpu(tiny, tmp_path):
    bf16 = ("model.weights=null", "trainer.precision=bf16-mixed", "trainer.max_epochs=1")
    cached, _, cache = fit_counting(tiny(*bf16))
    assert cache.misses == ["train", "val"]
    for f in (tmp_path / "features").glob("*.pt"):
        blob = torch.load(f, weights_only=True)
        assert blob["key"]["precision"] == "bf16-mixed"
        # computed under bf16 autocast: every value is a bf16 number
        assert torch.equal(blob["features"].bfloat16().float(), blob["features"])

    L.seed_everything(0)
    direct = build(tiny(*bf16, "model.cache_features=false", "+trainer.limit_train_batches=1"))
    dtypes: set[torch.dtype] = set()
    direct.model.net.backbone.register_forward_hook(lambda m, i, out: dtypes.add(out.dtype))
    direct.trainer.fit(direct.model, datamodule=direct.datamodule)
    assert dtypes == {torch.bfloat16}
    for b in (cached, direct):
        assert torch.isfinite(b.trainer.callback_metrics["val/loss"])


# -- unfreezing and option checks ------------------------------------------------------------------
def test_gradual_unfreezing_trains_the_backbone_from_its_epoch_at_a_lower_lr(tiny):
    cfg = tiny(
        "model.weights=null",
        "model.unfreeze_at_epoch=1",
        "+trainer.limit_train_batches=1",
        "+trainer.limit_val_batches=1",
    )
    L.seed_everything(0)
    built = build(cfg)
    net = built.model.net
    initial = copy.deepcopy(net.backbone.state_dict())
    seen: list[dict] = []

    class Snapshot(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            seen.append(
                {
                    "state": copy.deepcopy(net.backbone.state_dict()),
                    "lrs": [g["lr"] for g in trainer.optimizers[0].param_groups],
                    "backbone_training": net.backbone.training,
                }
            )

    built.trainer.callbacks.append(Snapshot())
    built.trainer.fit(built.model, datamodule=built.datamodule)
    first, second = seen
    assert all(torch.equal(first["state"][k], v) for k, v in initial.items())
    assert first["lrs"] == [0.001] and not first["backbone_training"]
    assert not torch.equal(second["state"]["conv1.weight"], initial["conv1.weight"])
    assert second["lrs"] == [0.001, pytest.approx(0.0001)]
    # BatchNorm stays frozen while the convolutions fine-tune
    bn = [k for k in initial if k.startswith("bn1.")]
    assert all(torch.equal(second["state"][k], initial[k]) for k in bn)


def user_error(fn, *args) -> str:
    """The message of the ``UserError`` ``fn(*args)`` raises (Hydra may wrap it)."""
    with pytest.raises(Exception) as info:
        fn(*args)
    error = find_user_error(info.value)
    assert error is not None, info.value
    return f"{type(error).__name__}: {error}"


def test_option_conflicts_fail_before_training(tiny, make_cfg):
    dm = build_datamodule(tiny("model.weights=null"))
    both = tiny("model.weights=null", "model.cache_features=true", "model.unfreeze_at_epoch=2")
    assert user_error(build_model, both, dm) == (
        "ConfigError: model.cache_features=true cannot be combined with "
        "model.unfreeze_at_epoch: the features change once the backbone trains"
    )
    unfrozen = tiny("model.weights=null", "model.cache_features=true", "model.net.freeze=false")
    assert user_error(build_model, unfrozen, dm) == (
        "ConfigError: model.cache_features=true needs a frozen backbone (model.net.freeze)"
    )
    lenet = make_cfg("train", ["model=lenet", "+model.cache_features=true"])
    assert user_error(build_model, lenet, dm) == (
        "ConfigError: model.unfreeze_at_epoch / model.cache_features need a net with a frozen "
        "backbone; LeNet has none"
    )
    assert user_error(build, make_cfg("train", ["model=lenet", "+model.weights=DEFAULT"])) == (
        "ConfigError: model.weights='DEFAULT': imgcls.models.nets.lenet.LeNet has no "
        "pretrained weights; set model.weights=null"
    )
