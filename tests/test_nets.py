"""Nets size themselves from the input; the batch augmentation is per sample."""

from __future__ import annotations

import pytest
import torch

from imgcls.data.transforms import BatchRandomAffine
from imgcls.errors import ConfigError
from imgcls.models.nets.lenet import LeNet
from imgcls.models.nets.mlp import MLP
from imgcls.models.nets.simple_cnn import SimpleCNN


def test_lenet_flattened_size_follows_input() -> None:
    # 28x28 -> 16*4*4 (the seed's 16*5*5 literal only fits 32x32)
    assert LeNet(1, 10, (28, 28)).classifier[0].in_features == 16 * 4 * 4
    assert LeNet(3, 10, (32, 32)).classifier[0].in_features == 16 * 5 * 5
    assert LeNet(1, 7, (28, 28))(torch.zeros(3, 1, 28, 28)).shape == (3, 7)


def test_lenet_too_small_input_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="lenet: input 1x8x8 is too small"):
        LeNet(1, 10, (8, 8))


def test_simple_cnn_matches_seed_shapes() -> None:
    net = SimpleCNN(1, 10, (28, 28))
    assert net.classifier[-1].in_features == 4 * 7 * 7  # the seed's Linear(4 * 7 * 7, 10)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert SimpleCNN(3, 2, (64, 48), channels=(8, 16))(torch.zeros(2, 3, 64, 48)).shape == (2, 2)


def test_mlp_hidden_sizes_configurable() -> None:
    net = MLP(1, 2, (28, 28), hidden=(40, 20, 10))
    widths = [m.out_features for m in net.net if isinstance(m, torch.nn.Linear)]
    assert widths == [40, 20, 10, 2]
    assert net.net[1].in_features == 784


def test_random_affine_identity_and_per_sample() -> None:
    x = torch.rand(16, 1, 28, 28)
    assert torch.allclose(BatchRandomAffine()(x), x, atol=1e-5)
    torch.manual_seed(0)
    y = BatchRandomAffine(degrees=15, translate=(0.1, 0.1))(x.new_ones(16, 1, 28, 28))
    # different samples get different transforms: the zero-padded border areas differ
    areas = y.sum(dim=(1, 2, 3))
    assert areas.unique().numel() > 8


def test_random_affine_hflip_flips() -> None:
    x = torch.arange(4.0).view(1, 1, 1, 4).expand(2, 1, 4, 4).contiguous()
    y = BatchRandomAffine(hflip=1.0)(x)
    assert torch.allclose(y, x.flip(-1), atol=1e-5)
