"""Batch recipes from torchvision v2: MixUp/CutMix mix training batches into soft targets the
classifier trains on; TrivialAugment/RandAugment/RandomErasing change training batches only."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from torch import Tensor, nn

from imgcls.builder import build_datamodule, build_model
from imgcls.data.augment import BatchMix, PerSample
from imgcls.data.base_datamodule import ImageDataModule, Splits
from imgcls.data.tensor_dataset import TensorImageDataset
from imgcls.data.transforms import normalize

MEAN, STD = (0.5,), (0.25,)
K = 4


class Levels(ImageDataModule):
    """16 images of 32x32, sample i a flat grey level 10 + 15 i (distinct), class i % K."""

    def load_splits(self) -> Splits:
        self.class_names = tuple("abcd")
        n = 16
        levels = (10 + 15 * torch.arange(n)).to(torch.uint8)
        images = levels.view(n, 1, 1, 1).expand(n, 1, 32, 32).contiguous()
        return Splits(train=TensorImageDataset(images, torch.arange(n) % K))

    def fingerprint(self, split: str) -> str:
        return f"levels/{split}"


class Training:
    training = True


def make_dm(**kwargs) -> tuple[Levels, Tensor, Tensor]:
    dm = Levels(mean=MEAN, std=STD, **kwargs)
    dm.setup()
    dm.trainer = Training()  # type: ignore[assignment]
    ds = dm.splits["train"]
    return dm, ds.images, ds.targets


def run(dm: Levels, images: Tensor, targets: Tensor, training: bool) -> tuple[Tensor, Tensor]:
    dm.trainer.training = training  # type: ignore[union-attr]
    return dm.on_after_batch_transfer((images.clone(), targets.clone()), 0)


def test_mixup_gives_soft_targets_and_mixed_images() -> None:
    dm, images, targets = make_dm(batch_mix=BatchMix(mixup_alpha=1.0))
    x, y = run(dm, images, targets, training=True)
    assert y.shape == (16, K) and y.dtype.is_floating_point
    assert torch.allclose(y.sum(1), torch.ones(16))
    assert (y.max(1).values < 1.0).any(), "no row is mixed"
    assert not torch.allclose(x, normalize(images, MEAN, STD))
    # validation batches: untouched pixels, class-index targets
    x_val, y_val = run(dm, images, targets, training=False)
    assert torch.equal(y_val, targets) and torch.equal(x_val, normalize(images, MEAN, STD))


def test_cutmix_pastes_a_rectangle_from_another_sample() -> None:
    dm, images, targets = make_dm(batch_mix=BatchMix(cutmix_alpha=1.0))
    plain = normalize(images, MEAN, STD)
    patched = 0
    for _ in range(5):
        x, y = run(dm, images, targets, training=True)
        assert torch.allclose(y.sum(1), torch.ones(16))
        for i in range(16):
            changed = (x[i, 0] != plain[i, 0]).nonzero()
            if len(changed) == 0:
                continue
            (r0, c0), (r1, c1) = changed.min(0).values, changed.max(0).values
            box = x[i, 0, r0 : r1 + 1, c0 : c1 + 1]
            # the changed pixels fill their bounding box, all one other sample's level
            assert len(changed) == box.numel()
            donor = (plain[:, 0, 0, 0] - box[0, 0]).abs().argmin()
            assert donor != i and torch.allclose(box, plain[donor, 0, 0, 0].expand_as(box))
            area = box.numel() / (32 * 32)  # the target weighs classes by area
            assert y[i, targets[donor]] >= area - 1e-5
            patched += 1
    assert patched > 0


def test_batch_mix_probability_zero_leaves_batches_but_one_hot() -> None:
    dm, images, targets = make_dm(batch_mix=BatchMix(mixup_alpha=1.0, p=0.0))
    x, y = run(dm, images, targets, training=True)
    assert torch.equal(x, normalize(images, MEAN, STD))
    assert torch.equal(y, nn.functional.one_hot(targets, K).float())


def test_classifier_trains_on_soft_targets(make_cfg) -> None:
    cfg = make_cfg(
        "train",
        [
            "model=lenet",
            "data._target_=tests._tiny_mnist.TinyMNIST",
            "data.batch_size=32",
            "data/batch_mix=mixup_cutmix",
            "logger=none",
            "callbacks=none",
        ],
    )
    dm = build_datamodule(cfg)
    model = build_model(cfg, dm)
    seen: list[tuple[int, bool, float]] = []

    def spy(_: nn.Module, args: tuple[Tensor, Tensor], loss: Tensor) -> None:
        seen.append((args[1].ndim, model.trainer.training, float(loss.detach())))

    model.criterion.register_forward_hook(spy)
    trainer = L.Trainer(
        max_epochs=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    train = [s for s in seen if s[1]]
    assert len(train) == 8 and all(ndim == 2 for ndim, _, _ in train)
    assert all(ndim == 1 for ndim, training, _ in seen if not training)
    assert all(torch.isfinite(torch.tensor(loss)) for *_, loss in seen)
    assert 0.0 <= float(trainer.callback_metrics["train/acc"]) <= 1.0


@pytest.mark.parametrize("option", ["trivial", "randaugment", "erasing"])
def test_augment_changes_training_batches_only(make_cfg, option: str) -> None:
    aug = instantiate(make_cfg("train", [f"data/augment={option}"]).data.train_augment)
    assert isinstance(aug, PerSample)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (64, 1, 32, 32), dtype=torch.uint8, generator=g)
    dm = Levels(mean=MEAN, std=STD, train_augment=aug)
    dm.setup()
    dm.trainer = Training()  # type: ignore[assignment]
    targets = torch.zeros(64, dtype=torch.long)
    plain = normalize(images, MEAN, STD)
    x, _ = run(dm, images, targets, training=True)
    changed = (x != plain).flatten(1).any(1)
    assert changed.float().mean() > 0.2, f"{option} changed {int(changed.sum())}/64 samples"
    x_val, _ = run(dm, images, targets, training=False)
    assert torch.equal(x_val, plain)


def test_auto_augment_draws_differ_across_chunks() -> None:
    """One whole-batch v2 call gives all samples one op; per sample, equal inputs part ways."""
    from torchvision.transforms import v2

    images = torch.randint(0, 256, (1, 1, 32, 32), dtype=torch.uint8).expand(32, -1, -1, -1)
    out = PerSample(v2.TrivialAugmentWide(), chunk_size=1)(images.float())
    distinct = {tuple(o.flatten().tolist()) for o in out}
    assert len(distinct) > 4
    assert out.dtype == torch.float32 and out.min() >= 0 and out.max() <= 255


def test_erasing_fills_black_in_pixel_space() -> None:
    from torchvision.transforms import v2

    erase = PerSample(v2.RandomErasing(p=1.0, value=0), chunk_size=1, uint8=False)
    images = torch.full((8, 1, 32, 32), 255, dtype=torch.uint8)
    dm = Levels(mean=MEAN, std=STD, train_augment=erase)
    dm.setup()
    dm.trainer = Training()  # type: ignore[assignment]
    x, _ = run(dm, images, torch.zeros(8, dtype=torch.long), training=True)
    black = normalize(torch.zeros(1, 1, 1, 1, dtype=torch.uint8), MEAN, STD).item()
    white = normalize(torch.full((1, 1, 1, 1), 255, dtype=torch.uint8), MEAN, STD).item()
    for i in range(8):
        erased = (x[i, 0] != white).nonzero()
        assert len(erased) > 0
        (r0, c0), (r1, c1) = erased.min(0).values, erased.max(0).values
        box = x[i, 0, r0 : r1 + 1, c0 : c1 + 1]
        assert torch.allclose(box, torch.full_like(box, black)), "erased area is not black"


@pytest.mark.parametrize("data", ["mnist", "csv"])
@pytest.mark.parametrize(
    "override",
    [
        "data/augment=trivial",
        "data/augment=randaugment",
        "data/augment=erasing",
        "data/batch_mix=mixup",
        "data/batch_mix=cutmix",
        "data/batch_mix=mixup_cutmix",
        "data/batch_mix=none",
    ],
)
def test_recipe_options_compose(make_cfg, data: str, override: str) -> None:
    cfg = make_cfg("train", [f"data={data}", override])
    if override.startswith("data/augment"):
        assert isinstance(instantiate(cfg.data.train_augment), PerSample)
        assert cfg.data.batch_mix is None
    elif override.endswith("none"):
        assert cfg.data.batch_mix is None
    else:
        mix = instantiate(cfg.data.batch_mix)
        assert isinstance(mix, BatchMix)
        assert (mix.mixup_alpha > 0) == ("mixup" in override)
        assert (mix.cutmix_alpha > 0) == ("cutmix" in override)
        assert cfg.data.train_augment is None


def test_training_step_scores_soft_targets_by_their_dominant_class(make_cfg) -> None:
    cfg = make_cfg("train", ["model=lenet", "data._target_=tests._tiny_mnist.TinyMNIST"])
    model = build_model(cfg, build_datamodule(cfg))
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        pred = model(x).argmax(1)
    other = (pred + 1) % 10
    soft = 0.6 * nn.functional.one_hot(pred, 10) + 0.4 * nn.functional.one_hot(other, 10)
    model.trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    loss = model.training_step((x, soft.float()), 0)
    smoothing = cfg.model.label_smoothing  # the recipe's own smoothing applies to soft targets too
    expected = nn.functional.cross_entropy(model(x), soft.float(), label_smoothing=smoothing)
    assert torch.allclose(loss, expected, atol=1e-5)
    acc = model.train_metrics.compute()["train/acc"]
    assert acc.item() == 1.0  # every dominant class predicted


def test_feature_cache_auto_stays_off_with_batch_mix(tmp_path) -> None:
    """Cached features would skip MixUp/CutMix silently: ``auto`` keeps the images instead."""
    from imgcls.engine.feature_cache import FeatureCache

    plain, _, _ = make_dm()
    mixed, _, _ = make_dm(batch_mix=BatchMix(mixup_alpha=0.2))
    cache = FeatureCache(cache_dir=tmp_path, mode="auto")
    assert cache._enabled(plain) and not cache._enabled(mixed)
