"""A dense MLP on flattened pixels (the seed's 40-20-10 Keras net, sizes configurable)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """Flatten -> [Linear-ReLU(-Dropout)] x len(hidden) -> Linear(num_classes)."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: Sequence[int],
        hidden: Sequence[int] = (40, 20, 10),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        n = in_channels * int(image_size[0]) * int(image_size[1])
        layers: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            layers += [nn.Linear(n, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            n = h
        layers.append(nn.Linear(n, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
