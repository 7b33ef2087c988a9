"""The plain torchvision loop the photo benchmark times against ``src/train.py``:

    python scripts/benchmarks/_plain_train.py ROOT EPOCHS [--draft]

``ImageFolder`` + ``RandomResizedCrop(224)`` + ``DataLoader`` (2 workers, batch 128), the seed CNN
(``SimpleCNN``, 2x4 filters), Adam + OneCycle (max lr 0.01), validation (``Resize((224, 224))``)
after every epoch, as a user writes it. ``--draft``: the loader calls ``Image.draft`` so that the
smallest crop ``RandomResizedCrop`` can draw still has 224 px (a careful user's version).
Prints one JSON line: val accuracy and the images seen.
"""

from __future__ import annotations

import json
import math
import sys

import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

SIZE, BATCH, WORKERS = 224, 128, 2


class SimpleCNN(nn.Module):
    """The seed CNN (``imgcls.models.nets.simple_cnn`` with its default 2x4 filters)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for c_in in (3, 4):
            blocks += [
                nn.Conv2d(c_in, 4, 3, padding=1),
                nn.BatchNorm2d(4),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*blocks, nn.Flatten())
        self.classifier = nn.Linear(4 * (SIZE // 4) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def draft_loader(path: str) -> Image.Image:
    """Decode at a reduced DCT scale that still gives the smallest possible crop 224 px."""
    img = Image.open(path)
    side = math.sqrt(0.08 * 0.75 * img.width * img.height)  # scale 0.08, ratio 3/4
    img.draft("RGB", (int(img.width * SIZE / side), int(img.height * SIZE / side)))
    return img.convert("RGB")


def main() -> None:
    root, epochs, draft = sys.argv[1], int(sys.argv[2]), "--draft" in sys.argv
    torch.manual_seed(12345)
    kw = {"loader": draft_loader} if draft else {}
    train = ImageFolder(
        f"{root}/train", T.Compose([T.RandomResizedCrop(SIZE), T.PILToTensor()]), **kw
    )
    val = ImageFolder(f"{root}/valid", T.Compose([T.Resize((SIZE, SIZE)), T.PILToTensor()]), **kw)
    opts = dict(batch_size=BATCH, num_workers=WORKERS, persistent_workers=True)
    train_dl = DataLoader(train, shuffle=True, **opts)
    val_dl = DataLoader(val, **opts)
    model = SimpleCNN(len(train.classes))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.01, total_steps=epochs * len(train_dl))
    acc = 0.0
    for _ in range(epochs):
        model.train()
        for x, y in train_dl:
            loss = nn.functional.cross_entropy(model((x.float() / 255 - 0.5) / 0.25), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        right = 0
        with torch.inference_mode():
            for x, y in val_dl:
                right += int((model((x.float() / 255 - 0.5) / 0.25).argmax(1) == y).sum())
        acc = right / len(val)
    print(json.dumps({"val_acc": acc, "train_images": epochs * len(train)}))


if __name__ == "__main__":
    main()
