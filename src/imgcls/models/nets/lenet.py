"""LeNet-5 (conv 6/16 5x5, max-pooling, fc 120/84); the flattened size comes from the input, not
the 16*5*5 literal of the 32x32 original that breaks on MNIST."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from imgcls.models.nets._shapes import flat_features, mlp_head


class LeNet(nn.Module):
    """LeNet-5 for any input size large enough for two 5x5 conv + 2x2 pool stages."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: Sequence[int],
        channels: Sequence[int] = (6, 16),
        hidden: Sequence[int] = (120, 84),
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, kernel_size),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        n = flat_features(self.features, in_channels, tuple(image_size), "lenet")
        self.classifier = mlp_head(n, hidden, 0.0, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
