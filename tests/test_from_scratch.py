"""``model.weights=null`` with a ResNet means from scratch: the whole net trains; a frozen random
backbone must be asked for (``model.net.freeze=true``) and is announced."""

from __future__ import annotations

import logging

from imgcls.builder import build_datamodule, build_model, count_parameters

RESNET_ON_TINY_MNIST = ("model=resnet18", "data._target_=tests._tiny_mnist.TinyMNIST")


def test_weights_null_trains_the_whole_resnet(make_cfg, tiny_overrides, caplog) -> None:
    overrides = tiny_overrides(*RESNET_ON_TINY_MNIST, "model.weights=null", callbacks="none")
    cfg = make_cfg("train", overrides)
    with caplog.at_level(logging.INFO):
        model = build_model(cfg, build_datamodule(cfg))
    trainable, total = count_parameters(model)
    assert trainable == total and not model.net.backbone_frozen
    assert model.hparams["net"]["freeze"] is False  # resolved, so the checkpoint says so
    assert "model.weights=null: the whole net trains from scratch" in caplog.text


def test_frozen_random_backbone_only_when_asked_and_announced(
    make_cfg, tiny_overrides, caplog
) -> None:
    frozen = ("model.weights=null", "model.net.freeze=true")
    overrides = tiny_overrides(*RESNET_ON_TINY_MNIST, *frozen, callbacks="none")
    cfg = make_cfg("train", overrides)
    with caplog.at_level(logging.WARNING):
        model = build_model(cfg, build_datamodule(cfg))
    trainable, total = count_parameters(model)
    assert model.net.backbone_frozen and trainable < total / 10
    assert "model.net.freeze=true with model.weights=null: a frozen RANDOM backbone" in caplog.text
