"""The seed tutorial's CNN: 2x (conv3x3-BN-ReLU-maxpool2) and one linear layer."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from imgcls.models.nets._shapes import flat_features


class SimpleCNN(nn.Module):
    """Conv blocks with ``channels[i]`` filters each; the linear head's size is inferred."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: Sequence[int],
        channels: Sequence[int] = (4, 4),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = in_channels
        for c in channels:
            blocks += [
                nn.Conv2d(c_in, c, kernel_size=3, stride=1, padding=1),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=2, stride=2),
            ]
            c_in = c
        blocks.append(nn.Flatten())
        self.features = nn.Sequential(*blocks)
        n = flat_features(self.features, in_channels, tuple(image_size), "simple_cnn")
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(n, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
